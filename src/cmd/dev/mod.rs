//! `tessera dev`: a local development cluster of N nodes (three by default),
//! each a separate `tessera serve` process on 127.0.0.1.
//!
//! This module owns the layout of the development directory (certificates,
//! KEK, policy, per-node data, logs, pid files and the record of the ports
//! the cluster was created with), the children's lifecycle (start, watch,
//! restart on SIGHUP, stop on Ctrl-C or SIGTERM) and the first
//! initialisation of the cluster through node 1's `AdminService`.
//!
//! Children run in their own process group so that a Ctrl-C in the terminal
//! reaches only this supervisor, which then stops them in order; otherwise
//! every node would see the signal at once and the supervisor could not
//! tell a requested stop from a crash.
//!
//! # Layout
//!
//! This file holds the options and [`run`], which ties the parts together:
//!
//! - `layout`: the development directory and the nodes' addresses;
//! - `supervisor`: the node processes (start, watch, restart, stop);
//! - `init`: the first initialisation and the wait for a leader;
//! - `learners`: the nodes that join as learners (`--learners`);
//! - `print`: what is printed once the cluster is ready.

mod init;
mod layout;
mod learners;
mod print;
mod supervisor;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use super::CliError;
use layout::{prepare, Layout, SUPERVISOR_PID_FILE};
use print::print_ready;
use supervisor::Supervisor;

/// Options of `tessera dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for certificates, the KEK, the policy, node data, logs and
    /// pid files (created if missing).
    #[arg(long, env = "TESSERA_DEV_DIR", default_value = ".tessera-dev")]
    dir: PathBuf,
    /// Number of voting nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    nodes: u32,
    /// Extra nodes added as non-voting learners (read replicas) after the
    /// voters: nodes `--nodes + 1` onwards. They serve reads and streams
    /// and never count towards the write quorum. At most 9 nodes in all.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8))]
    learners: u32,
    /// API port of node 1; node i listens on base + i - 1. 0: every node
    /// listens on a port the kernel picks, for both listeners (the
    /// addresses are printed; such a cluster cannot be restarted).
    #[arg(long, default_value_t = 7443)]
    base_port: u16,
    /// Raft port of node 1; node i listens on raft-base + i - 1. 0: ports
    /// picked by the kernel.
    #[arg(long, default_value_t = 7543)]
    raft_base_port: u16,
    /// HTTPS (JWKS, OAuth metadata) port of node 1; node i listens on
    /// http-base + i - 1. 0: ports picked by the kernel (also when
    /// --base-port is 0). Not recorded: it may change between restarts.
    #[arg(long, default_value_t = 7643)]
    http_base_port: u16,
    /// Longest wait, seconds, for the nodes to start and the cluster to
    /// have a leader.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The signals the supervisor handles, registered before any child starts
/// so that an early Ctrl-C cannot kill the supervisor and orphan them.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// Why waiting stopped early.
enum Stop {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// Something failed; the children must be stopped.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

/// Runs `tessera dev`.
pub async fn run(args: DevArgs, log_format: super::LogFormat) -> Result<(), CliError> {
    let layout = Layout {
        nodes: args.nodes + args.learners,
        base_port: args.base_port,
        raft_base_port: args.raft_base_port,
        learners: args.learners,
    };
    layout.validate().map_err(CliError::Usage)?;
    if args.timeout == 0 {
        return Err(CliError::Usage(
            "--timeout must be at least 1 second".into(),
        ));
    }
    let exe = std::env::current_exe()
        .context("finding the tessera binary")
        .map_err(CliError::Failed)?;
    let mut sig = Signals::register().map_err(CliError::Failed)?;
    prepare(&args.dir, &layout)?;

    let mut sup = Supervisor::new(
        exe,
        args.dir.clone(),
        layout,
        log_format,
        args.http_base_port,
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let started = async {
        for i in 1..=layout.nodes {
            sup.spawn(i)?;
        }
        sup.wait_ready(&mut sig, deadline).await?;
        let (s, initialised) = sup.ensure_cluster(&mut sig, deadline).await?;
        let s = sup.ensure_learners(s, &mut sig, deadline).await?;
        Ok::<_, Stop>((s, initialised))
    }
    .await;
    let result = match started {
        Ok((s, initialised)) => {
            print_ready(&sup, &s, initialised);
            sup.supervise(&mut sig).await;
            eprintln!("stopping {} node(s)", sup.running().count());
            Ok(())
        }
        Err(Stop::Interrupted) => {
            eprintln!("interrupted; stopping the nodes");
            Ok(())
        }
        Err(Stop::Failed(e)) => Err(e),
    };
    let left = sup.stop_all().await;
    let _ = fs::remove_file(args.dir.join(SUPERVISOR_PID_FILE));
    result.map_err(CliError::Failed)?;
    if !left.is_empty() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "node(s) {left:?} did not stop even after SIGKILL"
        )));
    }
    eprintln!("every node stopped");
    Ok(())
}
