//! The `difforge` command line: parses arguments and calls the library crates.

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn init_logging(cli: &cli::Cli) {
    let (json, default) = match &cli.command {
        cli::Command::Serve(args) => (args.log_json, "info"),
        _ => (false, "warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIFFORGE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 2 for bad input (config, arguments), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<difforge_train::TrainError>() {
        Some(difforge_train::TrainError::Config(_)) => 2,
        _ => 1,
    }
}
