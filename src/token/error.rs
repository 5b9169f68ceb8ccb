//! The token layer's one error type.
//!
//! Variants are precise so that callers (and tests) can match them exactly
//! and so that the API layer can map them to gRPC codes. Messages never
//! carry token contents: the only strings taken from a token are a sanitized,
//! length-bounded `alg` or `kid`, which callers need (an unknown `kid` means
//! "refresh the JWKS").

/// Why a token could not be signed, verified or exchanged.
///
/// Exhaustive on purpose (the enum lives in the `tessera-token` crate): the
/// server's status table must name every variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    // --- keys and signing ---
    /// The algorithm name is not one Tessera signs or verifies with.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A private or public key could not be parsed for its algorithm.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// The crypto backend failed to sign or to produce randomness.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),

    // --- verification: shape ---
    /// The token is longer than the configured maximum.
    #[error("token too large")]
    TooLarge,
    /// The token is not a well-formed compact JWS; the reason names the part.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header carries a key or a key reference (`jku`, `x5u`, `jwk`,
    /// `x5c`): keys are never taken from tokens.
    #[error("forbidden header parameter {0}")]
    ForbiddenHeader(&'static str),
    /// The header has a `crit` parameter; Tessera understands no extensions.
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// `typ` is missing or is not `at+jwt`.
    #[error("wrong token type (expected at+jwt)")]
    WrongType,
    /// No key with this `kid` is known; callers may refresh the JWKS.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// The header `alg` is not the algorithm of the key named by `kid`.
    #[error("algorithm does not match the key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,

    // --- verification: claims ---
    /// The claim set is not valid JSON of the expected types; names the problem.
    #[error("bad claims: {0}")]
    BadClaims(&'static str),
    /// `iss` is not the expected issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The expected audience is not in `aud`.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// The delegation chain (or actor nesting) is longer than allowed.
    #[error("delegation chain too long")]
    ChainTooLong,

    // --- exchange (RFC 8693) and issuance ---
    /// The subject token has no certificate binding; Tessera only issues
    /// bound tokens.
    #[error("subject token is not certificate-bound")]
    Unbound,
    /// The caller neither holds the subject token (binding) nor is one of
    /// its audiences.
    #[error("subject token is bound to another certificate and not addressed to the caller")]
    BindingMismatch,
    /// The actor token does not name the caller or is not bound to the
    /// caller's certificate.
    #[error("actor token does not identify the caller")]
    ActorNotCaller,
    /// The subject token's `may_act` does not list the caller.
    #[error("caller is not allowed to act for the subject (may_act)")]
    MayActViolated,
    /// No scope was requested.
    #[error("no scope requested")]
    NoScopeRequested,
    /// A requested scope is not valid scope syntax (RFC 6749 §3.3).
    #[error("invalid scope syntax")]
    InvalidScope,
    /// A requested scope is not in the subject token.
    #[error("requested scope exceeds the subject token's scopes")]
    ScopeWidening,
    /// Policy allows none of the requested scopes.
    #[error("no requested scope is allowed by policy")]
    NoScopeGranted,
    /// No audience was given.
    #[error("no audience requested")]
    NoAudience,
    /// An audience is empty.
    #[error("invalid audience")]
    InvalidAudience,
    /// The new token would be deeper than the maximum delegation depth.
    #[error("maximum delegation depth exceeded")]
    DepthExceeded,
    /// The subject token has expired.
    #[error("subject token expired")]
    SubjectExpired,
    /// The resulting lifetime is zero (requested 0, or limits of 0) or
    /// overflows.
    #[error("invalid token lifetime")]
    BadLifetime,
}
