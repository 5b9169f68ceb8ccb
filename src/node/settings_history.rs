//! The token settings this node ran with before, kept in its data
//! directory (`token-settings.json`), so that lowering `max_lifetime`,
//! `leeway` or `max_clock_skew` does not shorten what earlier tokens still
//! need.
//!
//! A revocation's purge time (`api::purge`) and a retired key's grace are
//! computed from these settings when they are taken. Tokens minted under
//! larger values outlive a horizon computed from smaller ones: after a
//! restart that lowered `max_lifetime` from 3600 s to 600 s, a subject
//! cut-off taken at once was purged after ~12 minutes while that subject's
//! one-hour tokens, minted before the change, verified for another ~48.
//! So at start the node remembers the values of its previous run and keeps
//! using the larger of each for two of that run's full horizons (its
//! longest lifetime, leeway, twice the skew and the write timeout), counted
//! from this start. Raising a value needs nothing: the new one is larger.
//!
//! The record is this node's alone, but tokens are minted by every node: a
//! node not yet restarted keeps minting under the old values. Two horizons
//! cover a rolling change that reaches every node within one of them
//! (docs/OPERATIONS.md, "Changing token lifetimes"); a data directory
//! without a record (the first start of this release) remembers nothing,
//! so lower settings only after the upgrade.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::{PreviousSettings, TokenSettings};

/// The file, in the data directory.
pub const FILE: &str = "token-settings.json";

/// What the file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The values the last run started with.
    ran: Values,
    /// Larger values of earlier runs that still bound tokens, until when.
    previous: PreviousSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Values {
    max_lifetime: u64,
    leeway: u64,
    max_clock_skew: u64,
}

impl Values {
    fn of(t: &TokenSettings) -> Self {
        Self {
            max_lifetime: t.max_lifetime,
            leeway: t.leeway,
            max_clock_skew: t.max_clock_skew,
        }
    }

    /// Until when tokens minted (or accepted) under these values, up to
    /// `now`, may still verify somewhere, and revocations stamped under
    /// them may still be needed.
    fn horizon_from(&self, now: u64) -> u64 {
        crate::api::purge_horizon(now, self.max_lifetime, self.leeway, self.max_clock_skew)
    }
}

/// The previous values still in force at `now`, given the last record (if
/// any) and this run's settings. Pure: the rules, without the file.
fn merge(last: Option<Record>, current: Values, now: u64) -> PreviousSettings {
    let Some(last) = last else {
        return PreviousSettings::default();
    };
    let mut out = PreviousSettings::default();
    let mut take = |v: Values, until: u64| {
        if now >= until {
            return;
        }
        out.max_lifetime = out.max_lifetime.max(v.max_lifetime);
        out.leeway = out.leeway.max(v.leeway);
        out.max_clock_skew = out.max_clock_skew.max(v.max_clock_skew);
        out.until = out.until.max(until);
    };
    let p = last.previous;
    take(
        Values {
            max_lifetime: p.max_lifetime,
            leeway: p.leeway,
            max_clock_skew: p.max_clock_skew,
        },
        p.until,
    );
    // The last run may have minted until just now (when it stopped is not
    // recorded), and so may the other nodes until their own restarts: its
    // values hold for two of its horizons from this start, which covers a
    // rolling change that reaches every node within one of them.
    if last.ran != current {
        let horizon = last.ran.horizon_from(now).saturating_sub(now);
        take(last.ran, now.saturating_add(horizon.saturating_mul(2)));
    }
    // Nothing larger than now: nothing to remember.
    let larger = out.max_lifetime > current.max_lifetime
        || out.leeway > current.leeway
        || out.max_clock_skew > current.max_clock_skew;
    if larger {
        out
    } else {
        PreviousSettings::default()
    }
}

/// Reads the record in `dir`, records this run's settings (durably), and
/// returns `token` with the previous values still in force at `now`.
pub fn remember(dir: &Path, mut token: TokenSettings, now: u64) -> Result<TokenSettings, String> {
    let path = dir.join(FILE);
    let last = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice::<Record>(&bytes).map_err(|e| {
            format!(
                "{}: unreadable ({e}); it records the token settings of earlier runs (remove it only if no token minted before this start can still be valid)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let current = Values::of(&token);
    let previous = merge(last, current, now);
    if previous.until > 0 {
        tracing::info!(
            max_lifetime = previous.max_lifetime,
            leeway = previous.leeway,
            max_clock_skew = previous.max_clock_skew,
            until = previous.until,
            "token settings were larger before this start: purge times and key grace use the larger values until then"
        );
    }
    let record = Record {
        ran: current,
        previous,
    };
    if last != Some(record) {
        write_durably(dir, &path, &record).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    token.previous = previous;
    Ok(token)
}

/// Writes `record` to a temporary file, fsyncs it, renames it over `path`
/// and fsyncs the directory.
fn write_durably(dir: &Path, path: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;
    const T: u64 = crate::api::WRITE_TIMEOUT.as_secs();

    fn v(max_lifetime: u64, leeway: u64, max_clock_skew: u64) -> Values {
        Values {
            max_lifetime,
            leeway,
            max_clock_skew,
        }
    }

    #[test]
    fn a_first_start_or_unchanged_settings_remember_nothing() {
        assert_eq!(
            merge(None, v(3600, 30, 30), NOW),
            PreviousSettings::default()
        );
        let same = Record {
            ran: v(3600, 30, 30),
            previous: PreviousSettings::default(),
        };
        assert_eq!(
            merge(Some(same), v(3600, 30, 30), NOW),
            PreviousSettings::default()
        );
        // Raised: the new values are the larger ones.
        assert_eq!(
            merge(Some(same), v(7200, 60, 30), NOW),
            PreviousSettings::default()
        );
    }

    #[test]
    fn lowered_settings_keep_the_previous_ones_for_two_of_their_horizons() {
        let last = Record {
            ran: v(3600, 60, 30),
            previous: PreviousSettings::default(),
        };
        let p = merge(Some(last), v(600, 30, 30), NOW);
        assert_eq!((p.max_lifetime, p.leeway, p.max_clock_skew), (3600, 60, 30));
        assert_eq!(p.until, NOW + 2 * (3600 + 60 + 60 + T));
        // A second restart inside that horizon keeps them; after it, not.
        let again = Record {
            ran: v(600, 30, 30),
            previous: p,
        };
        assert_eq!(merge(Some(again), v(600, 30, 30), NOW + 100), p);
        assert_eq!(
            merge(Some(again), v(600, 30, 30), p.until),
            PreviousSettings::default()
        );
    }

    /// Found by the second read: with the memory counted from each node's
    /// own restart for one horizon, a node lowered first forgot the old
    /// values while a node restarted later had minted one-hour tokens
    /// until its restart; a cut-off the first node stamped then was purged
    /// before those tokens expired.
    #[test]
    fn a_rolling_lowering_purged_a_cutoff_before_the_last_nodes_tokens_expired() {
        let old = TokenSettings {
            max_lifetime: 3600,
            ..TokenSettings::default()
        };
        let last = Record {
            ran: Values::of(&old),
            previous: PreviousSettings::default(),
        };
        let t0 = NOW;
        let lowered = TokenSettings {
            max_lifetime: 600,
            previous: merge(Some(last), v(600, 30, 30), t0),
            ..old.clone()
        };
        // The last node is restarted just under one old horizon later, and
        // minted one-hour tokens until then.
        let last_iat = t0 + 3600 - 1;
        let verifies_until = last_iat + 3600 + old.leeway + old.max_clock_skew;
        // Whenever the first node stamps a cut-off from then on.
        for at in [last_iat, lowered.previous.until - 1, lowered.previous.until] {
            let (l, w, s) = lowered.bounds(at);
            let horizon = at + l + w + 2 * s + T;
            assert!(
                horizon >= verifies_until,
                "a cut-off stamped at t0+{} is purged at t0+{}, its tokens verify until t0+{}",
                at - t0,
                horizon - t0,
                verifies_until - t0
            );
        }
    }

    #[test]
    fn the_record_survives_a_restart_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = TokenSettings {
            max_lifetime: 3600,
            ..TokenSettings::default()
        };
        let t = remember(dir.path(), t, NOW).unwrap();
        assert_eq!(t.previous, PreviousSettings::default());
        let mut lower = t.clone();
        lower.max_lifetime = 600;
        let lower = remember(dir.path(), lower, NOW + 10).unwrap();
        assert_eq!(lower.previous.max_lifetime, 3600);
        assert_eq!(lower.bounds(NOW + 20).0, 3600);
        assert_eq!(lower.bounds(lower.previous.until).0, 600);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        let e = remember(dir.path(), lower, NOW + 30).unwrap_err();
        assert!(e.contains(FILE), "{e}");
    }
}
