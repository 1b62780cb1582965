//! Captioned image folders as diffusers and kohya users keep them: metadata.jsonl / metadata.csv
//! at the root, sidecar files with any extension, and the data check's caption findings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_data::check::{check_folder, CheckOptions, TokenCounter};
use difforge_data::config::SourceKind;
use difforge_data::{source, DataConfig, DataError, ImageSet};
use std::collections::BTreeMap;
use std::path::Path;

/// A small distinct image (the seed varies the pattern, so no two are duplicates).
fn image(path: &Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 31 + seed * 7) as u8, (y * 29 + seed * 13) as u8, ((x ^ y) * 17 + seed) as u8])).save(path).unwrap();
}

fn folder(root: &Path) -> DataConfig {
    DataConfig { source: SourceKind::Folder, path: Some(root.to_path_buf()), image_size: 8, channels: 3, ..Default::default() }
}

/// Caption by image id (relative path).
fn captions(set: &ImageSet) -> BTreeMap<String, Option<String>> {
    set.ids.iter().cloned().zip(set.captions.iter().cloned()).collect()
}

fn caption<'a>(map: &'a BTreeMap<String, Option<String>>, id: &str) -> Option<&'a str> {
    map[id].as_deref()
}

fn load_error(cfg: &DataConfig) -> String {
    match source::load(cfg) {
        Ok(set) => panic!("expected an error, loaded {} image(s)", set.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn metadata_jsonl_captions_each_image_and_wins_over_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image(&root.join("a.png"), 1);
    image(&root.join("sub/b.jpg"), 2);
    image(&root.join("c.png"), 3);
    image(&root.join("d.png"), 4);
    std::fs::write(root.join("a.txt"), "the sidecar of a").unwrap();
    std::fs::write(root.join("d.txt"), "  the sidecar of d\n").unwrap();
    let jsonl = concat!(
        "{\"file_name\": \"a.png\", \"text\": \"a red cube\"}\n",
        "\n",
        "{\"file_name\": \"./sub/b.jpg\", \"text\": \"  a blue \\\"sphere\\\", small \", \"extra\": 1}\n",
        "{\"file_name\": \"c.png\", \"text\": null}\n",
    );
    std::fs::write(root.join("metadata.jsonl"), jsonl).unwrap();
    let set = source::load(&folder(root)).unwrap();
    let map = captions(&set);
    assert_eq!(set.len(), 4);
    assert_eq!(caption(&map, "a.png"), Some("a red cube"), "metadata wins over a.txt");
    assert_eq!(caption(&map, "sub/b.jpg"), Some("a blue \"sphere\", small"));
    assert_eq!(caption(&map, "c.png"), None, "a null caption is no caption");
    assert_eq!(caption(&map, "d.png"), Some("the sidecar of d"), "an image without a row keeps its sidecar");

    let report = check_folder(root, &CheckOptions { model_size: 8, ..Default::default() }).unwrap();
    let c = report.captions.unwrap();
    // d.png's caption came from its sidecar: the report says so.
    assert_eq!((c.source.as_str(), c.captioned, c.sidecars_ignored), ("metadata.jsonl (2 captions) and .txt files (1)", 3, 1));
    assert!(c.missing.len() == 1 && c.missing[0].ends_with("c.png"), "{:?}", c.missing);
}

#[test]
fn metadata_csv_reads_quoted_commas_quotes_and_line_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (i, name) in ["one.png", "two.png", "three.png", "dir/four.png"].iter().enumerate() {
        image(&root.join(name), i as u32);
    }
    std::fs::write(root.join("one.txt"), "ignored").unwrap();
    let csv = "\u{feff}file_name,caption,score\r\n\
               one.png,\"a cat, sleeping\",1\r\n\
               two.png,\"she said \"\"hello\"\"\",2\r\n\
               \"three.png\",\"first line\nsecond line\",3\r\n\
               dir/four.png,plain,4\r\n";
    std::fs::write(root.join("metadata.csv"), csv).unwrap();
    let cfg = DataConfig { caption_column: "caption".into(), ..folder(root) };
    let set = source::load(&cfg).unwrap();
    let map = captions(&set);
    assert_eq!(caption(&map, "one.png"), Some("a cat, sleeping"));
    assert_eq!(caption(&map, "two.png"), Some("she said \"hello\""));
    assert_eq!(caption(&map, "three.png"), Some("first line\nsecond line"));
    assert_eq!(caption(&map, "dir/four.png"), Some("plain"));

    // With the default column ("text") the error names the columns there are.
    let err = load_error(&folder(root));
    assert!(err.contains("metadata.csv") && err.contains("line 1: no caption column \"text\""), "{err}");
    assert!(err.contains("columns found: \"file_name\", \"caption\", \"score\""), "{err}");
}

#[test]
fn sidecars_with_another_extension() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image(&root.join("x.png"), 1);
    image(&root.join("y.webp"), 2);
    std::fs::write(root.join("x.caption"), "kohya style\n").unwrap();
    std::fs::write(root.join("y.txt"), "not read").unwrap();
    let cfg = DataConfig { caption_extension: ".caption".into(), ..folder(root) };
    cfg.validate().unwrap();
    let map = captions(&source::load(&cfg).unwrap());
    assert_eq!(caption(&map, "x.png"), Some("kohya style"));
    assert_eq!(caption(&map, "y.webp"), None);
    // The default still reads .txt.
    let map = captions(&source::load(&folder(root)).unwrap());
    assert_eq!((caption(&map, "x.png"), caption(&map, "y.webp")), (None, Some("not read")));

    // A sidecar that is not UTF-8 is an error naming it, as in metadata.jsonl (it trained as
    // "no caption"); a byte-order mark is not part of the caption.
    std::fs::write(root.join("x.caption"), b"caf\xe9 au lait").unwrap();
    let err = load_error(&cfg);
    assert!(err.contains("x.caption") && err.contains("byte 3 is not valid UTF-8"), "{err}");
    std::fs::write(root.join("x.caption"), "\u{feff}with a mark").unwrap();
    assert_eq!(caption(&captions(&source::load(&cfg).unwrap()), "x.png"), Some("with a mark"));
    std::fs::write(root.join("metadata.jsonl"), b"{\"file_name\": \"x.png\", \"text\": \"caf\xe9\"}\n").unwrap();
    let err = load_error(&cfg);
    assert!(err.contains("metadata.jsonl") && err.contains("not valid UTF-8"), "{err}");
    std::fs::remove_file(root.join("metadata.jsonl")).unwrap();

    for bad in ["txt", ".", "./x", ""] {
        let err = DataConfig { caption_extension: bad.into(), ..folder(root) }.validate().unwrap_err().to_string();
        assert!(err.contains("data.caption_extension"), "{bad}: {err}");
    }
}

#[test]
fn metadata_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image(&root.join("a.png"), 1);
    let meta = root.join("metadata.jsonl");

    std::fs::write(&meta, "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n\n{\"file_name\": \"a.png\", \"text\": }\n").unwrap();
    let err = load_error(&folder(root));
    assert!(err.starts_with(&format!("{}: line 3: not valid JSON", meta.display())), "{err}");

    std::fs::write(&meta, "{\"file_name\": \"a.png\", \"prompt\": \"ok\"}\n").unwrap();
    let err = load_error(&folder(root));
    assert!(err.contains("line 1: no caption column \"text\" (data.caption_column; keys found: \"file_name\", \"prompt\")"), "{err}");

    std::fs::write(&meta, "{\"path\": \"a.png\", \"text\": \"ok\"}\n").unwrap();
    assert!(load_error(&folder(root)).contains("line 1: no \"file_name\" (keys found: \"path\", \"text\")"));

    let rows: String = (0..8).map(|i| format!("{{\"file_name\": \"gone-{i}.png\", \"text\": \"x\"}}\n")).collect();
    std::fs::write(&meta, format!("{{\"file_name\": \"a.png\", \"text\": \"ok\"}}\n{rows}")).unwrap();
    let err = load_error(&folder(root));
    assert!(err.starts_with(&meta.display().to_string()), "{err}");
    assert!(err.contains("8 file_name(s) name no file in"), "{err}");
    assert!(err.contains(": line 2 \"gone-0.png\", line 3 \"gone-1.png\"") && err.ends_with("line 6 \"gone-4.png\" and 3 more"), "{err}");
    assert!(!err.contains("gone-5"), "{err}");
    // The check refuses a broken metadata file as loading does.
    let check = check_folder(root, &CheckOptions { model_size: 8, ..Default::default() }).unwrap_err();
    assert!(matches!(check, DataError::Metadata { .. }), "{check}");

    std::fs::write(&meta, "{\"file_name\": \"../a.png\", \"text\": \"x\"}\n").unwrap();
    assert!(load_error(&folder(root)).contains("line 1: file_name \"../a.png\" is not a path inside the folder"));

    std::fs::write(&meta, "{\"file_name\": \"a.png\", \"text\": \"x\"}\n{\"file_name\": \"./a.png\", \"text\": \"y\"}\n").unwrap();
    assert!(load_error(&folder(root)).contains("line 2: file_name \"./a.png\" is given again (first on line 1)"));

    std::fs::write(root.join("metadata.csv"), "file_name,text\n").unwrap();
    assert!(load_error(&folder(root)).contains("has both metadata.jsonl and metadata.csv"));
}

#[test]
fn the_check_finds_missing_empty_and_duplicate_captions_and_counts_tags() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let captions = [
        Some("1girl, solo, smile, red hair"),
        Some("1girl, solo, blue hair"),
        Some("1girl, smile, outdoors"),
        Some("landscape, outdoors"),
        Some("landscape, outdoors"),
        Some("   \n"),
        None,
        Some("1girl, solo, smile, red hair, very long tail of tags"),
    ];
    for (i, c) in captions.iter().enumerate() {
        image(&root.join(format!("{i}.png")), i as u32);
        if let Some(c) = c {
            std::fs::write(root.join(format!("{i}.txt")), c).unwrap();
        }
    }
    // Ten tokens a word: only the last caption (10 words) is over CLIP's 75.
    let opts = CheckOptions { model_size: 8, caption_tokens: Some(TokenCounter::new(|c| 10 * c.split_whitespace().count())), ..Default::default() };
    let r = check_folder(root, &opts).unwrap();
    let c = r.captions.clone().unwrap();
    assert_eq!(c.source, ".txt files");
    assert_eq!(c.captioned, 7);
    assert_eq!(r.caption_coverage, Some(7.0 / 8.0));
    assert!(c.missing.len() == 1 && c.missing[0].ends_with("6.png"), "{:?}", c.missing);
    assert!(c.empty.len() == 1 && c.empty[0].ends_with("5.png"), "{:?}", c.empty);
    assert_eq!(c.duplicates.len(), 1);
    assert_eq!(c.duplicates[0].caption, "landscape, outdoors");
    assert_eq!(c.duplicates[0].members.len(), 2);
    let words = c.words.clone().unwrap();
    assert_eq!((words.min, words.max), (2, 10));
    let top: Vec<(&str, usize)> = c.top_tags.iter().map(|t| (t.tag.as_str(), t.count)).collect();
    assert_eq!(&top[..4], &[("1girl", 4), ("outdoors", 3), ("smile", 3), ("solo", 3)]);
    assert_eq!(c.distinct_tags, 8);
    assert!(c.tokens_counted && c.token_limit == 75);
    let long: Vec<(&str, usize)> = c.over_token_limit.iter().map(|l| (Path::new(&l.path).file_name().unwrap().to_str().unwrap(), l.tokens)).collect();
    assert_eq!(long, vec![("7.png", 100)]);
    for w in [
        "1 image(s) without a caption",
        "1 empty caption(s)",
        "2 image(s) share their caption with another (1 group(s))",
        "1 caption(s) longer than CLIP's 75 tokens",
    ] {
        assert!(r.warnings.iter().any(|x| x.starts_with(w)), "{w}: {:?}", r.warnings);
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["captions"]["top_tags"][0]["tag"], "1girl");

    // Sentences are not tag lists; without a counter no tokens are counted.
    for (i, s) in ["A photo of a dog on the beach.", "A painting of a house, at night, in winter.", "Two cats."].iter().enumerate() {
        std::fs::write(root.join(format!("{i}.txt")), s).unwrap();
    }
    for i in 3..8 {
        std::fs::write(root.join(format!("{i}.txt")), format!("A long description of picture number {i}.")).unwrap();
    }
    let c = check_folder(root, &CheckOptions { model_size: 8, ..Default::default() }).unwrap().captions.unwrap();
    assert!(c.top_tags.is_empty() && c.distinct_tags == 0, "{:?}", c.top_tags);
    assert!(!c.tokens_counted && c.over_token_limit.is_empty());
    assert!(c.missing.is_empty() && c.empty.is_empty() && c.duplicates.is_empty());
}

#[test]
fn no_caption_no_caption_report() {
    let dir = tempfile::tempdir().unwrap();
    image(&dir.path().join("a.png"), 1);
    let r = check_folder(dir.path(), &CheckOptions { model_size: 8, ..Default::default() }).unwrap();
    assert!(r.captions.is_none() && r.caption_coverage.is_none());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}
