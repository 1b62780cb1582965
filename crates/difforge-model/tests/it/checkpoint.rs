//! A checkpoint written onto a full disk: the error names the problem, the earlier checkpoint is
//! intact, and no half-written temporary folder is left taking space.

use difforge_config::RunConfig;
use difforge_model::checkpoint::{self, TrainState};
use difforge_model::DiffusionModel;
use std::path::Path;
use std::process::Command;

/// A 2 MiB tmpfs (root only): big enough for one tiny checkpoint's files, not for two.
struct SmallDisk<'a>(&'a Path);

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn a_full_disk_leaves_no_partial_checkpoint() {
    if !is_root() {
        eprintln!("a_full_disk_leaves_no_partial_checkpoint: needs root to mount a small tmpfs; not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mount).status().unwrap();
    assert!(ok.success(), "mount a tmpfs");
    let _disk = SmallDisk(&mount);
    let cfg = RunConfig::from_toml(include_str!("../../../../configs/tiny.toml"), &[], "configs/tiny.toml").unwrap();
    let model = DiffusionModel::new(&cfg, tch::Device::Cpu).unwrap();
    let mut state = TrainState::fresh();
    let first = checkpoint::save(&mount, &model, Vec::new(), &state, 3).expect("the first checkpoint fits");
    state.step = 1;
    let err = checkpoint::save(&mount, &model, Vec::new(), &state, 3).expect_err("the second does not fit");
    assert!(!err.to_string().is_empty());
    let left: Vec<String> = std::fs::read_dir(mount.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["step-00000000".to_string()], "a temporary folder was left behind");
    checkpoint::verify(&first).expect("the earlier checkpoint is intact");
}
