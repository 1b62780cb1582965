//! A run's config as it may be shown to someone who must not learn the server's file layout
//! (a non-admin key of `difforge serve`): every path reduced to its file name.

use crate::{ModelConfig, RunConfig};
use std::path::{Path, PathBuf};

/// The last component of `path`, or nothing.
fn name_only(path: &Path) -> PathBuf {
    path.file_name().map(PathBuf::from).unwrap_or_default()
}

fn name_of(path: &mut Option<PathBuf>) {
    *path = path.as_deref().map(name_only);
}

impl RunConfig {
    /// This config with each path it holds (data folders, bases, weights, prompt files, caches)
    /// cut to its file name: what it trained on stays readable, where it lives does not.
    pub fn without_paths(&self) -> RunConfig {
        let mut cfg = self.clone();
        let data = &mut cfg.data;
        for path in [&mut data.path, &mut data.labels_path, &mut data.val_path, &mut data.mask_path] {
            name_of(path);
        }
        for subset in &mut data.subsets {
            subset.path = name_only(&subset.path);
        }
        name_of(&mut cfg.finetune.from);
        name_of(&mut cfg.train.eval_classifier);
        name_of(&mut cfg.train.eval_inception_weights);
        if let ModelConfig::StableDiffusion(sd) = &mut cfg.model {
            sd.base = name_only(&sd.base);
            name_of(&mut sd.base_config);
            name_of(&mut sd.preview_prompt_file);
            name_of(&mut sd.cache_dir);
            if let Some(new) = &mut sd.new {
                new.vae = name_only(&new.vae);
            }
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_path_of_a_stable_diffusion_run_survives() {
        let text = r#"
            [data]
            source = "folder"
            path = "/home/alice/secret/images"
            channels = 3
            image_size = 64
            [model]
            family = "stable-diffusion"
            base = "/srv/models/sd15.safetensors"
            base_config = "/srv/models/sd15-config"
            preview_prompt_file = "/home/alice/prompts.txt"
            cache_dir = "/var/cache/difforge"
            [finetune]
            from = "/srv/runs/base"
        "#;
        let mut cfg = RunConfig::from_toml(text, &[], "test").unwrap();
        cfg.data.mask_path = Some("/home/alice/secret/masks".into());
        let shown = cfg.without_paths().to_toml();
        for secret in ["/home/alice", "/srv/", "/var/cache"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for name in ["images", "sd15.safetensors", "prompts.txt"] {
            assert!(shown.contains(name), "{name} in {shown}");
        }
    }
}
