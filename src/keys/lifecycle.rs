//! What the leader does next with the signing keys: activate a pending key
//! whose publish-ahead window has passed, remove retired keys whose tokens
//! have all expired, and start a scheduled rotation.
//!
//! Pure: it reads the replicated records and a time. The state machine
//! checks the same conditions again when it applies the command (see
//! `store::state::keys`), so a plan made on a stale view changes nothing.
//!
//! The timeline of one rotation (`P` = publish-ahead, the JWKS max-age;
//! `S` = the clock skew tolerated between nodes; `G` = retire grace =
//! longest token lifetime + leeway + clock skew):
//!
//! ```text
//! t0: new key pending (in JWKS)   t0+P+S: new key active, old retired   t0+P+S+G: old removed
//! ```

use crate::raft::{KeyRecord, KeyState};

/// Key-lifecycle timing, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Rotate the active key after it has signed this long (`None`: only
    /// on demand).
    pub rotation_period: Option<u64>,
    /// How long a new key is published before it may sign: the JWKS
    /// max-age plus the clock skew tolerated between nodes.
    pub publish_ahead: u64,
    /// How long a retired key stays published.
    pub retire_grace: u64,
}

/// The key commands due at a given time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// A pending key that may become active now.
    pub activate: Option<String>,
    /// Retired keys that may be removed now.
    pub remove: Vec<String>,
    /// A scheduled rotation is due: publish a new pending key now, so that
    /// it can take over when the active key's period ends.
    pub rotate: bool,
}

impl Plan {
    /// True if nothing is due.
    pub fn is_empty(&self) -> bool {
        self.activate.is_none() && self.remove.is_empty() && !self.rotate
    }
}

/// When the active key is due to be replaced (its activation plus the
/// rotation period; the new key is published `publish_ahead` before), if
/// scheduled rotation is on.
pub fn rotation_due(records: &[KeyRecord], timing: &Timing) -> Option<u64> {
    let since = records
        .iter()
        .filter(|r| r.state == KeyState::Active)
        .map(|r| r.times.activated_at.unwrap_or(r.created_at))
        .max()?;
    Some(since.saturating_add(timing.rotation_period?))
}

/// What is due at `now` for `records` under `timing`.
pub fn plan(records: &[KeyRecord], now: u64, timing: &Timing) -> Plan {
    let pending = records
        .iter()
        .filter(|r| r.state == KeyState::Pending)
        .min_by_key(|r| (r.created_at, &r.kid));
    let activate = pending
        .filter(|r| now >= r.times.activate_after)
        .map(|r| r.kid.clone());
    let remove = records
        .iter()
        .filter(|r| r.state == KeyState::Retired && r.times.remove_after.is_some_and(|t| now >= t))
        .map(|r| r.kid.clone())
        .collect();
    let newest_active = records
        .iter()
        .filter(|r| r.state == KeyState::Active)
        .map(|r| r.times.activated_at.unwrap_or(r.created_at))
        .max();
    let rotate = match (timing.rotation_period, newest_active, pending) {
        (Some(period), Some(since), None) => {
            now.saturating_add(timing.publish_ahead) >= since.saturating_add(period)
        }
        _ => false,
    };
    Plan {
        activate,
        remove,
        rotate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::KeyTimes;

    fn rec(kid: &str, state: KeyState, created: u64, times: KeyTimes) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "EdDSA".into(),
            public_key: vec![],
            sealed_private_key: vec![],
            kek_id: "k".into(),
            state,
            created_at: created,
            times,
        }
    }

    const TIMING: Timing = Timing {
        rotation_period: Some(1000),
        publish_ahead: 100,
        retire_grace: 50,
    };

    #[test]
    fn scheduled_rotation_publishes_ahead_of_the_period_end() {
        let active = rec(
            "a",
            KeyState::Active,
            0,
            KeyTimes {
                activated_at: Some(10),
                ..Default::default()
            },
        );
        assert!(plan(std::slice::from_ref(&active), 500, &TIMING).is_empty());
        // 10 + 1000 - 100 = 910: the new key must be published from then.
        assert!(!plan(std::slice::from_ref(&active), 909, &TIMING).rotate);
        assert!(plan(std::slice::from_ref(&active), 910, &TIMING).rotate);
        // Off: never.
        let off = Timing {
            rotation_period: None,
            ..TIMING
        };
        assert!(plan(std::slice::from_ref(&active), 1_000_000, &off).is_empty());
        // With a key already pending: no second rotation, only activation.
        let pending = rec(
            "b",
            KeyState::Pending,
            910,
            KeyTimes {
                activate_after: 1010,
                ..Default::default()
            },
        );
        let p = plan(&[active.clone(), pending.clone()], 1009, &TIMING);
        assert!(p.is_empty());
        let p = plan(&[active, pending], 1010, &TIMING);
        assert_eq!(p.activate.as_deref(), Some("b"));
        assert!(!p.rotate);
    }

    #[test]
    fn retired_keys_are_removed_after_their_grace() {
        let retired = |kid: &str, remove_after| {
            rec(
                kid,
                KeyState::Retired,
                0,
                KeyTimes {
                    remove_after,
                    ..Default::default()
                },
            )
        };
        let keys = [
            retired("r1", Some(100)),
            retired("r2", Some(200)),
            // Retired before removal times were recorded: kept.
            retired("r3", None),
        ];
        assert!(plan(&keys, 99, &TIMING).remove.is_empty());
        assert_eq!(plan(&keys, 100, &TIMING).remove, ["r1"]);
        assert_eq!(plan(&keys, 5000, &TIMING).remove, ["r1", "r2"]);
    }
}
