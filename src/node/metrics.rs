//! What the node feeds the metrics registry: values read at scrape time
//! (Raft's state from openraft's metrics watch, revocations, watch
//! subscribers, the signing key's age, the node certificate's expiry, the
//! rate-limit table's size), and a task that counts snapshot and log-purge
//! advances as openraft reports them (a scrape would miss those between
//! two scrapes).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::Raft;
use crate::api::limits::RateLimiter;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::raft::{KeyState, NodeId, NodeInfo};
use crate::store::StateView;

/// What Raft says about this node now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RaftSample {
    term: u64,
    leader: Option<u64>,
    is_leader: bool,
    last_log_index: u64,
    /// Exact on the leader (what a quorum holds); the applied index
    /// elsewhere (a lower bound).
    commit_index: u64,
    applied_index: u64,
    snapshot_index: Option<u64>,
    purged_index: Option<u64>,
    /// On the leader: each other member's lag behind its log, in entries.
    lag: Vec<(u64, u64)>,
}

/// A sample of openraft's metrics. Cheap: no allocation beyond the
/// followers' lag.
fn sample(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> RaftSample {
    let last = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let is_leader = m.current_leader == Some(m.id);
    let replication = m.replication.as_ref().filter(|_| is_leader);
    let matched = |id: &NodeId| -> u64 {
        if *id == m.id {
            return last;
        }
        replication
            .and_then(|r| r.get(id))
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.index)
    };
    // What a quorum of voters holds: exact on the leader; elsewhere the
    // applied index is the best lower bound (as in ClusterStatus).
    let commit_index = match replication {
        Some(_) => {
            let mut held: Vec<u64> = m
                .membership_config
                .membership()
                .voter_ids()
                .map(|id| matched(&id))
                .collect();
            held.sort_unstable();
            held.get(held.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(0)
        }
        None => applied,
    };
    let lag = replication
        .map(|r| {
            r.keys()
                .filter(|id| **id != m.id)
                .map(|id| (*id, last.saturating_sub(matched(id))))
                .collect()
        })
        .unwrap_or_default();
    RaftSample {
        term: m.current_term,
        leader: m.current_leader,
        is_leader,
        last_log_index: last,
        commit_index,
        applied_index: applied,
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        lag,
    }
}

/// Counts the snapshot and log-purge advances openraft reports, until
/// `stop`.
pub(super) async fn follow_raft(raft: Raft, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let mut rx = raft.metrics();
    loop {
        let (snapshot, purged) = {
            let m = rx.borrow_and_update();
            (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index))
        };
        metrics.observe_raft_log(snapshot, purged);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The `notAfter` of the first certificate in a PEM file, unix seconds.
pub(super) fn cert_not_after(path: &std::path::Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Registers Raft's state, read at scrape time.
fn register_raft(metrics: &Metrics, raft: &Raft) {
    type Field = fn(&RaftSample) -> Option<u64>;
    let gauges: [(&'static str, &'static str, Field); 8] = [
        ("raft_term", "Current Raft term", |s| Some(s.term)),
        (
            "raft_leader_id",
            "Id of the leader this node knows (0: none)",
            |s| Some(s.leader.unwrap_or(0)),
        ),
        ("raft_is_leader", "1 if this node is the leader", |s| {
            Some(u64::from(s.is_leader))
        }),
        (
            "raft_last_log_index",
            "Last index in this node's log",
            |s| Some(s.last_log_index),
        ),
        (
            "raft_commit_index",
            "Commit index: exact on the leader, the applied index elsewhere",
            |s| Some(s.commit_index),
        ),
        (
            "raft_applied_index",
            "Last log index applied to the state machine",
            |s| Some(s.applied_index),
        ),
        (
            "raft_snapshot_index",
            "Last log index in this node's snapshot",
            |s| s.snapshot_index,
        ),
        (
            "raft_purged_index",
            "Last log index purged from this node's log",
            |s| s.purged_index,
        ),
    ];
    for (name, help, field) in gauges {
        let raft = raft.clone();
        metrics.gauge_fn(name, help, move || {
            let s = sample(&raft.metrics().borrow());
            field(&s)
                .map(|v| vec![(vec![], v as f64)])
                .unwrap_or_default()
        });
    }
    let raft = raft.clone();
    metrics.gauge_fn(
        "raft_replication_lag_entries",
        "On the leader: entries each other member is behind the leader's log",
        move || {
            sample(&raft.metrics().borrow())
                .lag
                .into_iter()
                .map(|(id, lag)| (vec![("follower", id.to_string())], lag as f64))
                .collect()
        },
    );
}

/// Registers the values read at scrape time.
/// The read-index batcher's counts: rounds run and the reads they served
/// (their ratio is the batch size; reads inside the leader's lease run no
/// round and are counted in neither).
pub(super) fn register_reads(metrics: &Metrics, reads: crate::raft::ReadIndex) {
    let r = reads.clone();
    metrics.counter_fn(
        "read_index_rounds",
        "Read-index rounds this node ran (leader: quorum confirmations; follower: requests to the leader)",
        move || vec![(vec![], r.rounds().0 as f64)],
    );
    let r = reads.clone();
    metrics.counter_fn(
        "read_index_reads",
        "Linearizable reads served by read-index rounds (not by the leader's lease)",
        move || vec![(vec![], r.rounds().1 as f64)],
    );
    metrics.counter_fn(
        "read_index_streams_opened",
        "Read-index streams this node opened to a leader (a follower keeps one per leader; more mean failures or idle closes)",
        move || vec![(vec![], reads.streams_opened() as f64)],
    );
}

/// The audit writer's losses: a full audit disk cannot write the
/// `audit_dropped` record operators would alert on, so the counts are here.
pub(super) fn register_audit(metrics: &Metrics, counts: crate::api::AuditCounts) {
    let c = counts.clone();
    metrics.counter_fn(
        "audit_records_dropped",
        "Audit records lost: the writer's queue was full, or their batch's write or sync failed",
        move || vec![(vec![], c.dropped() as f64)],
    );
    metrics.counter_fn(
        "audit_write_errors",
        "Failed writes or syncs of the audit log (the first one stops the node)",
        move || vec![(vec![], counts.write_errors() as f64)],
    );
}

pub(super) fn register(
    metrics: &Metrics,
    raft: &Raft,
    state: &StateView,
    clock: Arc<dyn Clock>,
    cert: PathBuf,
    rate_limiter: Arc<RateLimiter>,
) {
    register_raft(metrics, raft);
    let one = |v: f64| vec![(vec![], v)];
    let st = state.clone();
    metrics.gauge_fn(
        "revocations_active",
        "Revocation entries held (jtis, subject and client cut-offs)",
        move || one(st.revocation_count() as f64),
    );
    let st = state.clone();
    metrics.counter_fn(
        "revocations_applied",
        "Revocation entries added or raised by commands this node applied",
        move || one(st.apply_counters().revoked() as f64),
    );
    let st = state.clone();
    metrics.counter_fn(
        "revocations_purged",
        "Expired revocation entries removed by purge commands this node applied",
        move || one(st.apply_counters().purged() as f64),
    );
    let st = state.clone();
    metrics.gauge_fn(
        "watch_subscribers",
        "Revocation watch streams following this node's live feed",
        move || one(st.watchers() as f64),
    );
    let st = state.clone();
    let active_key_created = move || {
        st.keys()
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .map(|k| k.created_at)
            .max()
    };
    let created = active_key_created.clone();
    metrics.gauge_fn(
        "signing_key_created_timestamp_seconds",
        "When the active signing key was created (unix seconds)",
        move || created().map(|t| one(t as f64)).unwrap_or_default(),
    );
    metrics.gauge_fn(
        "signing_key_age_seconds",
        "Age of the active signing key, by this node's clock",
        move || {
            active_key_created()
                .map(|t| one(clock.now().saturating_sub(t) as f64))
                .unwrap_or_default()
        },
    );
    metrics.gauge_fn(
        "certificate_expiry_timestamp_seconds",
        "notAfter of this node's certificate as on disk (unix seconds)",
        move || {
            cert_not_after(&cert)
                .map(|t| one(t as f64))
                .unwrap_or_default()
        },
    );
    metrics.gauge_fn(
        "rate_limit_tracked_callers",
        "Caller identities the rate limiter tracks now",
        move || one(rate_limiter.tracked() as f64),
    );
}
