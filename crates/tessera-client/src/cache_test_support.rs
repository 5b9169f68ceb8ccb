//! Test-only ways into a [`RevocationCache`]: one without a subscription,
//! fed message by message, and a clock-free way to make it stale. Used by
//! the cache's own tests and the verifier's.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::rules::{CacheState, Session};
use super::{Link, Owner, Progress, RevocationCache, Shared};
use tessera_proto as pb;
use tessera_token::clock::Clock;

impl RevocationCache {
    /// A cache without a subscription, fed by [`Self::apply_for_tests`].
    pub(crate) fn detached(clock: Arc<dyn Clock>) -> Self {
        let (progress, _) = watch::channel(Progress::default());
        let (shutdown, _) = watch::channel(false);
        Self {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared {
                    state: RwLock::new(CacheState::default()),
                    link: Mutex::new(Link::default()),
                    progress,
                    clock,
                }),
                shutdown,
                task: Mutex::new(None),
            }),
        }
    }

    /// Applies `events` as one stream would deliver them.
    pub(crate) fn apply_for_tests(&self, events: Vec<pb::WatchEvent>) {
        let mut session = Session::default();
        for ev in events {
            self.shared().apply(&mut session, ev).unwrap();
        }
    }

    /// Applies one message as a stream would, returning the protocol
    /// error that would drop the stream, in words.
    pub(crate) fn try_apply_for_tests(&self, ev: pb::WatchEvent) -> Result<(), String> {
        self.shared()
            .apply(&mut Session::default(), ev)
            .map_err(|e| e.to_string())
    }

    /// Pretends the last fresh message is `age` old.
    pub(crate) fn make_stale_for_tests(&self, age: Duration) {
        self.shared().link().last_fresh = Instant::now().checked_sub(age);
    }
}
