//! `difforge config show`.

use crate::cli::ConfigArgs;
use difforge_config::RunConfig;

pub fn load(args: &ConfigArgs) -> anyhow::Result<RunConfig> {
    Ok(RunConfig::load(args.config.as_deref(), &args.sets)?)
}

pub fn show(args: &ConfigArgs) -> anyhow::Result<()> {
    print!("{}", load(args)?.to_toml());
    Ok(())
}
