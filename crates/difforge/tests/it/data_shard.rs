//! `difforge data shard` on a digit folder: shards written, then refused over them.

use crate::common::{difforge, write_digit_folder};

#[test]
fn data_shard_writes_shards_and_refuses_a_non_empty_out() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("digits");
    write_digit_folder(&folder, 5);
    let out = dir.path().join("shards");
    let run = difforge().args(["data", "shard"]).arg(&folder).arg("--out").arg(&out).args(["--shard-size", "15", "--json"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["index"]["images"], 50);
    assert_eq!(report["index"]["images_per_shard"], serde_json::json!([15, 15, 15, 5]));
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["000000.tar", "000001.tar", "000002.tar", "000003.tar", "dataset.json"]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(index["class_names"], serde_json::json!(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]));

    let text = difforge().args(["data", "shard"]).arg(&folder).arg("--out").arg(dir.path().join("more")).args(["--shard-size", "20"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("50 image(s) in 3 shard(s)") && stdout.contains("000002.tar  10 image(s)"), "{stdout}");

    let again = difforge().args(["data", "shard"]).arg(&folder).arg("--out").arg(&out).output().unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--out") && stderr.contains("not empty"), "{stderr}");
    let tars = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(tars, 5, "nothing added to the refused folder");
}
