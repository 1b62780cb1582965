//! `difforge data synth shapes` and `difforge data judge`: a set written twice byte for byte,
//! its withheld combos absent, its images judged as their captions say, bad input refused.

use crate::common::difforge;
use std::path::Path;

fn synth(out: &Path, extra: &[&str]) -> std::process::Output {
    difforge().args(["data", "synth", "shapes", "--out"]).arg(out).args(["--n", "200", "--size", "32", "--seed", "5"]).args(extra).output().unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect();
    out.sort();
    out
}

/// The percentage on the line that starts with `label`.
fn percent_on(stdout: &str, label: &str) -> f64 {
    let line = stdout.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no {label} line in {stdout}"));
    let value = line.split('%').next().and_then(|s| s.split_whitespace().last()).unwrap();
    value.parse().unwrap_or_else(|_| panic!("no percentage in {line:?}"))
}

#[test]
fn shapes_are_deterministic_withhold_combos_and_judge_as_captioned() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let run = synth(out, &[]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let written = files(&a);
    assert_eq!(written.len(), 200 * 2 + 3, "200 images, 200 captions, shapes.json and two prompt files");
    assert!(written == files(&b), "the same seed writes the same bytes");
    assert!(written.iter().any(|(name, _)| name == "00199.png") && written.iter().any(|(name, _)| name == "shapes.json"));

    let captions: Vec<String> =
        written.iter().filter(|(n, _)| n.ends_with(".txt") && !n.starts_with("prompts")).map(|(_, t)| String::from_utf8_lossy(t).into_owned()).collect();
    assert_eq!(captions.len(), 200);
    for withheld in ["red triangle", "blue circle", "yellow square"] {
        assert!(!captions.iter().any(|c| c.contains(withheld)), "{withheld} is withheld from training");
        let prompts = std::fs::read_to_string(a.join("prompts-withheld.txt")).unwrap();
        assert!(prompts.contains(withheld), "{withheld} is among the withheld prompts");
    }
    assert!(captions.iter().all(|c| c.starts_with("a ") && c.trim_end().ends_with(" background")), "{:?}", &captions[..3]);

    let judged = difforge().args(["data", "judge"]).arg(&a).output().unwrap();
    let stdout = String::from_utf8_lossy(&judged.stdout);
    assert!(judged.status.success(), "{stdout}{}", String::from_utf8_lossy(&judged.stderr));
    for attribute in ["colour", "kind", "size", "position", "background", "adherence"] {
        assert!(percent_on(&stdout, attribute) >= 99.0, "{attribute}: {stdout}");
    }
    assert!(stdout.contains("withheld combos: red triangle, blue circle, yellow square"), "{stdout}");

    let json = difforge().args(["data", "judge", "--json"]).arg(&a).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["judged"], 200);
    assert_eq!(report["report"]["seen"]["images"], 200);
    assert_eq!(report["report"]["withheld"]["images"], 0);
}

#[test]
fn bad_withhold_and_uncaptioned_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let run = synth(&out, &["--withhold", "red triangle,pink circle"]);
    assert_eq!(run.status.code(), Some(2), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--withhold") && stderr.contains("pink circle"), "{stderr}");
    assert!(!out.join("shapes.json").exists(), "nothing written");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    image::RgbImage::new(8, 8).save(empty.join("uncaptioned.png")).unwrap();
    let judged = difforge().args(["data", "judge"]).arg(&empty).output().unwrap();
    assert!(!judged.status.success());
    let stderr = String::from_utf8_lossy(&judged.stderr);
    assert!(stderr.contains("no captioned image"), "{stderr}");
}
