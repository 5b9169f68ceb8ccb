//! `tessera cluster …`: administration over the `AdminService` with an
//! admin certificate. Writes that reach a follower come back `UNAVAILABLE`
//! with the leader's address; the CLI retries once there.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tessera::pb::{self, admin_service_client::AdminServiceClient};
use tessera::tls::TlsFiles;
use tonic::transport::Channel;

use super::status_err;

/// Where to connect, as an administrator.
#[derive(Debug, Clone, Args)]
pub struct AdminConn {
    /// Node address (host:port).
    #[arg(long, env = "TESSERA_ENDPOINT", default_value = "127.0.0.1:7443")]
    pub(super) endpoint: String,
    /// CA certificate (PEM).
    #[arg(long, env = "TESSERA_CA", default_value = ".tessera-dev/certs/ca.pem")]
    ca: PathBuf,
    /// Admin client certificate (PEM).
    #[arg(
        long,
        env = "TESSERA_ADMIN_CERT",
        default_value = ".tessera-dev/certs/admin.pem"
    )]
    cert: PathBuf,
    /// Admin client key (PEM); defaults to the certificate path with `.key`.
    #[arg(long, env = "TESSERA_ADMIN_KEY")]
    key: Option<PathBuf>,
}

impl AdminConn {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| self.cert.with_extension("key")),
        }
    }

    /// A client of the node at `--endpoint`.
    pub(crate) async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        self.client(&self.endpoint).await
    }

    pub(super) async fn client(
        &self,
        endpoint: &str,
    ) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(
            tessera::client::connect(endpoint, &self.files()).await?,
        ))
    }
}

/// Cluster administration subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Leader, term, commit/applied index and each member's lag.
    Status {
        #[command(flatten)]
        conn: AdminConn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Initialise a new cluster from the Raft addresses of its members
    /// (the node at --endpoint included).
    Init {
        #[command(flatten)]
        conn: AdminConn,
        /// Raft address of a member (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Add a node as a learner and wait until it has caught up. It stays a
    /// non-voting read replica (reads, streams; never in the write quorum)
    /// until `promote` (docs/SCALING.md).
    Add {
        #[command(flatten)]
        conn: AdminConn,
        /// The new node's Raft address.
        raft_addr: String,
        /// Longest wait for it to catch up, seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Make a learner a voter.
    Promote {
        #[command(flatten)]
        conn: AdminConn,
        /// Node id.
        node_id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        #[command(flatten)]
        conn: AdminConn,
        /// Node id.
        node_id: u64,
    },
    /// Write a backup of the replicated state (revocations, keys, policy)
    /// from the node at --endpoint to FILE, with its revision, the cluster
    /// id and a checksum (checked before the file is renamed into place).
    Backup {
        #[command(flatten)]
        conn: AdminConn,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Policy: put a new version, get the current one, or validate a file.
    Policy {
        #[command(flatten)]
        conn: AdminConn,
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate and store a new policy version.
    Put {
        /// Cedar policy file.
        file: PathBuf,
        /// Store it only if the cluster's policy is still at this version
        /// (the one `policy get` printed on stderr; 0: no policy yet). Otherwise
        /// nothing changes and the command fails: get, merge, put again.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
    },
    /// Print the current policy: the document exactly as stored on
    /// stdout, `policy version N` on stderr.
    Get {
        /// Wait until the node has applied at least this revision (the
        /// version `policy put` printed), so a node behind its leader does
        /// not print an older policy.
        #[arg(long, value_name = "REVISION", default_value_t = 0)]
        min_revision: u64,
    },
    /// Validate a policy file without storing it.
    Validate {
        /// Cedar policy file.
        file: PathBuf,
    },
}

/// Calls `f` on the node at the endpoint; if that node answers
/// `UNAVAILABLE` with a leader address, calls it once more on the leader.
pub(super) async fn on_leader<T, F, Fut>(conn: &AdminConn, f: F) -> anyhow::Result<T>
where
    F: Fn(AdminServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let first = f(conn.client(&conn.endpoint).await?).await;
    match first {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            let leader = s
                .metadata()
                .get(tessera::api::error::LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match leader {
                Some(addr) if addr != conn.endpoint => {
                    eprintln!("not the leader; retrying on the leader at {addr}");
                    Ok(f(conn.client(&addr).await?)
                        .await
                        .map_err(status_err)?
                        .into_inner())
                }
                _ => Err(status_err(s)),
            }
        }
        Err(s) => Err(status_err(s)),
    }
}

fn print_status(s: &pb::ClusterStatusResponse) {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_api_addr)
    };
    println!(
        "node {} is {}; leader {leader}; term {}; log {} commit {} applied {}",
        s.node_id, s.state, s.term, s.last_log_index, s.commit_index, s.applied_index
    );
    if !s.leader_known {
        println!("NOT SERVING: {}", s.not_serving_reason);
    }
    println!(
        "{:>4}  {:<8} {:<22} {:<22} {:>8} {:>8}",
        "id", "role", "api", "raft", "matched", "lag"
    );
    for n in &s.nodes {
        let (m, l) = if s.lag_known {
            (n.matched_index.to_string(), n.lag.to_string())
        } else {
            ("?".into(), "?".into())
        };
        println!(
            "{:>4}{} {:<8} {:<22} {:<22} {:>8} {:>8}",
            n.node_id,
            if n.is_leader { "*" } else { " " },
            n.role,
            n.api_addr,
            n.raft_addr,
            m,
            l
        );
    }
}

fn status_json(s: &pb::ClusterStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id, "leader_id": s.leader_id, "leader_api_addr": s.leader_api_addr,
        "term": s.term, "commit_index": s.commit_index, "applied_index": s.applied_index,
        "last_log_index": s.last_log_index, "state": s.state, "lag_known": s.lag_known,
        "leader_known": s.leader_known, "not_serving_reason": s.not_serving_reason,
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "node_id": n.node_id, "role": n.role, "api_addr": n.api_addr, "raft_addr": n.raft_addr,
            "matched_index": n.matched_index, "lag": n.lag, "is_leader": n.is_leader,
        })).collect::<Vec<_>>(),
    })
}

/// Runs a cluster subcommand.
pub async fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status { conn, json } => {
            let s = conn
                .client(&conn.endpoint)
                .await?
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            } else {
                print_status(&s);
            }
        }
        ClusterCmd::Init { conn, members } => {
            let s = conn
                .client(&conn.endpoint)
                .await?
                .init_cluster(pb::InitClusterRequest {
                    raft_addrs: members,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_status(&s);
        }
        ClusterCmd::Add {
            conn,
            raft_addr,
            timeout,
        } => {
            let s = on_leader(&conn, |mut c| {
                let req = pb::AddLearnerRequest {
                    raft_addr: raft_addr.clone(),
                    timeout_seconds: timeout,
                };
                async move { c.add_learner(req).await }
            })
            .await?;
            print_status(&s);
        }
        ClusterCmd::Promote { conn, node_id } => {
            let s = on_leader(&conn, |mut c| async move {
                c.promote(pb::NodeRequest { node_id }).await
            })
            .await?;
            print_status(&s);
        }
        ClusterCmd::Remove { conn, node_id } => {
            let s = on_leader(&conn, |mut c| async move {
                c.remove_node(pb::NodeRequest { node_id }).await
            })
            .await?;
            print_status(&s);
        }
        ClusterCmd::Backup { conn, out } => super::backup::backup_to(&conn, &out).await?,
        ClusterCmd::Policy { conn, cmd } => match cmd {
            PolicyCmd::Put { file, if_version } => {
                let text = std::fs::read_to_string(&file)?;
                let r = on_leader(&conn, |mut c| {
                    let req = pb::PutPolicyRequest {
                        text: text.clone(),
                        expected_version: if_version,
                    };
                    async move { c.put_policy(req).await }
                })
                .await?;
                println!("policy version {}", r.version);
            }
            PolicyCmd::Get { min_revision } => {
                let r = conn
                    .client(&conn.endpoint)
                    .await?
                    .get_policy(pb::GetPolicyRequest { min_revision })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                // The document exactly as stored on stdout, its version on
                // stderr: `get > file`, edit, `put --if-version N file`
                // round-trips (a version line in the file would be stored
                // with the text and pile up over edits).
                eprintln!("policy version {}", r.version);
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(r.text.as_bytes())?;
                out.flush()?;
            }
            PolicyCmd::Validate { file } => {
                let text = std::fs::read_to_string(&file)?;
                let r = conn
                    .client(&conn.endpoint)
                    .await?
                    .validate_policy(pb::PutPolicyRequest {
                        text,
                        expected_version: None,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if r.valid {
                    println!("valid");
                } else {
                    anyhow::bail!("invalid: {}", r.message);
                }
            }
        },
    }
    Ok(())
}
