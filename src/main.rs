//! The `tessera` binary: parses the command line and configuration into a
//! validated [`tessera::node::Config`] and calls the library. Everything
//! else lives in the library; subcommand bodies are in `src/cmd/`.
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit code for invalid configuration or usage (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match cmd::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EX_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(&cli.log);
    // Exactly one crypto provider is linked; install it explicitly so no
    // library has to guess.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cmd::CliError::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EX_USAGE)
        }
        Err(cmd::CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
