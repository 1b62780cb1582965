//! `difforge serve`.

use crate::cli::ServeArgs;
use difforge_serve::auth::Keys;
use difforge_serve::{serve, ServeConfig, ServeOptions};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(device) = args.device {
        config.device = device;
    }
    let keys = Keys::load(args.api_keys_file.as_deref(), std::env::var("DIFFORGE_API_KEYS").ok()).map_err(|e| anyhow::anyhow!(e))?;
    let adapter = args.lora.map(|path| difforge_serve::loaded::AdapterChoice { path, scale: args.lora_scale });
    serve(ServeOptions { checkpoint: args.checkpoint, adapter, config, keys }).map_err(|e| anyhow::anyhow!(e))
}
