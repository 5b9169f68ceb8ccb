//! Applying the signing-key lifecycle commands: `pending → active →
//! retired → removed`, and KEK re-sealing.
//!
//! Every rule is checked here, at apply time, against the command's own
//! time and the replicated ring, not where the command was proposed: a
//! stale, repeated or raced command changes nothing (it answers
//! `changed = 0`) instead of adding a second key, activating a key before
//! its publish-ahead window passed, or dropping a key whose tokens may
//! still be live. So correctness does not depend on who proposed what.

use std::collections::BTreeSet;

use super::State;
use crate::raft::{KeyState, Op};

/// Applies a key command at log `index` with leader time `at`; returns how
/// many keys changed. Other commands change nothing.
pub(super) fn apply(state: &mut State, index: u64, at: u64, op: &Op) -> u64 {
    let changed = match op {
        Op::AddPendingKey {
            key,
            expected_version,
        } => {
            let stale = state.keys_version != *expected_version;
            let pending = state.keys.values().any(|k| k.state == KeyState::Pending);
            if stale
                || pending
                || key.state != KeyState::Pending
                || state.keys.contains_key(&key.kid)
            {
                return 0;
            }
            state.keys.insert(key.kid.clone(), key.clone());
            1
        }
        Op::ActivateKey {
            kid,
            retire_grace,
            early,
        } => {
            let ready = state.keys.get(kid).is_some_and(|k| {
                k.state == KeyState::Pending && (*early || at >= k.times.activate_after)
            });
            if !ready {
                return 0;
            }
            let mut n = 0;
            for k in state.keys.values_mut() {
                if k.state == KeyState::Active {
                    k.state = KeyState::Retired;
                    k.times.retired_at = Some(at);
                    k.times.remove_after = Some(at.saturating_add(*retire_grace));
                    n += 1;
                }
            }
            if let Some(k) = state.keys.get_mut(kid) {
                k.state = KeyState::Active;
                k.times.activated_at = Some(at);
                n += 1;
            }
            n
        }
        Op::RemoveKey { kid } => {
            let due = state.keys.get(kid).is_some_and(|k| {
                k.state == KeyState::Retired && k.times.remove_after.is_some_and(|r| at >= r)
            });
            if !due {
                return 0;
            }
            state.keys.remove(kid);
            1
        }
        Op::ResealKeys {
            keys,
            expected_version,
        } => {
            let named: BTreeSet<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
            let held: BTreeSet<&str> = state.keys.keys().map(String::as_str).collect();
            if state.keys_version != *expected_version || named != held || named.len() != keys.len()
            {
                return 0;
            }
            for r in keys {
                if let Some(k) = state.keys.get_mut(&r.kid) {
                    k.sealed_private_key = r.sealed_private_key.clone();
                    k.kek_id = r.kek_id.clone();
                }
            }
            keys.len() as u64
        }
        _ => 0,
    };
    if changed > 0 {
        state.keys_version = index;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{KeyRecord, KeyTimes, ResealedKey};

    fn key(kid: &str, state: KeyState, activate_after: u64) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "EdDSA".into(),
            public_key: vec![1; 32],
            sealed_private_key: vec![2; 60],
            kek_id: "kek1".into(),
            state,
            created_at: 10,
            times: KeyTimes {
                activate_after,
                ..Default::default()
            },
        }
    }

    fn run(s: &mut State, index: u64, at: u64, op: Op) -> u64 {
        apply(s, index, at, &op)
    }

    fn states(s: &State) -> Vec<(String, KeyState)> {
        s.keys.iter().map(|(k, r)| (k.clone(), r.state)).collect()
    }

    /// A ring with one active key "a" at version 1.
    fn ring() -> State {
        let mut s = State::default();
        s.keys.insert("a".into(), key("a", KeyState::Active, 0));
        s.keys_version = 1;
        s
    }

    #[test]
    fn one_pending_key_per_rotation_whatever_the_races() {
        let mut s = ring();
        let add = |kid: &str, v| Op::AddPendingKey {
            key: key(kid, KeyState::Pending, 700),
            expected_version: v,
        };
        // A stale version (decided on an older ring) adds nothing.
        assert_eq!(run(&mut s, 2, 100, add("b", 0)), 0);
        assert_eq!(run(&mut s, 3, 100, add("b", 1)), 1);
        assert_eq!(s.keys_version, 3);
        // A concurrent rotation decided on the same ring: refused.
        assert_eq!(run(&mut s, 4, 100, add("c", 1)), 0);
        // Even on the new version, while a key is pending: refused.
        assert_eq!(run(&mut s, 5, 100, add("c", 3)), 0);
        // A key proposed in another state than pending: refused.
        let active = Op::AddPendingKey {
            key: key("d", KeyState::Active, 0),
            expected_version: 3,
        };
        assert_eq!(run(&mut s, 6, 100, active), 0);
        assert_eq!(
            states(&s),
            [
                ("a".into(), KeyState::Active),
                ("b".into(), KeyState::Pending)
            ]
        );
        assert_eq!(s.keys_version, 3);
    }

    #[test]
    fn activation_waits_for_publish_ahead_and_retires_the_old_key() {
        let mut s = ring();
        let add = Op::AddPendingKey {
            key: key("b", KeyState::Pending, 700),
            expected_version: 1,
        };
        assert_eq!(run(&mut s, 2, 100, add), 1);
        let activate = |kid: &str| Op::ActivateKey {
            kid: kid.into(),
            retire_grace: 4000,
            early: false,
        };
        // Before activate_after: nothing.
        assert_eq!(run(&mut s, 3, 699, activate("b")), 0);
        // Unknown or active keys: nothing.
        assert_eq!(run(&mut s, 4, 800, activate("zz")), 0);
        assert_eq!(run(&mut s, 5, 800, activate("a")), 0);
        assert_eq!(run(&mut s, 6, 700, activate("b")), 2);
        assert_eq!(s.keys_version, 6);
        assert_eq!(
            states(&s),
            [
                ("a".into(), KeyState::Retired),
                ("b".into(), KeyState::Active)
            ]
        );
        assert_eq!(s.keys["a"].times.retired_at, Some(700));
        assert_eq!(s.keys["a"].times.remove_after, Some(4700));
        assert_eq!(s.keys["b"].times.activated_at, Some(700));
        // A repeat changes nothing.
        assert_eq!(run(&mut s, 7, 900, activate("b")), 0);
        let active = s.keys.values().filter(|k| k.state == KeyState::Active);
        assert_eq!(active.count(), 1, "one active key at a time");
        // An emergency rotation activates before the window passed.
        let add = Op::AddPendingKey {
            key: key("c", KeyState::Pending, 5000),
            expected_version: 6,
        };
        assert_eq!(run(&mut s, 8, 900, add), 1);
        let early = Op::ActivateKey {
            kid: "c".into(),
            retire_grace: 10,
            early: true,
        };
        assert_eq!(run(&mut s, 9, 901, early), 2);
        assert_eq!(s.keys["c"].state, KeyState::Active);
        assert_eq!(s.keys["b"].times.remove_after, Some(911));
    }

    #[test]
    fn removal_only_after_every_token_expired() {
        let mut s = ring();
        run(
            &mut s,
            2,
            100,
            Op::AddPendingKey {
                key: key("b", KeyState::Pending, 100),
                expected_version: 1,
            },
        );
        run(
            &mut s,
            3,
            100,
            Op::ActivateKey {
                kid: "b".into(),
                retire_grace: 50,
                early: false,
            },
        );
        let remove = |kid: &str| Op::RemoveKey { kid: kid.into() };
        assert_eq!(run(&mut s, 4, 149, remove("a")), 0, "too early");
        assert_eq!(run(&mut s, 5, 500, remove("b")), 0, "the active key stays");
        assert_eq!(run(&mut s, 6, 150, remove("a")), 1);
        assert_eq!(s.keys_version, 6);
        assert_eq!(run(&mut s, 7, 500, remove("a")), 0, "a repeat is a no-op");
        assert_eq!(states(&s), [("b".into(), KeyState::Active)]);
    }

    #[test]
    fn reseal_replaces_every_key_or_none() {
        let mut s = ring();
        s.keys.insert("r".into(), key("r", KeyState::Retired, 0));
        let sealed = |kid: &str| ResealedKey {
            kid: kid.into(),
            sealed_private_key: vec![9; 60],
            kek_id: "kek2".into(),
        };
        let reseal = |kids: &[&str], v| Op::ResealKeys {
            keys: kids.iter().map(|k| sealed(k)).collect(),
            expected_version: v,
        };
        // Missing a key, an unknown key, a duplicate, or a stale version: nothing.
        assert_eq!(run(&mut s, 2, 0, reseal(&["a"], 1)), 0);
        assert_eq!(run(&mut s, 3, 0, reseal(&["a", "r", "x"], 1)), 0);
        assert_eq!(run(&mut s, 4, 0, reseal(&["a", "r", "r"], 1)), 0);
        assert_eq!(run(&mut s, 5, 0, reseal(&["a", "r"], 0)), 0);
        assert!(s.keys.values().all(|k| k.kek_id == "kek1"));
        assert_eq!(run(&mut s, 6, 0, reseal(&["a", "r"], 1)), 2);
        assert!(s.keys.values().all(|k| k.kek_id == "kek2"));
        assert_eq!(s.keys["a"].sealed_private_key, vec![9; 60]);
        assert_eq!(s.keys["a"].state, KeyState::Active);
        assert_eq!(s.keys_version, 6);
    }

    #[test]
    fn records_written_before_lifecycle_times_still_read() {
        let mut r = key("old", KeyState::Active, 0);
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("times");
        let back: KeyRecord = serde_json::from_value(v).unwrap();
        r.times = KeyTimes::default();
        assert_eq!(back, r);
    }
}
