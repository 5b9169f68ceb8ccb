//! Connections to peers: the client TLS material of a node
//! ([`TlsMaterial`]), the tonic endpoint and client every channel is built
//! from, the verifier that checks a server certificate names the node it
//! was meant to be ([`NodeCertVerifier`]), and the `Hello` handshake
//! ([`hello`]) that learns a node's identity.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

use super::RaftNetError;
use crate::raft::pb::raft_service_client::RaftServiceClient;
use crate::raft::pb::HelloRequest;
use crate::raft::{NodeId, NodeInfo, INCARNATION_HEADER, MAX_MESSAGE_SIZE};
use crate::tls::{identity_from_cert, TlsError, TlsFiles};

/// Time allowed to establish a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle connections, so a peer that vanished without a FIN
/// (power loss, partition) is noticed and the connection re-established.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a keep-alive ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of a `Hello` call.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The client side TLS of a node: its identity (for tonic) and the roots it
/// verifies servers against (for our verifier).
#[derive(Clone)]
pub(super) struct TlsMaterial {
    identity: Identity,
    pub(super) roots: Arc<RootCertStore>,
    ca_path: std::path::PathBuf,
}

/// Asks the node at the Raft address `addr` (`host:port`) for its node id,
/// addresses and data incarnation, authenticating with `tls` (a node
/// certificate of the cluster's trust domain). The server certificate must
/// be a node certificate of the same trust domain, and name the node id the
/// reply claims.
///
/// Used to learn a node's identity before initialising a cluster with it or
/// adding it as a learner.
pub async fn hello(addr: &str, tls: &TlsFiles) -> Result<(NodeId, NodeInfo), RaftNetError> {
    let (trust_domain, _) = cert_identity(&tls.cert)?;
    hello_with(addr, &TlsMaterial::load(tls)?, &trust_domain, None).await
}

pub(super) async fn hello_with(
    addr: &str,
    tls: &TlsMaterial,
    trust_domain: &str,
    incarnation: Option<u64>,
) -> Result<(NodeId, NodeInfo), RaftNetError> {
    let verifier = NodeCertVerifier::new(tls.roots.clone(), trust_domain.to_owned(), None);
    let seen = verifier.seen.clone();
    // A fresh connection: the identity seen in its handshake is the one
    // this reply comes from.
    let channel = endpoint(addr, tls, verifier)?.connect_lazy();
    let mut client = raft_client(channel);
    let mut request = tonic::Request::new(HelloRequest {});
    request.set_timeout(HELLO_TIMEOUT);
    if let Some(incarnation) = incarnation {
        request.metadata_mut().insert(
            INCARNATION_HEADER,
            tonic::metadata::MetadataValue::from(incarnation),
        );
    }
    let call_error = |status| RaftNetError::Call {
        addr: addr.to_owned(),
        status,
    };
    let reply = tokio::time::timeout(HELLO_TIMEOUT, client.hello(request))
        .await
        .map_err(|_| {
            call_error(tonic::Status::deadline_exceeded(
                "no reply to Hello in time",
            ))
        })?
        .map_err(call_error)?
        .into_inner();
    let protocol = |reason: String| RaftNetError::Protocol {
        addr: addr.to_owned(),
        reason,
    };
    let cert_node = *seen.lock().unwrap_or_else(|p| p.into_inner());
    if cert_node != Some(reply.node_id) {
        return Err(protocol(format!(
            "the reply names node {} but the server certificate is the one of node {}",
            reply.node_id,
            cert_node.map_or_else(|| "?".to_owned(), |n| n.to_string())
        )));
    }
    if reply.incarnation == 0 {
        return Err(protocol("the node reports no data incarnation".into()));
    }
    Ok((
        reply.node_id,
        NodeInfo {
            raft_addr: reply.raft_addr,
            api_addr: reply.api_addr,
            incarnation: reply.incarnation,
        },
    ))
}

impl TlsMaterial {
    pub(super) fn from_loaded(m: &crate::tls::LoadedTls) -> Self {
        Self {
            identity: Identity::from_pem(m.cert_pem(), m.key_pem()),
            roots: m.roots(),
            ca_path: m.files().ca.clone(),
        }
    }

    pub(super) fn load(files: &TlsFiles) -> Result<Self, RaftNetError> {
        // Parses and checks everything (by file name) before tonic sees it.
        crate::tls::client_config(files)?;
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(&files.ca)? {
            roots.add(cert).map_err(|source| TlsError::InvalidCa {
                path: files.ca.clone(),
                source,
            })?;
        }
        Ok(Self {
            identity,
            roots: Arc::new(roots),
            ca_path: files.ca.clone(),
        })
    }
}

fn pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            reason: "cannot read certificates",
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The trust domain and, if it is a node certificate, the node id of the
/// leaf certificate in `path`.
pub(crate) fn cert_identity(
    path: &std::path::Path,
) -> Result<(String, Option<NodeId>), RaftNetError> {
    let certs = pem_certs(path)?;
    let identity = identity_from_cert(&certs[0]).map_err(|e| RaftNetError::Identity {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let trust_domain = identity
        .id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .filter(|td| !td.is_empty())
        .ok_or_else(|| RaftNetError::Identity {
            path: path.to_owned(),
            reason: format!("{:?} is not a SPIFFE id", identity.id),
        })?
        .to_owned();
    let node = identity.node_id(&trust_domain);
    Ok((trust_domain, node))
}

pub(super) fn endpoint(
    addr: &str,
    tls: &TlsMaterial,
    verifier: NodeCertVerifier,
) -> Result<Endpoint, RaftNetError> {
    let bad = |reason: String| RaftNetError::Address {
        addr: addr.to_owned(),
        reason,
    };
    if addr.is_empty() || addr.contains('/') {
        return Err(bad("expected host:port".into()));
    }
    let tls_config = ClientTlsConfig::new()
        .identity(tls.identity.clone())
        .timeout(CONNECT_TIMEOUT);
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tls_config_with_verifier(tls_config, Arc::new(verifier))
        .map_err(|e| RaftNetError::Identity {
            path: tls.ca_path.clone(),
            reason: format!("cannot configure TLS: {e}"),
        })
}

pub(super) fn raft_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Verifies a server certificate the way SPIFFE verifies an X.509-SVID:
/// the chain must lead to the cluster CA, and the identity is the SPIFFE
/// id, not the host name (nodes are addressed by IP as often as by name).
/// The id must be `spiffe://{trust_domain}/node/{n}` with `n` the expected
/// node, or any node when none is expected (`Hello`).
#[derive(Debug)]
pub(super) struct NodeCertVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust_domain: String,
    expect: Option<NodeId>,
    /// The node id of the last certificate accepted.
    seen: Arc<Mutex<Option<NodeId>>>,
}

impl NodeCertVerifier {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        trust_domain: String,
        expect: Option<NodeId>,
    ) -> Self {
        Self {
            roots,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            trust_domain,
            expect,
            seen: Arc::new(Mutex::new(None)),
        }
    }
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let refuse = |reason: String| {
            tracing::warn!(expected_node = ?self.expect, %reason, "refusing a Raft peer's certificate");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        };
        let identity = identity_from_cert(end_entity).map_err(|e| refuse(e.to_string()))?;
        match identity.node_id(&self.trust_domain) {
            Some(node) if self.expect.is_none_or(|want| want == node) => {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(node);
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(refuse(format!(
                "the server presents {:?}, not a node certificate of {} for the expected node",
                identity.id, self.trust_domain
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_to_nowhere_fails_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::certs::init_dev_pki(dir.path(), &Default::default()).unwrap();
        let node1 = pki.tls_files("node1").unwrap();
        // A port nothing listens on: bind, note it, close.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(matches!(
            hello(&addr, &node1).await,
            Err(RaftNetError::Call { .. })
        ));
        assert!(matches!(
            hello("not an address/", &node1).await,
            Err(RaftNetError::Address { .. })
        ));
    }
}
