//! Subcommands of the `tessera` binary and the outer configuration (flags,
//! `TESSERA_*` environment variables and a TOML file), which is turned into
//! the library's validated `Config` here so the library never sees `clap`.

mod backup;
mod bench;
mod bench_revoke;
mod bench_watch;
mod cluster;
mod dev;
mod health;
mod keys;
mod proc_cpu;
mod serve;
mod watch;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tessera::pb;
use tessera::tls::TlsFiles;

/// How a subcommand failed.
pub enum CliError {
    /// Invalid configuration or usage: exit code 64.
    Usage(String),
    /// Anything else: exit code 1.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

/// Tessera: issue, exchange, introspect and revoke service tokens.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log filter (tracing `EnvFilter` syntax), logs go to stderr.
    #[arg(
        long,
        env = "TESSERA_LOG",
        default_value = "info,openraft=warn",
        global = true
    )]
    pub log: String,
    /// Log format: `text` (human-readable; colours only when stderr is a
    /// terminal) or `json` (one object per line, span fields included).
    #[arg(
        long,
        env = "TESSERA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// The format of the service log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The flag value, for child processes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node.
    // Boxed: by far the largest variant.
    Serve(Box<serve::ServeArgs>),
    /// Start a three-node development cluster on this machine (separate
    /// processes on 127.0.0.1), initialise it, and stop it on Ctrl-C.
    Dev(dev::DevArgs),
    /// Backup files: verify one offline.
    Backup {
        #[command(subcommand)]
        cmd: backup::BackupCmd,
    },
    /// Create a new one-node cluster from a backup file.
    Restore(backup::RestoreArgs),
    /// Cluster administration: init, status, add, promote, remove, policy, backup.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Issue, exchange and introspect tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Revoke a token, a delegation chain, a subject or a client.
    Revoke(RevokeArgs),
    /// Print the JSON Web Key Set.
    Jwks(ConnArgs),
    /// Signing keys: list them, rotate (admin).
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Key-encryption key: print a KEK file's id, re-seal the signing keys
    /// under the new KEK (admin).
    Kek {
        #[command(subcommand)]
        cmd: keys::KekCmd,
    },
    /// Probe a node's gRPC health (whole node, and each `--service`) with a
    /// client certificate; exit 0 when SERVING, 1 otherwise (for
    /// Kubernetes exec probes and systemd).
    Health(health::HealthArgs),
    /// Print the revocation stream as JSON lines.
    Watch(watch::WatchArgs),
    /// Propagation latency of the revocation stream to many subscribers.
    BenchWatch(bench_watch::BenchWatchArgs),
    /// Load generator: throughput and latency of Issue, Exchange, Introspect.
    Bench(bench::BenchArgs),
    /// Revocation commit benchmark against a cluster (and etcd, with the
    /// `etcd-bench` feature): throughput and latency per client count.
    BenchRevoke(bench_revoke::BenchRevokeArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Create a development CA, node certificates and example service certificates.
    Init {
        /// Output directory.
        #[arg(long, env = "TESSERA_CERTS_DIR", default_value = ".tessera-dev/certs")]
        dir: PathBuf,
        /// Number of node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "tessera.dev")]
        trust_domain: String,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
}

/// Where to connect and with which certificate.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Node address (host:port).
    #[arg(long, env = "TESSERA_ENDPOINT", default_value = "127.0.0.1:7443")]
    pub endpoint: String,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, env = "TESSERA_CA", default_value = ".tessera-dev/certs/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate (PEM); its SPIFFE id is the caller identity.
    #[arg(
        long,
        env = "TESSERA_CERT",
        default_value = ".tessera-dev/certs/frontend.pem"
    )]
    pub cert: PathBuf,
    /// Client private key (PEM).
    #[arg(long, env = "TESSERA_KEY")]
    pub key: Option<PathBuf>,
}

impl ConnArgs {
    /// The TLS files; the key defaults to the certificate path with `.key`.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| self.cert.with_extension("key")),
        }
    }

    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tessera::client::connect(&self.endpoint, &self.files()).await?)
    }
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// A token for the caller itself; prints the token.
    Issue {
        #[command(flatten)]
        conn: ConnArgs,
        /// Audience (repeatable).
        #[arg(long = "audience", short = 'a', required = true)]
        audience: Vec<String>,
        /// Scopes (repeatable, or space-separated).
        #[arg(long = "scope", short = 's', required = true)]
        scope: Vec<String>,
        /// Lifetime in seconds (0: the default; above the maximum: refused).
        #[arg(long, default_value_t = 0)]
        lifetime: u64,
        /// An identity that may later exchange the token (repeatable;
        /// RFC 8693 `may_act`). None: no restriction.
        #[arg(long = "may-act")]
        may_act: Vec<String>,
        /// Print the whole response as JSON instead of the token.
        #[arg(long)]
        json: bool,
    },
    /// RFC 8693 exchange of a token for a narrower one; prints the token.
    Exchange {
        #[command(flatten)]
        conn: ConnArgs,
        /// The subject token.
        #[arg(long)]
        subject_token: String,
        /// An actor token (the caller's own token).
        #[arg(long)]
        actor_token: Option<String>,
        /// Audience (repeatable).
        #[arg(long = "audience", short = 'a', required = true)]
        audience: Vec<String>,
        /// Scopes (repeatable, or space-separated).
        #[arg(long = "scope", short = 's', required = true)]
        scope: Vec<String>,
        /// Lifetime in seconds (0: the default).
        #[arg(long, default_value_t = 0)]
        lifetime: u64,
        /// Impersonation instead of delegation (policy must allow it).
        #[arg(long)]
        impersonate: bool,
        /// Print the whole response as JSON instead of the token.
        #[arg(long)]
        json: bool,
    },
    /// Introspect a token; prints JSON.
    Introspect {
        #[command(flatten)]
        conn: ConnArgs,
        /// The token.
        token: String,
        /// Wait until the node has applied this revision.
        #[arg(long, default_value_t = 0)]
        min_revision: u64,
        /// Answer from this node's applied state at once (possibly stale;
        /// the output says how stale) instead of a linearizable read.
        #[arg(long)]
        local: bool,
    },
}

#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false)]
struct RevokeTarget {
    /// A token (revokes it and everything exchanged from it).
    #[arg(long)]
    token: Option<String>,
    /// A token id.
    #[arg(long)]
    jti: Option<String>,
    /// Every token of this subject issued until now.
    #[arg(long)]
    subject: Option<String>,
    /// Every token issued to this client identity until now.
    #[arg(long)]
    client: Option<String>,
    /// The whole delegation chain of this token.
    #[arg(long)]
    chain: Option<String>,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    target: RevokeTarget,
}

fn split_scopes(scopes: &[String]) -> Vec<String> {
    scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect()
}

fn print_token(resp: &pb::TokenResponse, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "access_token": resp.access_token,
                "issued_token_type": resp.issued_token_type,
                "token_type": resp.token_type,
                "expires_in": resp.expires_in,
                "scope": resp.scope.join(" "),
                "jti": resp.jti,
                "aud": resp.audience,
            })
        );
    } else {
        println!("{}", resp.access_token);
    }
    Ok(())
}

fn actor_json(a: &pb::Actor) -> serde_json::Value {
    let mut v = serde_json::json!({ "sub": a.sub });
    if let Some(inner) = &a.act {
        v["act"] = actor_json(inner);
    }
    v
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Serve(args) => serve::serve(*args).await,
        Cmd::Dev(args) => dev::run(args, cli.log_format).await,
        Cmd::Cluster { cmd } => cluster::run(cmd).await.map_err(CliError::Failed),
        Cmd::Backup { cmd } => backup::run(cmd).await.map_err(CliError::Failed),
        Cmd::Restore(args) => backup::restore(args).await.map_err(CliError::Failed),
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    dir,
                    nodes,
                    trust_domain,
                    force,
                },
        } => {
            let opts = tessera::certs::DevPkiOptions {
                nodes,
                trust_domain,
                force,
                ..Default::default()
            };
            let pki = tessera::certs::init_dev_pki(&dir, &opts)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            println!("development certificates written to {}", dir.display());
            for f in pki.files() {
                println!("  {}", f.display());
            }
            Ok(())
        }
        Cmd::Token { cmd } => token(cmd).await.map_err(CliError::Failed),
        Cmd::Revoke(args) => revoke(args).await.map_err(CliError::Failed),
        Cmd::Keys { cmd } => keys::run_keys(cmd).await.map_err(CliError::Failed),
        Cmd::Kek { cmd } => keys::run_kek(cmd).await,
        Cmd::Jwks(conn) => {
            let mut c = pb::key_service_client::KeyServiceClient::new(conn.channel().await?);
            let r = c
                .get_jwks(pb::GetJwksRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{}", r.jwks_json);
            Ok(())
        }
        Cmd::Health(args) => health::run(args).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Watch(args) => watch::run(args).await.map_err(CliError::Failed),
        Cmd::BenchWatch(args) => bench_watch::run(args).await,
        Cmd::BenchRevoke(args) => bench_revoke::run(args).await,
    }
}

async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    use pb::token_service_client::TokenServiceClient;
    match cmd {
        TokenCmd::Issue {
            conn,
            audience,
            scope,
            lifetime,
            may_act,
            json,
        } => {
            let mut c = TokenServiceClient::new(conn.channel().await?);
            let r = c
                .issue_token(pb::IssueTokenRequest {
                    audience,
                    scope: split_scopes(&scope),
                    lifetime_seconds: lifetime,
                    may_act,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_token(&r, json)
        }
        TokenCmd::Exchange {
            conn,
            subject_token,
            actor_token,
            audience,
            scope,
            lifetime,
            impersonate,
            json,
        } => {
            let mut c = TokenServiceClient::new(conn.channel().await?);
            let at = "urn:ietf:params:oauth:token-type:access_token".to_string();
            let r = c
                .exchange_token(pb::ExchangeTokenRequest {
                    grant_type: "urn:ietf:params:oauth:grant-type:token-exchange".into(),
                    subject_token,
                    subject_token_type: at.clone(),
                    actor_token_type: if actor_token.is_some() {
                        at.clone()
                    } else {
                        String::new()
                    },
                    actor_token: actor_token.unwrap_or_default(),
                    audience,
                    resource: vec![],
                    scope: split_scopes(&scope),
                    requested_token_type: at,
                    lifetime_seconds: lifetime,
                    impersonate,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_token(&r, json)
        }
        TokenCmd::Introspect {
            conn,
            token,
            min_revision,
            local,
        } => {
            let mut c = TokenServiceClient::new(conn.channel().await?);
            let consistency = if local {
                pb::Consistency::Local
            } else {
                pb::Consistency::Linearizable
            };
            let r = c
                .introspect(pb::IntrospectRequest {
                    token,
                    min_revision,
                    consistency: consistency as i32,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = if r.active {
                let mut v = serde_json::json!({
                    "active": true, "iss": r.iss, "sub": r.sub, "aud": r.aud, "client_id": r.client_id,
                    "scope": r.scope, "exp": r.exp, "iat": r.iat, "nbf": r.nbf, "jti": r.jti,
                    "token_type": r.token_type, "chain": r.chain, "revision": r.revision,
                    "cnf": { "x5t#S256": r.cnf_x5t_s256 },
                });
                if let Some(a) = &r.act {
                    v["act"] = actor_json(a);
                }
                v
            } else {
                serde_json::json!({ "active": false, "revision": r.revision })
            };
            let mut v = v;
            v["linearizable"] = r.linearizable.into();
            if !r.linearizable {
                v["max_staleness_ms"] = r.max_staleness_ms.into();
            }
            println!("{}", serde_json::to_string_pretty(&v).context("json")?);
            Ok(())
        }
    }
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    use pb::revoke_request::Target;
    let t = args.target;
    let target = if let Some(v) = t.token {
        Target::Token(v)
    } else if let Some(v) = t.jti {
        Target::Jti(v)
    } else if let Some(v) = t.subject {
        Target::Subject(v)
    } else if let Some(v) = t.client {
        Target::Client(v)
    } else if let Some(v) = t.chain {
        Target::ChainOfToken(v)
    } else {
        anyhow::bail!("nothing to revoke");
    };
    let mut c = pb::token_service_client::TokenServiceClient::new(args.conn.channel().await?);
    let r = c
        .revoke(pb::RevokeRequest {
            target: Some(target),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({ "revision": r.revision, "changed": r.changed })
    );
    Ok(())
}
