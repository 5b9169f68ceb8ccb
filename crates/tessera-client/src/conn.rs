//! Channels to the cluster: one mutual-TLS endpoint per node, and a small
//! pool that sends a unary call to one node and fails over to the others
//! when a node is unreachable or not the leader.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::error::{is_failover, ClientError};
use crate::TlsFiles;

/// How long a TCP + TLS connection may take before the node counts as down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `host:port` or `https://host:port` as the URI tonic wants.
fn uri(addr: &str) -> String {
    if addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("https://{addr}")
    }
}

/// The address without its scheme, to compare a leader hint with the
/// configured endpoints.
fn bare(addr: &str) -> &str {
    addr.strip_prefix("https://").unwrap_or(addr)
}

/// Builds an endpoint for `addr` (`host:port` or `https://host:port`) that
/// presents the certificate in `files` and trusts only `files.ca`. The
/// server name checked in the node's certificate is `server_name`, or, when
/// `None`, the host of `addr` (a DNS name or an IP address, which the
/// certificate must carry as a SAN): never a fixed default.
pub fn endpoint(
    addr: &str,
    files: &TlsFiles,
    server_name: Option<&str>,
) -> Result<Endpoint, ClientError> {
    let uri = uri(addr);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    // Without a name, tonic checks the URI's host.
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    let connect_err = |source| ClientError::Connect {
        endpoint: uri.clone(),
        source,
    };
    let ep = Endpoint::from_shared(uri.clone())
        .map_err(connect_err)?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(ep)
}

/// Connects to `addr` over mutual TLS.
pub async fn connect(addr: &str, files: &TlsFiles) -> Result<Channel, ClientError> {
    let ep = endpoint(addr, files, None)?;
    ep.connect().await.map_err(|source| ClientError::Connect {
        endpoint: addr.to_string(),
        source,
    })
}

/// The leader's API address from an `UNAVAILABLE` status, if the node
/// named one.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(tessera_proto::LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

struct PoolNode {
    addr: String,
    endpoint: Endpoint,
    /// Created on first use: `connect_lazy` needs a runtime, and a lazy
    /// channel reconnects by itself after the node comes back.
    channel: OnceLock<Channel>,
}

impl PoolNode {
    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

/// Unary calls with fail-over across the cluster's nodes.
///
/// A call goes to the node that answered last (sticky, so that a healthy
/// node keeps serving), and on a fail-over code (see
/// [`is_failover`]) to the others in turn, each once; a leader hint in the
/// status is followed first. A refusal is returned at once: another node
/// would refuse too.
pub(crate) struct Pool {
    nodes: Vec<PoolNode>,
    tls: TlsFiles,
    server_name: Option<String>,
    request_timeout: Duration,
    preferred: AtomicUsize,
}

enum Target {
    Node(usize),
    Hint(String),
}

impl Pool {
    /// Endpoints for every address; reads the TLS files now, so that a bad
    /// file is reported at construction rather than at the first call.
    pub(crate) fn new(
        addrs: &[String],
        tls: &TlsFiles,
        server_name: Option<&str>,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let nodes = addrs
            .iter()
            .map(|addr| {
                Ok(PoolNode {
                    addr: addr.clone(),
                    endpoint: endpoint(addr, tls, server_name)?.timeout(request_timeout),
                    channel: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            nodes,
            tls: tls.clone(),
            server_name: server_name.map(str::to_string),
            request_timeout,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Runs `call` on one node after the other until one answers or
    /// refuses. At most one attempt per configured node plus one for a
    /// leader hint outside the list.
    pub(crate) async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.nodes.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut order: VecDeque<Target> = (0..n).map(|k| Target::Node((start + k) % n)).collect();
        let mut hint_followed = false;
        let mut last = None;
        while let Some(target) = order.pop_front() {
            let (addr, channel) = match &target {
                Target::Node(i) => (self.nodes[*i].addr.clone(), self.nodes[*i].channel()),
                Target::Hint(addr) => {
                    match endpoint(addr, &self.tls, self.server_name.as_deref()) {
                        Ok(ep) => (
                            addr.clone(),
                            ep.timeout(self.request_timeout).connect_lazy(),
                        ),
                        Err(e) => {
                            last = Some(e);
                            continue;
                        }
                    }
                }
            };
            let status = match call(channel).await {
                Ok(response) => {
                    if let Target::Node(i) = target {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let err = ClientError::status(&addr, &status);
            if !is_failover(status.code()) {
                return Err(err);
            }
            tracing::debug!(endpoint = %addr, code = ?status.code(), "call failed; trying another node");
            if !hint_followed {
                if let Some(leader) = leader_hint(&status) {
                    hint_followed = true;
                    match self
                        .nodes
                        .iter()
                        .position(|p| bare(&p.addr) == bare(&leader))
                    {
                        Some(i) => {
                            order.retain(|t| !matches!(t, Target::Node(j) if *j == i));
                            order.push_front(Target::Node(i));
                        }
                        None => order.push_front(Target::Hint(leader)),
                    }
                }
            }
            last = Some(err);
        }
        Err(last.unwrap_or(ClientError::NoEndpoints))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(uri("h:1"), "https://h:1");
        assert_eq!(uri("https://h:1"), "https://h:1");
        assert_eq!(bare("https://h:1"), "h:1");
        assert_eq!(bare("h:1"), "h:1");
    }

    #[test]
    fn leader_hint_from_metadata() {
        let mut s = tonic::Status::unavailable("not the leader");
        assert_eq!(leader_hint(&s), None);
        s.metadata_mut().insert(
            tessera_proto::LEADER_METADATA,
            "127.0.0.1:7444".parse().unwrap(),
        );
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:7444"));
    }

    #[test]
    fn pool_needs_endpoints() {
        let files = TlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/c.key".into(),
        };
        assert!(matches!(
            Pool::new(&[], &files, None, Duration::from_secs(1)),
            Err(ClientError::NoEndpoints)
        ));
        assert!(matches!(
            Pool::new(&["h:1".into()], &files, None, Duration::from_secs(1)),
            Err(ClientError::Read { .. })
        ));
    }
}
