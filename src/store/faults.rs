//! [`StoreFaults`]: a test seam that makes the store's writes fail as a
//! full disk would, so that the node's reaction to a storage error (stop,
//! never keep serving a frozen state) can be tested without filling one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The message of an injected write error.
pub const INJECTED_ENOSPC: &str = "No space left on device (injected)";

/// Switches for injected storage errors, shared by every clone. Cheap to
/// check (one relaxed atomic load per write); production code passes
/// `StoreFaults::default()`, which never fails.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults {
    fail_writes: Arc<AtomicBool>,
}

impl StoreFaults {
    /// A set of switches with every fault off.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `on`, every log append, vote, truncate, purge, flush, snapshot
    /// store and state-machine apply fails with an `io::Error` of kind
    /// `Other` whose message is [`INJECTED_ENOSPC`]; the chunks of a
    /// snapshot being received (written by openraft itself) go to
    /// `/dev/full` and fail with a real `ENOSPC`.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Whether writes currently fail.
    pub fn writes_fail(&self) -> bool {
        self.fail_writes.load(Ordering::Relaxed)
    }

    /// The injected error, if writes currently fail.
    pub(crate) fn check_write(&self) -> std::io::Result<()> {
        if self.writes_fail() {
            Err(std::io::Error::other(INJECTED_ENOSPC))
        } else {
            Ok(())
        }
    }
}
