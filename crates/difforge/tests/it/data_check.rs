//! `difforge data check` on a damaged copy of the digits, and training through the damage.

use crate::common::{data_path, difforge, train_tiny_output, write_digit_folder};
use std::path::Path;

/// 100 digits per class with class 7 cut to 10 (10%).
fn cut_digits(root: &Path) {
    write_digit_folder(root, 100);
    for i in 10..100 {
        std::fs::remove_file(root.join(format!("7/{i:03}.png"))).unwrap();
    }
}

/// The same, plus 20 corrupt files and 10 exact duplicates.
fn damaged_digits(root: &Path) {
    cut_digits(root);
    for i in 0..20 {
        let class = i % 10;
        let bytes: &[u8] = if i % 2 == 0 { b"" } else { b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRtruncated" };
        std::fs::write(root.join(format!("{class}/corrupt-{i:02}.png")), bytes).unwrap();
    }
    for i in 0..10 {
        let class = if i == 7 { 8 } else { i };
        std::fs::copy(root.join(format!("{class}/{:03}.png", 50 + i)), root.join(format!("{class}/copy-{i}.png"))).unwrap();
    }
}

fn check_json(path: &Path) -> serde_json::Value {
    let out = difforge().args(["data", "check"]).arg(path).args(["--model-size", "16", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Near-duplicate groups as paths relative to the data folder.
fn near_groups(report: &serde_json::Value, root: &Path) -> Vec<Vec<String>> {
    let rel = |v: &serde_json::Value| Path::new(v.as_str().unwrap()).strip_prefix(root).unwrap().display().to_string();
    report["near_duplicates"].as_array().unwrap().iter().map(|g| g["members"].as_array().unwrap().iter().map(rel).collect()).collect()
}

#[test]
fn data_check_reports_exactly_the_planted_problems_and_training_survives_them() {
    let dir = tempfile::tempdir().unwrap();
    // The OpenCV sheet has near-identical digits of its own (same writer, e.g. several 1s and
    // a pair of 6s): those are real findings, and planting damage must add none.
    let pristine = dir.path().join("pristine");
    cut_digits(&pristine);
    let clean = check_json(&pristine);
    let natural = near_groups(&clean, &pristine);
    assert!(!natural.is_empty() && natural.len() < 20, "{natural:?}");

    let data = dir.path().join("digits");
    damaged_digits(&data);
    let fix = dir.path().join("fix.json");
    let out = difforge().args(["data", "check"]).arg(&data).args(["--model-size", "16", "--json", "--fix-report"]).arg(&fix).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files_found"], 9 * 100 + 10 + 20 + 10);
    assert_eq!(r["usable"], 920);
    assert_eq!(r["unreadable"].as_array().unwrap().len(), 20);
    let dups = r["exact_duplicates"].as_array().unwrap();
    assert_eq!(dups.len(), 10);
    assert!(dups.iter().all(|g| g.as_array().unwrap().len() == 2 && g[1].as_str().unwrap().contains("copy-")), "{dups:?}");
    assert_eq!(near_groups(&r, &data), natural);
    assert_eq!(r["outliers"].as_array().unwrap().len(), 0);
    assert_eq!(r["smaller_than_model"].as_array().unwrap().len(), 0);
    assert_eq!(r["class_counts"]["7"], 10);
    assert_eq!(r["class_counts"]["8"], 102);
    assert_eq!(r["imbalance_ratio"], 10.2);
    assert_eq!(r["color_modes"]["grey"], 920);
    let warnings: Vec<&str> = r["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(
        warnings,
        vec![
            "class imbalance: the largest class has 10.2x the images of the smallest (7 with 10); consider data.balance = \"class\"".to_string(),
            "20 unreadable or corrupt file(s)".to_string(),
            "10 exact duplicate file(s)".to_string(),
            format!("{} group(s) of near-duplicates ({} images)", natural.len(), natural.iter().map(Vec::len).sum::<usize>()),
        ]
    );
    let fix: serde_json::Value = serde_json::from_slice(&std::fs::read(&fix).unwrap()).unwrap();
    assert_eq!(fix["remove"].as_array().unwrap().len(), 30);
    assert_eq!(fix["review"].as_array().unwrap().len(), natural.len());

    // The text output is bounded: a few lines per kind of problem, then a count.
    let out = difforge().args(["data", "check"]).arg(&data).args(["--model-size", "16", "--show", "3"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.trim_start().starts_with("unreadable ")).count(), 4, "{text}");
    assert!(text.contains("... and 17 more"), "{text}");

    // Training on it: the corrupt files are skipped, the check's warnings are printed, balanced
    // sampling is available, and the run reaches its last step.
    let out = train_tiny_output(&dir.path().join("run"), &["train.steps=6", "data.source=\"folder\"", "data.balance=\"class\"", &data_path(&data)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("data check: class imbalance") && stderr.contains("20 unreadable"), "{stderr}");
    let report = dir.path().join("run").join("data-check.json");
    assert!(stderr.contains(&format!("the full report is in {}", report.display())), "{stderr}");
    assert!(!stderr.contains("data check: copy-"), "the summary must not list files: {stderr}");
    let full: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(full["unreadable"].as_array().unwrap().len(), 20);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["final_step"], 6);
    assert_eq!(s["skipped_files"], 20);
}

/// A subfolder that cannot be read is skipped and reported; the rest is checked. (As root the
/// check runs without the capabilities that bypass file permissions.)
#[test]
fn an_unreadable_subfolder_is_reported_not_fatal() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write_digit_folder(dir.path(), 3);
    let locked = dir.path().join("7");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let is_root = std::process::Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let bin = assert_cmd::cargo::cargo_bin("difforge");
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.arg("--bounding-set=-dac_override,-dac_read_search").arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    };
    let out = cmd.args(["data", "check"]).arg(dir.path()).args(["--model-size", "16", "--json"]).output().unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["usable"], 27);
    let skipped = r["skipped_folders"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("/7") && skipped[0]["reason"].as_str().unwrap().contains("not readable"));
}

/// Captions from a metadata.jsonl: CLIP's own tokenizer (built into the binary) finds the caption
/// training would cut off, and tag captions get a tag summary, in the text and the JSON report.
#[test]
fn data_check_counts_caption_tokens_with_clip_and_summarises_tags() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let long = vec!["red"; 40].join(", "); // 40 words and 39 commas: 79 CLIP tokens
    let captions = ["1girl, solo, smile", "1girl, solo, outdoors", "1girl, smile, night sky", &format!("1girl, {long}")];
    let mut jsonl = String::new();
    for (i, caption) in captions.iter().enumerate() {
        let i = i as u32;
        image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([(x * 16 + i * 60) as u8, (y * 16) as u8, ((x * y + i * 40) % 256) as u8]))
            .save(root.join(format!("{i}.png")))
            .unwrap();
        jsonl += &serde_json::json!({"file_name": format!("{i}.png"), "text": caption}).to_string();
        jsonl.push('\n');
    }
    std::fs::write(root.join("metadata.jsonl"), jsonl).unwrap();

    let r = check_json(root);
    let c = &r["captions"];
    assert_eq!(c["source"], "metadata.jsonl");
    assert_eq!(c["captioned"], 4);
    let long_ones = c["over_token_limit"].as_array().unwrap();
    assert_eq!(long_ones.len(), 1, "{long_ones:?}");
    assert!(long_ones[0]["path"].as_str().unwrap().ends_with("3.png"));
    // "1girl" is "1" + "girl", then ", " between 41 tags: 2 + 40 + 40 = 82.
    assert_eq!(long_ones[0]["tokens"], 82);
    assert_eq!(c["top_tags"][0], serde_json::json!({"tag": "1girl", "count": 4}));

    let out = difforge().args(["data", "check"]).arg(root).args(["--model-size", "16"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  tags           1girl: 4, smile: 2, solo: 2, "), "{text}");
    assert!(text.contains("3.png: 82 tokens (CLIP reads the first 75)"), "{text}");
    assert!(text.contains("warning: 1 caption(s) longer than CLIP's 75 tokens"), "{text}");
}
