//! `difforge config show`.

use crate::cli::ConfigArgs;
use difforge_config::{RunConfig, VaeRunConfig};

/// A user's run config, with what it leaves out taken from its model (a Stable Diffusion base's
/// scheduler).
pub fn load(args: &ConfigArgs) -> anyhow::Result<RunConfig> {
    Ok(RunConfig::load_with(args.config.as_deref(), &args.sets, &difforge_model::stable_diffusion::run_defaults)?)
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
