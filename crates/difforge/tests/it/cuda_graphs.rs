//! `train.cuda_graphs` and `sample.cuda_graphs`. Without a GPU (this project's CI) both fall
//! back to eager execution with a warning, which must change no bit of training or of the
//! sample grid; an explicit CPU device is refused by key. On a machine with CUDA the same run
//! must capture its graph and train to a finite loss.

use crate::common::{difforge, train_tiny_output};
use std::path::Path;

fn outputs(run: &Path) -> (Vec<u8>, Vec<u8>) {
    let step = run.join("checkpoints/step-00000006");
    (std::fs::read(step.join("model.safetensors")).unwrap(), std::fs::read(run.join("samples/step-00000006.png")).unwrap())
}

#[test]
fn cuda_graphs_fall_back_to_the_same_bytes_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["train.device=\"auto\"", "train.steps=6", "train.val_every=0", "train.sample_every=6", "sample.steps=4"];
    let train = |name: &str, graphs: bool| {
        let run = dir.path().join(name);
        let mut sets = base.to_vec();
        let (t, s) = (format!("train.cuda_graphs={graphs}"), format!("sample.cuda_graphs={graphs}"));
        sets.extend([t.as_str(), s.as_str()]);
        let out = train_tiny_output(&run, &sets);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (run, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (graphed, log) = train("graphs", true);
    if tch::Cuda::is_available() {
        assert!(log.contains("captured in a CUDA graph"), "{log}");
        return;
    }
    let (eager, _) = train("eager", false);
    assert!(log.contains("train.cuda_graphs") && log.contains("training eagerly"), "no fallback warning: {log}");
    assert!(log.contains("sample.cuda_graphs"), "no sampling fallback warning: {log}");
    assert!(outputs(&graphed) == outputs(&eager), "the fallback changed the weights or the samples");
    // Off is not written into the run's config, so configs saved before the key existed match.
    let saved = std::fs::read_to_string(eager.join("checkpoints/step-00000006/config.toml")).unwrap();
    assert!(!saved.contains("cuda_graphs"), "{saved}");
}

#[test]
fn cuda_graphs_on_an_explicit_cpu_device_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = train_tiny_output(&dir.path().join("run"), &["train.device=\"cpu\"", "train.cuda_graphs=true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train.cuda_graphs") && err.contains("CUDA graphs replay GPU kernels"), "{err}");
    let bench = difforge().args(["bench", "--model", "ref6m", "--device", "cpu", "--cuda-graphs", "--steps", "1"]).output().unwrap();
    assert!(!bench.status.success());
    assert!(String::from_utf8_lossy(&bench.stderr).contains("--cuda-graphs"), "{}", String::from_utf8_lossy(&bench.stderr));
}
