//! Zero-terminal-SNR schedules (`diffusion.zero_terminal_snr`, diffusers'
//! `rescale_betas_zero_snr`): a v-prediction base whose scheduler rescales its betas fine-tunes
//! with the flag (the base's when the config leaves it out), is refused with it off (the message
//! says what to write), and previews sample from pure noise with trailing spacing.

use super::sd_finetune::{base, config, copy_dir, train, write_config, write_shapes};
use crate::common::difforge;

#[test]
fn a_zero_terminal_snr_base_fine_tunes_with_the_flag_and_is_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let ztsnr = dir.path().join("base");
    copy_dir(&base(), &ztsnr);
    let scheduler = ztsnr.join("scheduler/scheduler_config.json");
    let json = std::fs::read_to_string(&scheduler).unwrap();
    let json = json
        .replace("\"prediction_type\": \"epsilon\"", "\"prediction_type\": \"v_prediction\"")
        .replace("\"rescale_betas_zero_snr\": false", "\"rescale_betas_zero_snr\": true")
        .replace("\"timestep_spacing\": \"leading\"", "\"timestep_spacing\": \"trailing\"");
    std::fs::write(&scheduler, json).unwrap();
    let text = config(&data, 8, true)
        .replace(&base().display().to_string(), &ztsnr.display().to_string())
        .replace("prediction = \"epsilon\"", "prediction = \"v\"")
        .replace("guidance = 3.0", "guidance = 3.0\nspacing = \"trailing\"\nsteps_offset = 0");
    let refused = text.replace("prediction = \"v\"", "prediction = \"v\"\nzero_terminal_snr = false");
    let refused = write_config(dir.path(), "refused.toml", &refused);
    let out = difforge().arg("train").arg("--config").arg(&refused).arg("--out").arg(dir.path().join("refused")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("zero_terminal_snr = true"), "{stderr}");
    // Left out, the flag is the base's (as the rest of its schedule).
    let summary = train(&write_config(dir.path(), "ztsnr.toml", &text), &dir.path().join("ztsnr"));
    assert!(summary["final_validation"]["val_loss"].as_f64().is_some_and(f64::is_finite), "{summary}");
    let saved = std::fs::read_to_string(dir.path().join("ztsnr/config.toml")).unwrap();
    assert!(saved.contains("zero_terminal_snr = true"), "{saved}");
    let accepted = text.replace("prediction = \"v\"", "prediction = \"v\"\nzero_terminal_snr = true");
    assert!(dir.path().join("ztsnr/samples/step-00000008.png").is_file());
    // Epsilon has no target at zero SNR.
    let eps = accepted.replace("prediction = \"v\"", "prediction = \"epsilon\"");
    let out =
        difforge().arg("train").arg("--config").arg(write_config(dir.path(), "eps.toml", &eps)).arg("--out").arg(dir.path().join("eps")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("diffusion.zero_terminal_snr"));
}
