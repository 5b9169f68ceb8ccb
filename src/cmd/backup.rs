//! `tessera cluster backup`, `tessera backup verify` and `tessera restore`:
//! writing a backup file from a node's `AdminService.Backup` stream,
//! checking one offline, and restoring one into a new one-node cluster
//! (see `tessera::store::backup` for the format and what a restore does to
//! tokens issued before it).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tessera::pb;
use tessera::store::backup::{self, BackupHeader};
use tokio_stream::StreamExt;

use super::cluster::AdminConn;
use super::status_err;

/// `tessera backup …`: work on backup files.
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Check a backup file offline: header, length, checksum, and that the
    /// state decodes and is the one the header names. Exit 1 if not.
    Verify {
        /// The backup file.
        file: PathBuf,
    },
}

/// `tessera restore`: a new one-node cluster from a backup.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long = "from")]
    from: PathBuf,
    /// The new node's data directory (must not hold a database).
    #[arg(long)]
    data_dir: PathBuf,
    /// The new node's id.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// The Raft address the node will advertise (as `serve --raft-advertise`).
    #[arg(long)]
    raft_advertise: String,
    /// The API address the node will advertise (as `serve --advertise`).
    #[arg(long)]
    advertise: String,
    /// Key-encryption key file (else `TESSERA_KEK`): seals the new signing
    /// key; the node must be started with the same KEK.
    #[arg(long)]
    kek_file: Option<PathBuf>,
}

/// `tessera cluster backup --out FILE`.
pub async fn backup_to(conn: &AdminConn, out: &Path) -> anyhow::Result<()> {
    let mut client = conn.admin().await?;
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let header = match stream.next().await {
        Some(Ok(pb::BackupChunk {
            part: Some(pb::backup_chunk::Part::Header(h)),
        })) => BackupHeader {
            cluster_id: h.cluster_id,
            revision: h.revision,
            node_id: h.node_id,
            created_at: h.created_at,
            length: h.length,
            sha256: h.sha256,
            revocations: h.revocations,
            keys: h.keys,
        },
        Some(Err(s)) => return Err(status_err(s)),
        _ => bail!("the node did not start the backup with a header"),
    };
    // Written beside the target, fsynced, then renamed: a backup file that
    // exists is whole.
    let tmp = out.with_extension("partial");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(backup::header_line(&header)?.as_bytes())?;
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk.map_err(status_err)?.part {
            Some(pb::backup_chunk::Part::Data(d)) => {
                written += d.len() as u64;
                if written > header.length {
                    bail!(
                        "the node sent more than the {} bytes it announced",
                        header.length
                    );
                }
                file.write_all(&d)?;
            }
            _ => bail!("unexpected message in the backup stream"),
        }
    }
    if written != header.length {
        bail!(
            "the stream ended after {written} of {} bytes",
            header.length
        );
    }
    file.sync_all()?;
    drop(file);
    // The checksum is checked on what reached the disk.
    let verified = tokio::task::spawn_blocking({
        let tmp = tmp.clone();
        move || backup::verify_file(&tmp)
    })
    .await??;
    std::fs::rename(&tmp, out)?;
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    println!(
        "backup {}: cluster {} at revision {} from node {}, {} revocation entries, {} keys, {} bytes, sha256 {}",
        out.display(),
        verified.cluster_id,
        verified.revision,
        verified.node_id,
        verified.revocations,
        verified.keys,
        verified.length,
        verified.sha256
    );
    Ok(())
}

/// Runs `tessera backup …`.
pub async fn run(cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Verify { file } => {
            let h = tokio::task::spawn_blocking(move || backup::verify_file(&file)).await??;
            println!(
                "ok: cluster {} at revision {} from node {}, {} revocation entries, {} keys, {} bytes, sha256 {}",
                h.cluster_id, h.revision, h.node_id, h.revocations, h.keys, h.length, h.sha256
            );
            Ok(())
        }
    }
}

/// Runs `tessera restore`.
pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let kek = match (&a.kek_file, std::env::var("TESSERA_KEK")) {
        (Some(p), _) => tessera::keys::Kek::from_file(p)?,
        (None, Ok(text)) => tessera::keys::Kek::from_text(&text)?,
        (None, Err(_)) => bail!("a key-encryption key is required: --kek-file or TESSERA_KEK"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let key = tessera::keys::new_ed25519_record(&kek, tessera::raft::KeyState::Active, now)?;
    let info = tessera::raft::NodeInfo {
        raft_addr: a.raft_advertise.clone(),
        api_addr: a.advertise.clone(),
        incarnation: 0,
    };
    let (from, dir, id) = (a.from.clone(), a.data_dir.clone(), a.node_id);
    let r = tokio::task::spawn_blocking(move || backup::restore(&from, &dir, id, info, key, now))
        .await??;
    println!(
        "restored cluster {} at revision {} into {} as cluster {} (node {}, revision {})",
        r.header.cluster_id,
        r.header.revision,
        a.data_dir.display(),
        r.cluster_id,
        a.node_id,
        r.revision
    );
    println!(
        "cut-off: the backup's {} signing key(s) were dropped and a new key signs from now on, so every token issued before this restore is inactive (revocations acknowledged after the backup are not in it); services get new tokens by renewing (TokenSource does by itself)",
        r.dropped_keys.len()
    );
    println!(
        "next: tessera serve --node-id {} --data-dir {} --raft-advertise {} --advertise {} (same KEK), then add nodes with `tessera cluster add`",
        a.node_id,
        a.data_dir.display(),
        a.raft_advertise,
        a.advertise
    );
    Ok(())
}
