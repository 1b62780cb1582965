//! One file per command.

pub mod bench;
mod classifier;
mod config;
pub mod convert;
mod data;
mod eval;
mod explain;
mod finetune;
mod info;
pub mod launch;
mod lora;
mod sample;
mod sd_bench;
pub mod sd_init;
mod serve;
mod sweep;
pub mod synth;
mod text_to_image;
mod train;
pub mod vae;

use crate::cli::{ClassifierCommand, Cli, Command, ConfigCommand, DataCommand, LoraCommand};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { json } => info::run(json),
        Command::Train(args) => train::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Lora { command: LoraCommand::Merge { base, lora, scale, out, half } } => finetune::merge(&base, &lora, scale, &out, half),
        Command::Lora { command: LoraCommand::Export { base, lora, format, out, overwrite } } => lora::export(&base, &lora, &format, &out, overwrite),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(&args),
        Command::Vae { command } => vae::run(command),
        Command::Sd { command } => sd_init::run(command),
        Command::Config { command: ConfigCommand::Show(args) } => config::show(&args),
        Command::Data { command: DataCommand::Check(args) } => data::check(&args),
        Command::Data { command: DataCommand::Shard(args) } => data::shard(&args),
        Command::Data { command: DataCommand::Synth { kind } } => synth::run_synth(kind),
        Command::Data { command: DataCommand::Judge(args) } => synth::judge(&args),
        Command::Classifier { command } => match command {
            ClassifierCommand::Train { config, data, out, steps, device, json } => classifier::train(&config, data.as_deref(), &out, steps, &device, json),
            ClassifierCommand::Judge { sampling, classifier, per_class, first_class, grid, json } => {
                classifier::judge(&sampling, &classifier, per_class, first_class, grid.as_deref(), json)
            }
        },
    }
}

/// A flag that SIGINT and SIGTERM set, so that long jobs finish their step, checkpoint and stop.
pub fn stop_on_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"))?;
    }
    Ok(stop)
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
