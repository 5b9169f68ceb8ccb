//! `tessera watch`: prints the revocation stream as JSON lines, one per
//! event: with `--coalesce` the node may send several events per message,
//! and each is still printed on its own line, as without it.

use clap::Args;
use tessera::pb::{self, revocation_service_client::RevocationServiceClient, watch_event::Kind};

use super::{status_err, ConnArgs};

/// Options of `tessera watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Start after this revision (0: a snapshot of all active revocations
    /// first).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Stop after this many messages (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    max_messages: u64,
    /// Leave out heartbeats.
    #[arg(long)]
    no_heartbeats: bool,
    /// Ask the node to coalesce events (several per message when this
    /// subscriber is behind); the output is the same, one line per event.
    /// `--max-messages` then counts lines.
    #[arg(long)]
    coalesce: bool,
}

fn revocation_json(r: &pb::Revocation) -> serde_json::Value {
    use pb::revocation::Target;
    match &r.target {
        Some(Target::Jti(j)) => serde_json::json!({ "jti": j, "until": r.until }),
        Some(Target::Subject(s)) => {
            serde_json::json!({ "subject": s, "cutoff": r.cutoff, "cutoff_revision": r.cutoff_revision, "until": r.until })
        }
        Some(Target::Client(c)) => {
            serde_json::json!({ "client": c, "cutoff": r.cutoff, "cutoff_revision": r.cutoff_revision, "until": r.until })
        }
        None => serde_json::json!({}),
    }
}

fn revoked_json(revision: u64, rs: &[pb::Revocation]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = rs.iter().map(revocation_json).collect();
    serde_json::json!({ "type": "revoked", "revision": revision, "revocations": list })
}

/// The JSON lines for one stream message: one per event, so a coalesced
/// batch prints exactly what one message per event would.
pub fn event_lines(e: &pb::WatchEvent) -> Vec<serde_json::Value> {
    match &e.kind {
        Some(Kind::RevokedBatch(b)) => b
            .events
            .iter()
            .map(|ev| revoked_json(ev.revision, &ev.revocations))
            .collect(),
        _ => vec![event_json(e)],
    }
}

/// The JSON line for one stream message (a batch as one object).
pub fn event_json(e: &pb::WatchEvent) -> serde_json::Value {
    let list = |rs: &pb::Revocations| -> Vec<serde_json::Value> {
        rs.revocations.iter().map(revocation_json).collect()
    };
    match &e.kind {
        Some(Kind::Revoked(rs)) => revoked_json(e.revision, &rs.revocations),
        Some(Kind::RevokedBatch(b)) => {
            let events: Vec<serde_json::Value> = b
                .events
                .iter()
                .map(|ev| revoked_json(ev.revision, &ev.revocations))
                .collect();
            serde_json::json!({ "type": "revoked_batch", "revision": e.revision, "events": events })
        }
        Some(Kind::Snapshot(rs)) => {
            serde_json::json!({ "type": "snapshot", "revision": e.revision, "revocations": list(rs) })
        }
        Some(Kind::SnapshotEnd(end)) => {
            serde_json::json!({ "type": "snapshot_end", "revision": e.revision, "count": end.count })
        }
        Some(Kind::Heartbeat(h)) => serde_json::json!({
            "type": "heartbeat", "revision": e.revision,
            "leader_known": h.leader_known, "leader_id": h.leader_id,
        }),
        None => serde_json::json!({ "type": "unknown", "revision": e.revision }),
    }
}

/// Runs `tessera watch`.
pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut client = RevocationServiceClient::new(args.conn.channel().await?);
    let mut stream = client
        .watch_revocations(pb::WatchRequest {
            from_revision: args.from,
            coalesce: args.coalesce,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut seen = 0u64;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match msg {
            Ok(Some(e)) => {
                if matches!(e.kind, Some(Kind::Heartbeat(_))) && args.no_heartbeats {
                    seen += 1;
                } else {
                    for line in event_lines(&e) {
                        println!("{line}");
                        seen += 1;
                        if args.max_messages > 0 && seen >= args.max_messages {
                            return Ok(());
                        }
                    }
                }
                if args.max_messages > 0 && seen >= args.max_messages {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => {
                let resume = s
                    .metadata()
                    .get(tessera::api::RESUME_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if let Some(r) = resume {
                    eprintln!("stream ended: {}; resume with --from {r}", s.message());
                }
                return Err(status_err(s));
            }
        }
    }
}
