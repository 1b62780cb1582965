//! Aspect-ratio buckets: the bucket set, placing and cropping images, no_upscale, the report,
//! one-bucket batches that a resumed run rebuilds exactly, and the pixels of a placement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_core::{rng_for, Stream};
use difforge_data::bucket::{assign, bucket_set, center_crop, crop, place, Bucket, BucketBatches, BucketConfig, DropReason};
use std::collections::BTreeSet;

fn b(w: u32, h: u32) -> Bucket {
    Bucket::new(w, h)
}

fn cfg() -> BucketConfig {
    BucketConfig::default()
}

#[test]
fn the_512_set_follows_kohyas_rule() {
    // For resolution 512 (area 262,144), sides 256..=1024 in steps of 64, the rule gives, for
    // w = 256, 320, ..., 1024, the tallest h: 1024, 768, 640, 576, 512, 448, 384, 320, 320, 256,
    // 256, 256, 256; with the transposes that is these 17 buckets. kohya's often-quoted list has
    // (704, 384), but 704 x 384 = 270,336 > 262,144: the rule (and kohya's code) gives 704x320.
    let expected: Vec<Bucket> = vec![
        b(256, 832),
        b(256, 896),
        b(256, 960),
        b(256, 1024),
        b(320, 704),
        b(320, 768),
        b(384, 640),
        b(448, 576),
        b(512, 512),
        b(576, 448),
        b(640, 384),
        b(704, 320),
        b(768, 320),
        b(832, 256),
        b(896, 256),
        b(960, 256),
        b(1024, 256),
    ];
    let set = bucket_set(&cfg());
    assert_eq!(set, expected);
    for must in [b(512, 512), b(576, 448), b(448, 576), b(640, 384), b(768, 320), b(832, 256)] {
        assert!(set.contains(&must), "{must} missing");
    }
    assert!(!set.contains(&b(704, 384)));
}

#[test]
fn every_bucket_respects_area_bounds_and_step() {
    for c in [
        cfg(),
        BucketConfig { resolution: 1024, min_size: 512, max_size: 2048, step: 64, no_upscale: false },
        BucketConfig { resolution: 768, min_size: 256, max_size: 1536, step: 32, no_upscale: false },
        BucketConfig { resolution: 500, min_size: 256, max_size: 1024, step: 64, no_upscale: false },
    ] {
        c.validate().unwrap();
        let set = bucket_set(&c);
        assert!(!set.is_empty());
        // The square bucket is always there (500 rounds down to 448).
        let side = c.resolution / c.step * c.step;
        assert!(set.contains(&b(side, side)), "{c:?}");
        let unique: BTreeSet<Bucket> = set.iter().copied().collect();
        assert_eq!(unique.len(), set.len(), "duplicates");
        for x in &set {
            assert!(x.area() <= c.max_area(), "{x} over the area of {c:?}");
            assert!((c.min_size..=c.max_size).contains(&x.width) && (c.min_size..=c.max_size).contains(&x.height), "{x}");
            assert!(x.width.is_multiple_of(c.step) && x.height.is_multiple_of(c.step), "{x}");
            assert!(set.contains(&b(x.height, x.width)), "transpose of {x}");
        }
    }
}

#[test]
fn images_go_to_the_nearest_shape() {
    let c = cfg();
    let set = bucket_set(&c);
    let wide = place(&c, &set, 1920, 1080).unwrap();
    assert_eq!(wide.bucket, b(640, 384));
    assert!(wide.bucket.width > wide.bucket.height);
    assert!(wide.bucket.aspect_error(1920, 1080) < 0.1, "{}", wide.bucket.aspect_error(1920, 1080));
    // The portrait goes to the transpose.
    assert_eq!(place(&c, &set, 1080, 1920).unwrap().bucket, b(384, 640));
    assert_eq!(place(&c, &set, 1000, 1000).unwrap().bucket, b(512, 512));
    assert_eq!(place(&c, &set, 37, 37).unwrap().bucket, b(512, 512));
    // Extreme shapes take the most extreme bucket.
    assert_eq!(place(&c, &set, 4000, 100).unwrap().bucket, b(1024, 256));
    // No other bucket is nearer than the one chosen.
    for (w, h) in [(1920, 1080), (800, 600), (333, 1000), (1200, 500), (640, 480)] {
        let got = place(&c, &set, w, h).unwrap().bucket;
        let best = set.iter().map(|x| x.aspect_error(w, h)).fold(f64::INFINITY, f64::min);
        assert!((got.aspect_error(w, h) - best).abs() < 1e-9, "{w}x{h} -> {got}");
    }
}

#[test]
fn the_resized_image_covers_its_bucket() {
    let c = cfg();
    let set = bucket_set(&c);
    for (w, h) in [(1920, 1080), (1080, 1920), (1000, 1000), (37, 37), (100, 1000), (4000, 100), (513, 511), (640, 384)] {
        let fit = place(&c, &set, w, h).unwrap();
        let (rw, rh) = fit.resized;
        let bk = fit.bucket;
        assert!(rw >= bk.width && rh >= bk.height, "{w}x{h}: {rw}x{rh} does not cover {bk}");
        assert!(rw == bk.width || rh == bk.height, "{w}x{h}: {rw}x{rh} larger than needed for {bk}");
        // The shape is kept (within a pixel of rounding).
        let expected_rh = f64::from(h) * f64::from(rw) / f64::from(w);
        let expected_rw = f64::from(w) * f64::from(rh) / f64::from(h);
        assert!((f64::from(rh) - expected_rh).abs() <= 1.0 || (f64::from(rw) - expected_rw).abs() <= 1.0, "{w}x{h} -> {rw}x{rh}");
        assert_eq!(fit.original, (w, h));
        assert_eq!(fit.upscaled(), rw > w || rh > h);
    }
    let fit = place(&c, &set, 1920, 1080).unwrap();
    assert_eq!(fit.resized, (683, 384));
    assert!(!fit.upscaled());
    assert!(place(&c, &set, 37, 37).unwrap().upscaled());
}

#[test]
fn centre_and_random_crops() {
    let c = cfg();
    let set = bucket_set(&c);
    let fit = place(&c, &set, 1920, 1080).unwrap(); // 683x384 into 640x384
    let p = center_crop(&fit);
    assert_eq!((p.crop_left, p.crop_top), (21, 0));
    assert_eq!(p.sdxl_time_ids(), [1080, 1920, 0, 21, 384, 640]);
    let tall = place(&c, &set, 300, 1000).unwrap();
    let p = center_crop(&tall);
    assert_eq!(p.crop_left, 0);
    assert_eq!(p.crop_top, (tall.resized.1 - tall.bucket.height) / 2);

    let draw = |seed: u64| -> Vec<(u32, u32)> {
        let mut rng = rng_for(seed, Stream::Augment, 0);
        (0..200).map(|_| crop(&tall, Some(&mut rng))).map(|p| (p.crop_left, p.crop_top)).collect()
    };
    let a = draw(5);
    let free_y = tall.resized.1 - tall.bucket.height;
    assert!(free_y > 10);
    assert!(a.iter().all(|&(l, t)| l == 0 && t <= free_y), "{a:?}");
    // Spread over the range, both ends reachable in principle, repeatable from the seed.
    let distinct: BTreeSet<u32> = a.iter().map(|&(_, t)| t).collect();
    assert!(distinct.len() > 10, "{distinct:?}");
    assert_eq!(a, draw(5));
    assert_ne!(a, draw(6));
}

#[test]
fn no_upscale_never_enlarges_and_drops_small_images() {
    let c = BucketConfig { no_upscale: true, ..cfg() };
    let fit = place(&c, &[], 300, 300).unwrap();
    assert!(fit.bucket.area() <= 300 * 300, "{}", fit.bucket);
    assert_eq!(fit.bucket, b(256, 256));
    assert!(!fit.upscaled());
    // A big image is capped at the resolution's area, like the fixed set.
    let fit = place(&c, &[], 1920, 1080).unwrap();
    assert_eq!(fit.bucket, b(640, 384));
    // A 700x500 image fits a bucket bigger than the 512 set's nearest, still inside itself.
    let fit = place(&c, &[], 700, 500).unwrap();
    assert!(fit.bucket.width <= 700 && fit.bucket.height <= 500 && fit.bucket.area() <= c.max_area(), "{}", fit.bucket);
    for (w, h) in [(300, 300), (1920, 1080), (700, 500), (257, 3000), (1024, 256), (5000, 5000)] {
        let fit = place(&c, &[], w, h).unwrap();
        assert!(fit.resized.0 <= w && fit.resized.1 <= h, "{w}x{h} enlarged to {:?}", fit.resized);
        assert!(fit.bucket.width.is_multiple_of(64) && fit.bucket.height.is_multiple_of(64));
        assert!(fit.bucket.area() <= (u64::from(w) * u64::from(h)).min(c.max_area()));
    }
    let err = place(&c, &[], 100, 1000).unwrap_err();
    assert_eq!(err, DropReason::TooSmall { width: 100, height: 1000, min_size: 256 });
    let msg = err.to_string();
    assert!(msg.contains("100x1000") && msg.contains("min_size") && msg.contains("256"), "{msg}");
    // Without no_upscale the same image is enlarged instead.
    let plain = cfg();
    assert!(place(&plain, &bucket_set(&plain), 100, 1000).unwrap().upscaled());
    assert!(matches!(place(&plain, &bucket_set(&plain), 0, 10), Err(DropReason::Empty { .. })));
}

fn sizes() -> Vec<(String, u32, u32)> {
    let shapes = [(1920, 1080), (1080, 1920), (1000, 1000), (800, 600), (300, 300), (100, 1000), (640, 384), (50, 50)];
    (0..53).map(|i| shapes[i % shapes.len()]).enumerate().map(|(i, (w, h))| (format!("img{i:03}.png"), w, h)).collect()
}

#[test]
fn the_report_adds_up() {
    let images = sizes();
    let (assigned, report) = assign(&cfg(), &images);
    assert_eq!(assigned.len(), images.len());
    assert!(report.dropped.is_empty());
    assert_eq!(report.placed, images.len());
    assert_eq!(report.set_size, Some(17));
    assert_eq!(report.buckets.iter().map(|c| c.images).sum::<usize>(), report.placed);
    // Each count matches the assignments.
    for c in &report.buckets {
        assert_eq!(assigned.iter().filter(|a| **a == Some(b(c.width, c.height))).count(), c.images);
    }
    // 300x300, 100x1000 and 50x50 are enlarged: 7 + 6 + 6 of the 53.
    assert_eq!(report.upscaled, 19);
    assert!(report.mean_aspect_error > 0.0 && report.mean_aspect_error <= report.max_aspect_error);
    let text = report.to_string();
    assert!(text.contains("512x512"), "{text}");
    let square = report.buckets.iter().find(|c| (c.width, c.height) == (512, 512)).unwrap();
    assert!(text.contains(&format!("512x512  {:>7} images", square.images)), "{text}");

    let nu = BucketConfig { no_upscale: true, ..cfg() };
    let (assigned, report) = assign(&nu, &images);
    // 100x1000 and 50x50 are dropped: 6 + 6 images.
    assert_eq!(report.dropped.len(), 12);
    assert_eq!(assigned.iter().filter(|a| a.is_none()).count(), 12);
    assert_eq!(report.placed + report.dropped.len(), report.images);
    assert_eq!(report.buckets.iter().map(|c| c.images).sum::<usize>(), report.placed);
    assert_eq!(report.upscaled, 0);
    assert_eq!(report.set_size, None);
    assert_eq!(report.dropped[0].id, "img005.png");
    let text = report.to_string();
    assert!(text.contains("dropped 12 images") && text.contains("img005.png: 100x1000"), "{text}");
    // JSON for the run folder.
    let batches = BucketBatches::new(&assigned, 4, 1, true);
    let json: serde_json::Value = serde_json::to_value(report.with_batching(&batches)).unwrap();
    assert_eq!(json["placed"], 41);
    assert_eq!(json["dropped"][0]["reason"]["kind"], "too_small");
    assert_eq!(json["dropped"][0]["reason"]["min_size"], 256);
    assert_eq!(json["batching"]["drop_last"], true);
    assert_eq!(json["batching"]["batches_per_epoch"], batches.batches_per_epoch());
}

#[test]
fn bucket_batches_cover_each_epoch_and_resume_exactly() {
    let (assigned, _) = assign(&cfg(), &sizes());
    for drop_last in [false, true] {
        let mut a = BucketBatches::new(&assigned, 4, 11, drop_last);
        let per = a.batches_per_epoch();
        let summary = a.summary();
        assert_eq!(summary.images_per_epoch + summary.images_left_out_per_epoch, assigned.len());
        let mut orders = Vec::new();
        for epoch in 0..3u64 {
            let batches: Vec<(Bucket, Vec<usize>)> = (0..per as u64).map(|i| a.batch(epoch * per as u64 + i)).collect();
            let mut seen: Vec<usize> = Vec::new();
            for (bucket, ix) in &batches {
                assert!(!ix.is_empty() && ix.len() <= 4);
                if drop_last {
                    assert_eq!(ix.len(), 4);
                }
                // One bucket per batch.
                assert!(ix.iter().all(|&i| assigned[i] == Some(*bucket)), "mixed batch {ix:?}");
                seen.extend(ix);
            }
            seen.sort_unstable();
            let unique: BTreeSet<usize> = seen.iter().copied().collect();
            assert_eq!(unique.len(), seen.len(), "an image twice in epoch {epoch}");
            if drop_last {
                assert_eq!(seen.len(), summary.images_per_epoch);
            } else {
                assert_eq!(seen, (0..assigned.len()).collect::<Vec<_>>());
            }
            orders.push(batches);
        }
        assert_ne!(orders[0], orders[1]);
        assert_ne!(orders[1], orders[2]);
        // A fresh instance (a resumed run) asked for any step gives the same batch.
        for step in [0u64, 5, per as u64 + 2, 2 * per as u64 + 1, 7 * per as u64 + 3] {
            let mut fresh = BucketBatches::new(&assigned, 4, 11, drop_last);
            assert_eq!(fresh.batch(step), a.batch(step), "step {step}");
        }
        let mut other_seed = BucketBatches::new(&assigned, 4, 12, drop_last);
        assert_ne!((0..per as u64).map(|i| other_seed.batch(i)).collect::<Vec<_>>(), orders[0]);
    }
    // Batch counts: a kept partial batch per bucket that does not divide by the batch size.
    let (assigned, report) = assign(&cfg(), &sizes());
    let keep = BucketBatches::new(&assigned, 4, 0, false);
    let drop = BucketBatches::new(&assigned, 4, 0, true);
    let full: usize = report.buckets.iter().map(|c| c.images / 4).sum();
    let partial = report.buckets.iter().filter(|c| c.images % 4 != 0).count();
    assert_eq!(drop.batches_per_epoch(), full);
    assert_eq!(keep.batches_per_epoch(), full + partial);
    assert_eq!(keep.summary().partial_batches, partial);
    assert!(BucketBatches::new(&[None, None], 2, 0, false).is_empty());
}

#[test]
fn validation_names_the_key() {
    cfg().validate().unwrap();
    let cases = [
        (BucketConfig { step: 0, ..cfg() }, "data.buckets.step"),
        (BucketConfig { step: 60, ..cfg() }, "data.buckets.step"),
        (BucketConfig { min_size: 300, ..cfg() }, "data.buckets.min_size"),
        (BucketConfig { max_size: 1000, ..cfg() }, "data.buckets.max_size"),
        (BucketConfig { max_size: 192, min_size: 256, ..cfg() }, "data.buckets.max_size"),
        (BucketConfig { resolution: 2048, ..cfg() }, "data.buckets.resolution"),
        (BucketConfig { resolution: 128, ..cfg() }, "data.buckets.resolution"),
    ];
    for (c, key) in cases {
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, key, "{c:?}: {err}");
    }
    // Serde: defaults fill in, unknown keys are refused.
    let c: BucketConfig = toml::from_str("resolution = 1024\nmax_size = 2048").unwrap();
    assert_eq!(c, BucketConfig { resolution: 1024, max_size: 2048, ..cfg() });
    let err = toml::from_str::<BucketConfig>("resolutoin = 1024").unwrap_err();
    assert!(err.to_string().contains("resolutoin"), "{err}");
}

#[test]
fn resize_and_crop_gives_the_bucket() {
    use difforge_data::bucket::resize_and_crop;
    use image::{DynamicImage, Rgb, RgbImage, Rgba, RgbaImage};
    let c = cfg();
    let set = bucket_set(&c);
    // A horizontal gradient between a red block (the first 100 columns) and a blue one (the last 100).
    let (w, h) = (960u32, 540u32);
    let img = RgbImage::from_fn(w, h, |x, _| {
        if x < 100 {
            Rgb([255, 0, 0])
        } else if x >= w - 100 {
            Rgb([0, 0, 255])
        } else {
            Rgb([(x * 255 / w) as u8, 128, 0])
        }
    });
    let img = DynamicImage::ImageRgb8(img);
    let fit = place(&c, &set, w, h).unwrap();
    let p = center_crop(&fit);
    let out = resize_and_crop(&img, &p);
    assert_eq!(out.dimensions(), (p.bucket.width, p.bucket.height));
    assert_eq!(out.dimensions(), (640, 384));
    // Resized to 683x384 (scale 0.4), the blocks are 40 px wide; the centre crop trims 21 px on
    // each side, so red still shows at the left edge and blue at the right.
    let left = out.get_pixel(2, 192);
    let right = out.get_pixel(637, 192);
    assert!(left[0] > 200 && left[2] < 50, "{left:?}");
    assert!(right[2] > 200 && right[0] < 50, "{right:?}");
    // A random crop gives the bucket size too.
    let mut rng = rng_for(1, Stream::Augment, 0);
    let p2 = crop(&fit, Some(&mut rng));
    assert_eq!(resize_and_crop(&img, &p2).dimensions(), (640, 384));
    // Upscaling and alpha: a small transparent image becomes a white 512x512.
    let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(37, 37, Rgba([0, 0, 0, 0])));
    let p3 = center_crop(&place(&c, &set, 37, 37).unwrap());
    let out = resize_and_crop(&clear, &p3);
    assert_eq!(out.dimensions(), (512, 512));
    assert_eq!(*out.get_pixel(100, 100), Rgb([255, 255, 255]));
}

/// A folder of images of several shapes (each one flat colour, its index in the red channel),
/// and one 10x10 image that `no_upscale` drops.
fn shaped_folder(dir: &std::path::Path) -> Vec<(u32, u32)> {
    let sizes = vec![(64, 32), (32, 64), (40, 40), (64, 32), (80, 40), (32, 32), (24, 48), (48, 24), (10, 10)];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([i as u8 * 20, (x * 255 / w.max(1)) as u8, 0]));
        img.save(dir.join(format!("{i}.png"))).unwrap();
        std::fs::write(dir.join(format!("{i}.txt")), format!("image {i}")).unwrap();
    }
    sizes
}

fn bucketed_set(dir: &std::path::Path, no_upscale: bool) -> std::sync::Arc<difforge_data::ImageSet> {
    let buckets = BucketConfig { resolution: 32, min_size: 16, max_size: 64, step: 8, no_upscale };
    let data = difforge_data::DataConfig {
        source: difforge_data::SourceKind::Folder,
        path: Some(dir.to_path_buf()),
        channels: 3,
        image_size: 32,
        crop: difforge_data::CropMode::Random,
        buckets: Some(buckets),
        ..Default::default()
    };
    data.validate().unwrap();
    std::sync::Arc::new(difforge_data::source::load(&data).unwrap())
}

#[test]
fn a_bucketed_folder_trains_in_one_bucket_batches_that_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = shaped_folder(dir.path());
    let set = bucketed_set(dir.path(), true);
    // The 10x10 image is under min_size: dropped, named in the report, not in the set.
    let report = set.bucket_report.as_ref().unwrap();
    assert_eq!((report.images, report.placed, set.len()), (sizes.len(), sizes.len() - 1, sizes.len() - 1));
    assert_eq!(report.dropped[0].id, "8.png");
    assert_eq!(report.buckets.iter().map(|b| b.images).sum::<usize>(), set.len());
    // The stored pixels cover each image's bucket.
    for (px, fit) in set.pixels.iter().zip(&set.fits) {
        assert_eq!((px.width, px.height), fit.resized);
        assert!(px.width >= fit.bucket.width && px.height >= fit.bucket.height);
    }
    let augment = difforge_data::AugmentConfig { hflip: 0.5, ..Default::default() };
    let indices: Vec<usize> = (0..set.len()).collect();
    let loader = || difforge_data::Loader::new(set.clone(), indices.clone(), 32, difforge_data::CropMode::Random, augment.clone(), 4);
    let mut a = loader();
    let batches: Vec<_> = (0..12).map(|s| a.train_batch(s, 2)).collect();
    for batch in &batches {
        let [n, c, h, w] = batch.shape();
        assert_eq!(batch.images.len() as i64, n * c * h * w);
        assert_eq!(batch.placements.len() as i64, n);
        for (p, caption) in batch.placements.iter().zip(&batch.captions) {
            // One bucket per batch, and every image is in that bucket's shape.
            assert_eq!((p.bucket.width as i64, p.bucket.height as i64), (w, h));
            // Files load in name order, so image i is set index i.
            let i: usize = caption.as_deref().unwrap().trim_start_matches("image ").parse().unwrap();
            assert_eq!(set.fits[i].bucket, p.bucket);
            let ids = p.sdxl_time_ids();
            assert_eq!((ids[0], ids[1], ids[4], ids[5]), (sizes[i].1, sizes[i].0, p.bucket.height, p.bucket.width));
            assert!(p.crop_left + p.bucket.width <= p.resized.0 && p.crop_top + p.bucket.height <= p.resized.1);
        }
    }
    // An epoch (one bucket-batch per image pair at most) shows every image.
    let per_epoch = BucketBatches::new(&set.fits.iter().map(|f| Some(f.bucket)).collect::<Vec<_>>(), 2, 4, false).batches_per_epoch();
    let seen: BTreeSet<String> = batches[..per_epoch].iter().flat_map(|b| b.captions.iter().flatten().cloned()).collect();
    assert_eq!(seen.len(), set.len());
    // A fresh loader (a resumed run) asked for a late step gives the same batch.
    assert_eq!(loader().train_batch(9, 2), batches[9]);
    // Validation takes centred squares of the model size, whatever the bucket.
    let fixed = a.fixed_batch(&[0, 1, 2]);
    assert_eq!(fixed.shape(), [3, 3, 32, 32]);
}

#[test]
fn without_no_upscale_every_image_is_placed_and_a_mirrored_crop_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = shaped_folder(dir.path());
    let set = bucketed_set(dir.path(), false);
    assert_eq!(set.len(), sizes.len());
    let augment = difforge_data::AugmentConfig { hflip: 1.0, ..Default::default() };
    let mut flipped = difforge_data::Loader::new(set.clone(), (0..set.len()).collect(), 32, difforge_data::CropMode::Center, augment, 1);
    let mut plain = difforge_data::Loader::new(set.clone(), (0..set.len()).collect(), 32, difforge_data::CropMode::Center, Default::default(), 1);
    let (f, p) = (flipped.train_batch(0, 3), plain.train_batch(0, 3));
    assert_eq!(f.captions, p.captions);
    let w = f.width;
    // Each row of the mirrored image is the plain row reversed, and its crop is measured from
    // the other edge.
    for (row_f, row_p) in f.images.chunks_exact(w).zip(p.images.chunks_exact(w)) {
        assert!(row_f.iter().eq(row_p.iter().rev()));
    }
    for (pf, pp) in f.placements.iter().zip(&p.placements) {
        assert_eq!(pf.crop_left, pp.resized.0 - pp.bucket.width - pp.crop_left);
    }
}
