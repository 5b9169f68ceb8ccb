//! When a revocation entry may be purged (its `until`): late enough that no
//! token it can match still verifies anywhere, allowing for the leeway and
//! for clocks that disagree by up to `max_clock_skew`.
//!
//! Let `S` = `max_clock_skew` (bound on the difference between any two
//! clocks: nodes and verifiers), `W` = leeway, `L` = the longest token
//! lifetime, `T` = [`WRITE_TIMEOUT`]. A verifier with clock `Cv` accepts a
//! token while `Cv < exp + W`. The leader purges an entry with a `Purge`
//! stamped `P > until` by its own clock; from then on every verifier's clock
//! reads more than `P - S > until - S`. So purging is safe when
//! `until >= exp + W + S` for every token the entry can match:
//!
//! - a presented token's `jti` (and its descendants, whose `exp` is never
//!   later): `until = exp + W + S`;
//! - a subject or client cut-off matches tokens minted before their minting
//!   node applied the revocation. Reads are linearizable, so that is no
//!   later than the revocation's acknowledgement: within `T` of `now`, the
//!   clock of the node taking the request. The minting clock is at most `S`
//!   ahead of that one, so `exp <= now + T + S + L`, and
//!   `until = now + L + W + 2S + T`. A bare `jti` and a chain's ancestors
//!   were minted before `now`: the same horizon covers them.
//!
//! A revocation acknowledged later than `T` after it was requested (its
//! caller was told the outcome is unknown) may be purged up to that much
//! early; retrying it, which is idempotent, renews it. The state machine
//! only compares `until` with the `Purge` command's stamp: deterministic.

use super::{TokenSettings, WRITE_TIMEOUT};

/// Until when a revocation taken at `now` may match a token that still
/// verifies somewhere, under these settings (the derivation above).
pub fn horizon(now: u64, lifetime: u64, leeway: u64, skew: u64) -> u64 {
    now.saturating_add(lifetime)
        .saturating_add(leeway)
        .saturating_add(skew.saturating_mul(2))
        .saturating_add(WRITE_TIMEOUT.as_secs())
}

/// The `until`s of the revocations one request makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PurgeTimes {
    /// For a cut-off, a bare `jti` or a chain's ancestors.
    pub(super) horizon: u64,
    /// `leeway + max_clock_skew`, added to a presented token's `exp`.
    token_margin: u64,
}

impl PurgeTimes {
    /// The purge times for a request taken at `now` (this node's clock).
    /// Uses the larger settings of an earlier run while tokens minted under
    /// them may still verify ([`TokenSettings::bounds`]).
    pub(super) fn new(s: &TokenSettings, now: u64) -> Self {
        let (lifetime, leeway, skew) = s.bounds(now);
        Self {
            horizon: horizon(now, lifetime, leeway, skew),
            token_margin: leeway.saturating_add(skew),
        }
    }

    /// The `until` of a presented token's `jti`, from its `exp`.
    pub(super) fn for_token(&self, exp: u64) -> u64 {
        exp.saturating_add(self.token_margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_times_allow_for_leeway_skew_and_the_write_time() {
        let s = TokenSettings {
            max_lifetime: 3600,
            leeway: 30,
            max_clock_skew: 20,
            ..TokenSettings::default()
        };
        let p = PurgeTimes::new(&s, 1_000);
        assert_eq!(p.horizon, 1_000 + 3600 + 30 + 2 * 20 + 5);
        assert_eq!(p.for_token(2_000), 2_000 + 30 + 20);
        // A token minted by a clock S ahead, as late as the write may be
        // acknowledged, with the longest lifetime, is expired on every
        // clock (at least until - S) once the entry is purged.
        let latest_exp = 1_000 + 5 + 20 + 3600;
        assert!(p.horizon - 20 >= latest_exp + 30);
        // Extreme settings saturate instead of wrapping.
        let s = TokenSettings {
            max_clock_skew: u64::MAX,
            ..TokenSettings::default()
        };
        let p = PurgeTimes::new(&s, u64::MAX - 1);
        assert_eq!((p.horizon, p.for_token(u64::MAX)), (u64::MAX, u64::MAX));
    }
}
