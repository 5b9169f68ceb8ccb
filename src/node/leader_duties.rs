//! What a leader does in the background, besides Raft: making sure a new
//! cluster gets its first signing key and initial policy, and purging
//! revocation entries no token can match any more.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Config, NodeError, Raft};
use crate::keys::{self, Kek, KekRing};
use crate::raft::{Command, KeyState, Op, ReadIndex};
use crate::store::StateView;

/// Whenever this node becomes leader: once it has applied everything
/// committed before its term, it makes sure the cluster has a signing key
/// and (if it was given one) the initial policy. Idempotent: a cluster that
/// has them gets nothing.
pub(super) async fn leader_duties(
    raft: Raft,
    state: StateView,
    config: Config,
    keks: Arc<KekRing>,
    reads: ReadIndex,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut done_term = None;
    loop {
        // A leader restored after a crash may have applied less than it
        // had (its commit index is saved lazily), and openraft's own read
        // index can be below that: until it has applied its floor
        // (`crate::raft::read_index`), "no key" or "no policy" may be false.
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let caught_up = reads.leader_floor(&m).is_some_and(|f| applied >= f);
            (
                caught_up && m.current_leader == Some(config.node_id),
                m.current_term,
            )
        };
        if leading && done_term != Some(term) {
            match raft.ensure_linearizable().await {
                Ok(_) => match bootstrap(&config, &raft, &state, keks.current()).await {
                    Ok(()) => done_term = Some(term),
                    Err(e) => tracing::warn!(error = %e, "bootstrap as leader failed; will retry"),
                },
                Err(e) => tracing::debug!(error = %e, "not confirmed as leader yet"),
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// On a new cluster: the first signing key and the initial policy.
pub(super) async fn bootstrap(
    config: &Config,
    raft: &Raft,
    state: &StateView,
    kek: &Kek,
) -> Result<(), NodeError> {
    let now = config.clock.now();
    if state.keys().is_empty() {
        let key = keys::new_ed25519_record(kek, KeyState::Active, now)?;
        tracing::info!(kid = %key.kid, kek_id = %kek.id(), "bootstrap: first signing key");
        write(
            raft,
            Command {
                at: now,
                op: Op::AddKey { key },
            },
        )
        .await?;
    }
    if state.policy().is_none() {
        match &config.initial_policy {
            Some(text) => {
                crate::policy::PolicyEngine::validate(text)?;
                write(
                    raft,
                    Command {
                        at: now,
                        op: Op::PutPolicy { text: text.clone() },
                    },
                )
                .await?;
                tracing::info!("bootstrap: initial policy installed");
            }
            None => tracing::warn!("no policy installed: every request will be denied"),
        }
    }
    Ok(())
}

async fn write(raft: &Raft, cmd: Command) -> Result<u64, NodeError> {
    raft.client_write(cmd)
        .await
        .map(|r| r.data.revision)
        .map_err(|e| NodeError::Raft(e.to_string()))
}

/// Purges revocation entries no token can match any more, so the set stays
/// bounded by token lifetimes. Only the leader proposes; the command carries
/// the leader's time so every replica drops the same entries.
pub(super) async fn purge_loop(
    raft: Raft,
    state: StateView,
    config: Config,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let is_leader = raft.metrics().borrow().current_leader == Some(config.node_id);
        if !is_leader || state.revocation_count() == 0 {
            continue;
        }
        let at = config.clock.now();
        match raft.client_write(Command { at, op: Op::Purge }).await {
            Ok(r) => {
                if r.data.changed > 0 {
                    tracing::info!(
                        removed = r.data.changed,
                        revision = r.data.revision,
                        "purged expired revocations"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}
