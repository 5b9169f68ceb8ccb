//! Names that servers and clients must spell the same way: response
//! metadata keys and the RFC 8693 URNs of the token exchange.

/// Metadata key of an `UNAVAILABLE` status that names the leader's API
/// address (`host:port`): a client retries there.
pub const LEADER_METADATA: &str = "x-tessera-leader";

/// Metadata key of a `RESOURCE_EXHAUSTED` (or `UNAVAILABLE`) status: whole
/// milliseconds until a retry can succeed.
pub const RETRY_AFTER_METADATA: &str = "x-tessera-retry-after-ms";

/// Metadata key of a `WatchRevocations` status that ends a stream early
/// (slow subscriber, shutdown): the revision to resume from.
pub const RESUME_METADATA: &str = "x-tessera-resume-from";

/// RFC 8693 token type of an access token (what Tessera issues).
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// RFC 8693 token type of a JWT (accepted for subject and actor tokens).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// RFC 8693 grant type of a token exchange.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
