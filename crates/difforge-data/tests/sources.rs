//! Each data source on real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_data::config::{ColorMode, SourceKind};
use difforge_data::preprocess::Preprocess;
use difforge_data::source::{self, load_digits, load_idx, read_idx};
use difforge_data::DataConfig;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

fn grey(size: u32) -> Preprocess {
    Preprocess { size, color: ColorMode::Grey, pad: 0, buckets: None }
}

#[test]
fn digits_sheet_has_500_of_each_digit() {
    let set = load_digits(&grey(20)).unwrap();
    assert_eq!(set.len(), 5000);
    assert_eq!(set.class_names, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
    let counts = set.class_counts();
    assert!(counts.values().all(|&c| c == 500), "{counts:?}");
    // Digits are white strokes on black: the border is dark, the centre has ink.
    let px = &set.pixels[0];
    assert_eq!((px.width, px.height, px.channels), (20, 20, 1));
    assert!(px.get(0, 0, 0) < 30);
    let ink: u32 = (0..20).flat_map(|y| (0..20).map(move |x| (x, y))).map(|(x, y)| u32::from(px.get(x, y, 0))).sum();
    assert!(ink > 20 * 255, "a digit should have ink, got {ink}");
    // Resizing to 16 keeps one image per cell.
    let small = load_digits(&grey(16)).unwrap();
    assert_eq!((small.pixels[4999].width, small.labels[4999]), (16, Some(9)));
}

fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if gzip {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        bytes = enc.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_files_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
    for gzip in [false, true] {
        let ext = if gzip { ".gz" } else { "" };
        let img_path = dir.path().join(format!("train-images-idx3-ubyte{ext}"));
        write_idx(&img_path, &[3, 28, 28], &images, gzip);
        write_idx(&dir.path().join(format!("train-labels-idx1-ubyte{ext}")), &[3], &[4, 0, 9], gzip);
        let (dims, data) = read_idx(&img_path).unwrap();
        assert_eq!((dims, data.len()), (vec![3, 28, 28], images.len()));
        let set = load_idx(&img_path, None, &[], &grey(28), 1 << 26).unwrap();
        assert_eq!(set.labels, vec![Some(4), Some(0), Some(9)]);
        assert_eq!(set.class_names.len(), 10);
        assert_eq!(set.pixels[1].data[..], images[784..2 * 784]);
    }
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("x-images-idx3-ubyte");
    write_idx(&bad, &[2, 4, 4], &[0u8; 10], false);
    let err = read_idx(&bad).unwrap_err().to_string();
    assert!(err.contains("x-images-idx3-ubyte") && err.contains("32 bytes"), "{err}");
    std::fs::write(&bad, b"GIF89a").unwrap();
    assert!(read_idx(&bad).unwrap_err().to_string().contains("magic"));
    // Images of 0 x 0 pixels.
    write_idx(&bad, &[5, 0, 0], &[], false);
    assert!(read_idx(&bad).unwrap_err().to_string().contains("at least 1"));
}

/// A small gzipped file that declares, or holds, far more than it should: refused without
/// inflating it (the declared size is checked against the file's), or as soon as the surplus
/// appears (more data than declared).
#[test]
fn idx_decompression_bombs_are_refused_early() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb-images-idx3-ubyte.gz");
    // 2.5 GB of zeros declared: a few kilobytes compressed. Only the header is written here; the
    // declared size alone gives it away.
    write_idx(&bomb, &[3_000_000, 28, 30], &[0u8; 4096], true);
    let err = read_idx(&bomb).unwrap_err().to_string();
    assert!(err.contains("more than this") && err.contains("bomb-images"), "{err}");
    // More data than the header declares: refused after reading one byte past it.
    let extra = dir.path().join("extra-images-idx3-ubyte.gz");
    write_idx(&extra, &[1, 4, 4], &vec![7u8; 50_000_000], true);
    let err = read_idx(&extra).unwrap_err().to_string();
    assert!(err.contains("found more"), "{err}");
}

/// The real Fashion-MNIST test set when the Debian package is installed (CI installs it).
#[test]
fn fashion_mnist_from_the_debian_package() {
    let path = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
    if !path.exists() {
        eprintln!("skipping: {} is not installed (apt-get install dataset-fashion-mnist)", path.display());
        return;
    }
    let cfg = DataConfig { source: SourceKind::Idx, path: Some(path.into()), image_size: 28, ..Default::default() };
    let set = source::load(&cfg).unwrap();
    assert_eq!(set.len(), 10_000);
    assert!(set.class_counts().values().all(|&c| c == 1000));
}

/// A folder with a symbolic link back to its parent and a file whose name is not UTF-8: the
/// search ends, reports the link, and every report (JSON included) can name the odd file.
#[test]
fn folder_search_does_not_follow_folder_links_and_reports_any_file_name() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("a");
    std::fs::create_dir_all(&class).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8])).save(class.join("one.png")).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(y * 30 + x) as u8])).save(class.join("two.png")).unwrap();
    std::os::unix::fs::symlink("..", class.join("loop")).unwrap();
    let odd = class.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.png"));
    image::GrayImage::from_fn(8, 8, |x, _| image::Luma([x as u8 * 20])).save(&odd).unwrap();

    let listing = difforge_data::source::folder::list_images(dir.path()).unwrap();
    assert_eq!(listing.files.len(), 3, "{:?}", listing.files);
    assert_eq!(listing.skipped.len(), 1);
    assert!(listing.skipped[0].path.ends_with("loop") && listing.skipped[0].reason.contains("symbolic link"));

    let cfg = DataConfig { source: SourceKind::Folder, path: Some(dir.path().to_path_buf()), image_size: 8, ..Default::default() };
    let set = source::load(&cfg).unwrap();
    assert_eq!(set.len(), 3);

    let report = difforge_data::check::check_folder(dir.path(), &Default::default()).unwrap();
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\u{fffd}\u{fffd}.png"), "{json}");
    assert_eq!(report.skipped_folders.len(), 1);
    let fix = serde_json::to_string(&difforge_data::check::fix_report(&report)).unwrap();
    assert!(fix.starts_with('{'));
}
