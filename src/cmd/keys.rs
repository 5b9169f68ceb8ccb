//! `tessera keys …` and `tessera kek …`: signing-key listing and rotation,
//! and KEK rotation, over the `AdminService` with an admin certificate.
//! Rotation runs on the leader: a follower's `UNAVAILABLE` names it and the
//! CLI retries there once.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use tessera::pb;

use super::cluster::{on_leader, AdminConn};
use super::{status_err, CliError};

/// Signing-key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Every key of the ring with its state and times.
    List {
        #[command(flatten)]
        conn: AdminConn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a rotation: publish a new key that signs after the
    /// publish-ahead window (a rotation in progress is reported, not
    /// doubled; one in progress to another algorithm than `--algorithm`
    /// is refused).
    Rotate {
        #[command(flatten)]
        conn: AdminConn,
        /// Algorithm of the new key [default: EdDSA; without it, a
        /// rotation in progress of either algorithm is taken]
        #[arg(long, value_enum)]
        algorithm: Option<Algorithm>,
        /// Emergency: the new key signs at once. Verifiers holding a cached
        /// JWKS refuse its tokens until they refresh (on the unknown kid).
        #[arg(long)]
        now: bool,
    },
}

/// Signing algorithms.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algorithm {
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    #[value(name = "ES256")]
    ES256,
}

/// KEK subcommands.
#[derive(Debug, Subcommand)]
pub enum KekCmd {
    /// Print the id of a KEK file (the id nodes and records name; the KEK
    /// itself is never printed).
    Id {
        /// File holding the KEK (32 bytes, base64 or hex).
        #[arg(long)]
        kek_file: PathBuf,
    },
    /// Re-seal every signing key under the new KEK, in one replicated
    /// command. First configure every node with the new KEK as kek_file and
    /// the old one as previous_kek_file, and restart them one by one.
    Rotate {
        #[command(flatten)]
        conn: AdminConn,
        /// The new KEK file: only its id is sent, to check that the leader
        /// holds it.
        #[arg(long)]
        new_kek_file: PathBuf,
    },
}

fn when(t: u64) -> String {
    if t == 0 {
        "-".into()
    } else {
        t.to_string()
    }
}

fn key_json(k: &pb::KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "kid": k.kid, "algorithm": k.algorithm, "state": k.state,
        "created_at": k.created_at, "activate_after": k.activate_after,
        "activated_at": k.activated_at, "retired_at": k.retired_at,
        "remove_after": k.remove_after, "kek_id": k.kek_id,
    })
}

/// Runs a `keys` subcommand.
pub async fn run_keys(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::List { conn, json } => {
            let r = conn
                .client(&conn.endpoint)
                .await?
                .list_keys(pb::ListKeysRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if json {
                let v = serde_json::json!({
                    "revision": r.revision,
                    "publish_ahead_seconds": r.publish_ahead_seconds,
                    "rotation_period_seconds": r.rotation_period_seconds,
                    "retire_grace_seconds": r.retire_grace_seconds,
                    "kek_ids": r.kek_ids,
                    "keys": r.keys.iter().map(key_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let period = match r.rotation_period_seconds {
                0 => "off".to_string(),
                s => format!("{s} s"),
            };
            println!(
                "publish ahead {} s; rotation period {period}; retired keys kept {} s; revision {}",
                r.publish_ahead_seconds, r.retire_grace_seconds, r.revision
            );
            println!(
                "{:<16} {:<6} {:<8} {:>11} {:>11} {:>11} {:>11} {:>11}  kek",
                "kid", "alg", "state", "created", "activates", "activated", "retired", "removal"
            );
            for k in &r.keys {
                println!(
                    "{:<16} {:<6} {:<8} {:>11} {:>11} {:>11} {:>11} {:>11}  {}",
                    k.kid,
                    k.algorithm,
                    k.state,
                    when(k.created_at),
                    when(k.activate_after),
                    when(k.activated_at),
                    when(k.retired_at),
                    when(k.remove_after),
                    k.kek_id
                );
            }
        }
        KeysCmd::Rotate {
            conn,
            algorithm,
            now,
        } => {
            let algorithm = match algorithm {
                None => "",
                Some(Algorithm::EdDSA) => "EdDSA",
                Some(Algorithm::ES256) => "ES256",
            };
            let r = on_leader(&conn, |mut c| {
                let req = pb::RotateSigningKeyRequest {
                    algorithm: algorithm.into(),
                    now,
                };
                async move { c.rotate_signing_key(req).await }
            })
            .await?;
            if now {
                eprintln!(
                    "warning: --now skips the publish-ahead window; verifiers with a cached JWKS refuse the new key's tokens until they refresh"
                );
            }
            println!("{}", r.message);
        }
    }
    Ok(())
}

/// Runs a `kek` subcommand.
pub async fn run_kek(cmd: KekCmd) -> Result<(), CliError> {
    match cmd {
        KekCmd::Id { kek_file } => {
            let kek = tessera::keys::Kek::from_file(&kek_file)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            println!("{}", kek.id());
        }
        KekCmd::Rotate { conn, new_kek_file } => {
            let kek = tessera::keys::Kek::from_file(&new_kek_file)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let expected = kek.id().to_string();
            let r = on_leader(&conn, |mut c| {
                let req = pb::RotateKekRequest {
                    expected_kek_id: expected.clone(),
                };
                async move { c.rotate_kek(req).await }
            })
            .await?;
            if r.resealed == 0 {
                println!("every signing key is already sealed under KEK {}", r.kek_id);
            } else {
                println!(
                    "{} signing keys re-sealed under KEK {} at revision {}; previous_kek_file may be removed from every node",
                    r.resealed, r.kek_id, r.revision
                );
            }
        }
    }
    Ok(())
}
