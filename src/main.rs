//! The `tessera` binary: parses the command line and configuration into a
//! validated [`tessera::node::Config`] and calls the library. Everything
//! else lives in the library; subcommand bodies are in `src/cmd/`.
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit code for invalid configuration or usage (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

// The system allocator, on purpose: mimalloc 0.1.52 cut CPU per request
// by 10-20 % but held 90 MB at idle and 262 MB after a load of a million
// revocations (glibc: 28 and 180 MB), which breaks the memory goal
// (docs/BENCHMARKS.md, issue 11).

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
    init_tracing(&cli.log, cli.log_format);
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

/// Logs go to stderr. Colour codes only when stderr is a terminal (and
/// `NO_COLOR` is unset): a log file or the journal must hold plain text.
fn init_tracing(filter: &str, format: cmd::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cmd::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        cmd::LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(ansi).init()
        }
    }
}
