//! The `difforge` command line: parses arguments and calls the library crates.

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

/// Library crates report through `tracing`; the server logs with timestamps (optionally as JSON
/// lines), every other command prints its messages plainly to stderr. DIFFORGE_LOG overrides the
/// level (e.g. DIFFORGE_LOG=warn).
fn init_logging(cli: &cli::Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIFFORGE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    match &cli.command {
        cli::Command::Serve(args) if args.log_json => builder.json().init(),
        cli::Command::Serve(_) => builder.init(),
        _ => builder.without_time().init(),
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

/// 2 for bad input (a config key, a flag, a value), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(is_bad_input) {
        2
    } else {
        1
    }
}

/// Whether an error (of any of difforge's crates) is a [`ConfigError`] at heart.
fn is_bad_input(e: &(dyn std::error::Error + 'static)) -> bool {
    use difforge_core::ConfigError;
    e.is::<ConfigError>()
        || e.downcast_ref::<difforge_train::TrainError>().is_some_and(|t| t.config_error().is_some())
        || e.downcast_ref::<difforge_eval::EvalError>().is_some_and(|t| t.config_error().is_some())
        || e.downcast_ref::<difforge_model::ModelError>().is_some_and(|m| m.config_error().is_some())
        || matches!(e.downcast_ref::<difforge_data::DataError>(), Some(difforge_data::DataError::Config(_)))
        || matches!(e.downcast_ref::<difforge_nn::NnError>(), Some(difforge_nn::NnError::Config(_)))
        || matches!(e.downcast_ref::<difforge_explain::ExplainError>(), Some(difforge_explain::ExplainError::Model(m)) if m.config_error().is_some())
        || matches!(e.downcast_ref::<difforge_serve::ServeError>(), Some(difforge_serve::ServeError::Config(_)))
}
