//! `difforge serve`.

use crate::cli::ServeArgs;
use difforge_serve::auth::Keys;
use difforge_serve::{serve, ServeConfig, ServeOptions};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::load(args.config.as_deref())?;
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(device) = args.device {
        config.device = device;
    }
    config.validate()?;
    if !(args.lora_scale.is_finite() && (-10.0..=10.0).contains(&args.lora_scale)) {
        return Err(difforge_core::ConfigError::new("--lora-scale", args.lora_scale, "a number in -10..=10").into());
    }
    let keys = Keys::load(args.api_keys_file.as_deref(), std::env::var("DIFFORGE_API_KEYS").ok(), args.no_auth)?;
    let adapter = args.lora.map(|path| difforge_serve::loaded::AdapterChoice { path, scale: args.lora_scale });
    Ok(serve(ServeOptions { checkpoint: args.checkpoint, adapter, config, keys })?)
}
