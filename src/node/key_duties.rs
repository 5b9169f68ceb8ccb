//! The leader's scheduled signing-key work, on a timer: activation of a
//! pending key once its publish-ahead window has passed, removal of
//! retired keys once every token they signed has expired, and scheduled
//! rotation. Every node runs the loop; only the leader acts (see
//! [`crate::api::Shared::run_key_duties`]), and every command is guarded
//! at apply time, so an old leader's late command changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::Shared;

/// Runs until `stop` is set, checking every `interval`.
pub(super) async fn run(shared: Arc<Shared>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        // Bounded: a write waits at most api::WRITE_TIMEOUT, a barrier its
        // own budget; a failed round is simply tried again next tick.
        if let Err(e) = shared.run_key_duties().await {
            tracing::warn!(error = %e, "signing-key duties failed; will retry");
        }
    }
}
