//! The subject/client cut-off rule, shared by the cluster (introspection,
//! exchange) and the client library's verifier so both decide alike.
//!
//! A cut-off records the revision (Raft log index) at which it was applied,
//! and a token records in `tsr_rev` the revision its issuing node had
//! applied when it minted it. Every node agrees on what a revision means, so
//! the comparison does not depend on the clocks of the node that took the
//! revocation and the node that minted the token (an `iat` comparison does:
//! a minting node whose clock runs ahead stamps an `iat` after the cut-off
//! time and escapes it).
//!
//! - Token with `tsr_rev = r`, cut-off at revision `R > 0`: revoked iff
//!   `r < R` (the minting node had not yet applied the revocation). A token
//!   minted by a node that had applied it (`r >= R`) stays valid.
//! - Token without `tsr_rev` (minted before the claim existed), or a cut-off
//!   without a revision (held before cut-offs recorded one): the old rule,
//!   revoked iff `iat <= cutoff time`. Such tokens are gone once the longest
//!   token lifetime has passed since the upgrade.

/// Whether a subject or client cut-off made at `cutoff_time` (unix seconds)
/// and applied at `cutoff_revision` (0 if unknown) revokes a token issued
/// at `iat` by a node that had applied revision `rev` (`None` if the token
/// does not say).
pub fn cutoff_revokes(cutoff_time: u64, cutoff_revision: u64, iat: u64, rev: Option<u64>) -> bool {
    match rev {
        Some(rev) if cutoff_revision > 0 => rev < cutoff_revision,
        _ => iat <= cutoff_time,
    }
}

#[cfg(test)]
mod tests {
    use super::cutoff_revokes;

    #[test]
    fn a_token_below_the_cutoff_revision_is_revoked_at_or_above_is_not() {
        // Clocks do not matter when both sides carry a revision: an iat far
        // after the cut-off time (a minting clock ahead) is still revoked,
        // an iat before it (a clock behind) is still valid.
        assert!(cutoff_revokes(100, 50, 10_000, Some(49)));
        assert!(cutoff_revokes(100, 50, 100, Some(0)));
        assert!(!cutoff_revokes(100, 50, 50, Some(50)));
        assert!(!cutoff_revokes(100, 50, 1, Some(51)));
    }

    #[test]
    fn a_token_without_a_revision_falls_back_to_iat() {
        assert!(cutoff_revokes(100, 50, 100, None));
        assert!(cutoff_revokes(100, 50, 99, None));
        assert!(!cutoff_revokes(100, 50, 101, None));
    }

    #[test]
    fn a_cutoff_without_a_revision_falls_back_to_iat() {
        assert!(cutoff_revokes(100, 0, 100, Some(1_000)));
        assert!(!cutoff_revokes(100, 0, 101, Some(1)));
    }
}
