//! What the node feeds the metrics registry: Raft's state as it changes
//! (a task on openraft's metrics watch), and values read at scrape time
//! (revocations, watch subscribers, the signing key's age, the node
//! certificate's expiry, rate-limit table size).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::Raft;
use crate::api::limits::RateLimiter;
use crate::clock::Clock;
use crate::metrics::{Metrics, RaftSample};
use crate::raft::{KeyState, NodeId, NodeInfo};
use crate::store::StateView;

/// A [`RaftSample`] of openraft's metrics. Cheap: no allocation beyond the
/// followers' lag.
pub(super) fn sample(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> RaftSample {
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

/// Feeds every change of Raft's metrics to the registry until `stop`.
pub(super) async fn follow_raft(raft: Raft, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let mut rx = raft.metrics();
    loop {
        let s = sample(&rx.borrow_and_update());
        metrics.observe_raft(&s);
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

/// Registers the values read at scrape time.
pub(super) fn register(
    metrics: &Metrics,
    state: &StateView,
    clock: Arc<dyn Clock>,
    cert: PathBuf,
    rate_limiter: Arc<RateLimiter>,
) {
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
        move || cert_not_after(&cert).map(|t| one(t as f64)).unwrap_or_default(),
    );
    metrics.gauge_fn(
        "rate_limit_tracked_callers",
        "Caller identities the rate limiter tracks now",
        move || one(rate_limiter.tracked() as f64),
    );
}
