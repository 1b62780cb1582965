//! `difforge config show`.

use crate::cli::ConfigArgs;
use difforge_config::{RunConfig, VaeRunConfig};

pub fn load(args: &ConfigArgs) -> anyhow::Result<RunConfig> {
    Ok(RunConfig::load(args.config.as_deref(), &args.sets)?)
}

/// Prints the effective config: a diffusion run's, or a VAE run's (`difforge vae train`) when
/// the file has a `[vae]` section.
pub fn show(args: &ConfigArgs) -> anyhow::Result<()> {
    match args.config.as_deref().filter(|p| VaeRunConfig::describes(p)) {
        Some(path) => print!("{}", VaeRunConfig::load(path, &args.sets)?.to_toml()),
        None => print!("{}", load(args)?.to_toml()),
    }
    Ok(())
}
