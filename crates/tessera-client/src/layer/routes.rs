//! [`Routes`]: which requests need which scopes. A request's path (for gRPC
//! `/package.Service/Method`) is looked up exactly, then by the longest
//! matching prefix, then in the fallback; a path that matches nothing is
//! refused, so that a method added to a server is closed until someone
//! writes its rule.

use std::collections::HashMap;

/// What a route requires of the token that calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// No token at all (health checks, reflection): the request passes
    /// untouched and carries no claims.
    Public,
    /// A valid token (issuer, audience, binding, revocations: the
    /// [`Verifier`](crate::Verifier)'s checks) holding every one of these
    /// scopes; an empty list asks for a valid token only.
    Scopes(Vec<String>),
}

impl Requirement {
    /// A valid token with every scope in `scopes`.
    pub fn scopes<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self::Scopes(scopes.into_iter().map(Into::into).collect())
    }
}

/// The route → requirement table of an [`AuthLayer`](super::AuthLayer).
///
/// ```
/// use tessera_client::layer::{Requirement, Routes};
///
/// let routes = Routes::new()
///     .public_prefix("/grpc.health.v1.Health/")
///     .exact("/orders.v1.Orders/Get", ["orders:read"])
///     .exact("/orders.v1.Orders/Put", ["orders:write"])
///     .prefix("/orders.v1.Admin/", ["orders:admin"]);
/// assert_eq!(
///     routes.lookup("/orders.v1.Orders/Get"),
///     Some(&Requirement::scopes(["orders:read"]))
/// );
/// assert_eq!(routes.lookup("/orders.v1.Orders/Delete"), None); // refused
/// ```
#[derive(Debug, Clone, Default)]
pub struct Routes {
    exact: HashMap<String, Requirement>,
    /// Longest first, so that the first match is the most specific.
    prefixes: Vec<(String, Requirement)>,
    fallback: Option<Requirement>,
}

impl Routes {
    /// An empty table: every request is refused until routes are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// `path` needs a valid token with `scopes`.
    pub fn exact<S: Into<String>>(
        mut self,
        path: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.exact.insert(path.into(), Requirement::scopes(scopes));
        self
    }

    /// Every path starting with `prefix` (e.g. `/orders.v1.Orders/`, a whole
    /// gRPC service) needs a valid token with `scopes`.
    pub fn prefix<S: Into<String>>(
        self,
        prefix: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.with_prefix(prefix.into(), Requirement::scopes(scopes))
    }

    /// Every path starting with `prefix` passes without a token.
    pub fn public_prefix(self, prefix: impl Into<String>) -> Self {
        self.with_prefix(prefix.into(), Requirement::Public)
    }

    /// Paths that match no other rule need a valid token with `scopes`
    /// (without a fallback they are refused).
    pub fn fallback<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.fallback = Some(Requirement::scopes(scopes));
        self
    }

    fn with_prefix(mut self, prefix: String, requirement: Requirement) -> Self {
        self.prefixes.retain(|(p, _)| *p != prefix);
        self.prefixes.push((prefix, requirement));
        self.prefixes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        self
    }

    /// The requirement of `path`; `None`: no rule, refuse.
    pub fn lookup(&self, path: &str) -> Option<&Requirement> {
        self.exact
            .get(path)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| path.starts_with(p.as_str()))
                    .map(|(_, r)| r)
            })
            .or(self.fallback.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_longest_prefix_then_fallback() {
        let r = Routes::new()
            .prefix("/a.S/", ["s"])
            .prefix("/a.S/Admin", ["admin"])
            .exact("/a.S/Get", ["read"])
            .public_prefix("/grpc.health.v1.Health/");
        assert_eq!(r.lookup("/a.S/Get"), Some(&Requirement::scopes(["read"])));
        assert_eq!(
            r.lookup("/a.S/AdminReset"),
            Some(&Requirement::scopes(["admin"]))
        );
        assert_eq!(r.lookup("/a.S/Put"), Some(&Requirement::scopes(["s"])));
        assert_eq!(
            r.lookup("/grpc.health.v1.Health/Check"),
            Some(&Requirement::Public)
        );
        assert_eq!(r.lookup("/b.T/Get"), None);
        let r = r.fallback(Vec::<String>::new());
        assert_eq!(r.lookup("/b.T/Get"), Some(&Requirement::Scopes(vec![])));
    }

    #[test]
    fn a_prefix_given_twice_keeps_the_last_rule() {
        let r = Routes::new().prefix("/a/", ["x"]).public_prefix("/a/");
        assert_eq!(r.lookup("/a/b"), Some(&Requirement::Public));
    }
}
