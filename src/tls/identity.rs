//! The caller's identity as seen by every service: the SPIFFE ID (else DNS
//! name) of its verified client certificate, and the certificate's
//! RFC 8705 thumbprint that tokens are bound to.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// Who is on the other end of a mutually authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// `spiffe://trust-domain/path` from the URI SAN, else the DNS SAN
    /// (lowercased).
    pub id: String,
    /// base64url (no padding) SHA-256 of the leaf certificate DER: the
    /// `x5t#S256` confirmation of RFC 8705.
    pub thumbprint: String,
}

impl PeerIdentity {
    /// The Raft node id if this is a node identity of `trust_domain`
    /// (`spiffe://{trust_domain}/node/{id}`), else `None`.
    pub fn node_id(&self, trust_domain: &str) -> Option<u64> {
        let rest = self.id.strip_prefix("spiffe://")?;
        let rest = rest.strip_prefix(trust_domain)?;
        let digits = rest.strip_prefix("/node/")?;
        // Only canonical decimal: "01" or "+1" would give one node two names.
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        digits.parse().ok()
    }
}

/// The `x5t#S256` thumbprint of a certificate: base64url (no padding) of
/// the SHA-256 of its DER encoding.
pub fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
}

/// Derives the identity of an (already verified) leaf certificate.
///
/// The first `spiffe://` URI SAN wins and must be a valid SPIFFE ID (a
/// malformed one is an error rather than a reason to fall back to a DNS
/// name). Without one, the first DNS SAN that is a host name (RFC 1123
/// syntax, no wildcard) is used: a wildcard names many services, never one
/// caller, and a DNS SAN spelling anything else (`spiffe://td/admin`, which
/// a CA that signs whatever names are requested would accept) must not
/// become another caller's identity.
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::MalformedCertificate(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::MalformedCertificate(e.to_string()))?;
    let names = sans
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or_default();

    let spiffe = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if has_spiffe_scheme(uri) => Some(*uri),
        _ => None,
    });
    let id = match spiffe {
        Some(uri) => {
            validate_spiffe_id(uri)?;
            uri.to_owned()
        }
        None => names
            .iter()
            .find_map(|name| match name {
                GeneralName::DNSName(dns) if is_host_name(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .ok_or(TlsError::NoIdentity)?,
    };
    Ok(PeerIdentity {
        id,
        thumbprint: thumbprint(der),
    })
}

/// A DNS SAN usable as an identity: a syntactically valid host name, not a
/// wildcard.
fn is_host_name(dns: &str) -> bool {
    !dns.contains('*') && rustls::pki_types::DnsName::try_from(dns).is_ok()
}

/// The identity of the caller of a gRPC request served over
/// [`super::tls_incoming`]: derived from the leaf of the verified peer
/// chain. `UNAUTHENTICATED` if there is no peer certificate (a plaintext or
/// in-process connection) or it names no usable identity.
pub fn caller_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    // Parsed already by a layer in front of the handler.
    if let Some(Parsed(p)) = req.extensions().get::<Parsed>() {
        return Ok(p.clone());
    }
    let certs = req
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    super::identity_cache::cached_identity(leaf).map_err(|e| {
        tracing::debug!(error = %e, "client certificate has no usable identity");
        tonic::Status::unauthenticated(format!("client certificate: {e}"))
    })
}

/// A request's caller identity as the first layer that needed it parsed
/// it. Private: only [`request_caller`] puts one in a request (extensions
/// are never set from the wire).
#[derive(Clone)]
struct Parsed(PeerIdentity);

/// The caller identity of an HTTP request served over
/// [`super::tls_incoming`], if its client certificate names one. The
/// certificate is parsed (and hashed) at most once per request: the result
/// is kept in the request's extensions, where later layers and
/// [`caller_identity`] find it. Parsing costs ~15 µs, and each request met
/// it up to three times (trace layer, rate layer, handler). Across requests
/// the identity of a certificate is remembered
/// ([`super::identity_cache`]): a connection's requests all present the
/// same one.
pub fn request_caller<B>(req: &mut http::Request<B>) -> Option<PeerIdentity> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if let Some(Parsed(p)) = req.extensions().get::<Parsed>() {
        return Some(p.clone());
    }
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    let p = super::identity_cache::cached_identity(certs.first()?).ok()?;
    req.extensions_mut().insert(Parsed(p.clone()));
    Some(p)
}

fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
}

/// The SPIFFE ID rules: lowercase `spiffe` scheme; a trust domain of
/// lowercase letters, digits, `.`, `-`, `_`; path segments of letters,
/// digits, `.`, `-`, `_` that are neither empty, `.` nor `..`; no query,
/// fragment, port or user info; at most 2048 bytes.
fn validate_spiffe_id(uri: &str) -> Result<(), TlsError> {
    let invalid = || TlsError::InvalidSpiffeId(uri.to_owned());
    if uri.len() > 2048 {
        return Err(invalid());
    }
    let rest = uri.strip_prefix("spiffe://").ok_or_else(invalid)?;
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let td_ok = !trust_domain.is_empty()
        && trust_domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !td_ok {
        return Err(invalid());
    }
    if let Some(path) = path {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !path.split('/').all(segment_ok) {
            return Err(invalid());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{issue_leaf, self_signed_ca, LeafSpec};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn cert_der(uris: &[&str], dns: &[&str]) -> Vec<u8> {
        let (ca, key) = self_signed_ca("Test CA").unwrap();
        let mut spec = LeafSpec::new("t");
        spec.uris = uris.iter().map(|s| (*s).to_owned()).collect();
        spec.dns_names = dns.iter().map(|s| (*s).to_owned()).collect();
        let (pem, _) = issue_leaf(&ca, &key, &spec).unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn id_of(uris: &[&str], dns: &[&str]) -> Result<String, TlsError> {
        identity_from_cert(&cert_der(uris, dns)).map(|i| i.id)
    }

    /// The DNS fallback took any SAN string: a certificate whose only SAN
    /// was `DNS:spiffe://tessera.dev/admin` was the admin.
    #[test]
    fn a_dns_san_spelling_a_spiffe_id_became_that_identity() {
        for dns in [
            "spiffe://tessera.dev/admin",
            "spiffe://tessera.dev/node/1",
            "orders internal/x:1",
            "",
            "*.example.org",
        ] {
            assert!(
                matches!(id_of(&[], &[dns]), Err(TlsError::NoIdentity)),
                "{dns:?} became an identity: {:?}",
                id_of(&[], &[dns])
            );
        }
        // A valid host name after an invalid one is still found.
        assert_eq!(
            id_of(&[], &["spiffe://tessera.dev/admin", "Orders.Example"]).unwrap(),
            "orders.example"
        );
    }

    #[test]
    fn spiffe_is_preferred_over_dns() {
        assert_eq!(
            id_of(
                &["https://example.org/x", "spiffe://td.example/svc/orders"],
                &["orders.example"]
            )
            .unwrap(),
            "spiffe://td.example/svc/orders"
        );
    }

    #[test]
    fn first_spiffe_uri_wins() {
        assert_eq!(
            id_of(&["spiffe://td/a", "spiffe://td/b"], &[]).unwrap(),
            "spiffe://td/a"
        );
    }

    #[test]
    fn dns_is_the_fallback() {
        assert_eq!(
            id_of(
                &["https://example.org/x"],
                &["*.wild.example", "Orders.Example", "b"]
            )
            .unwrap(),
            "orders.example"
        );
    }

    #[test]
    fn neither_is_an_error() {
        assert!(matches!(
            id_of(&["https://example.org/x"], &["*.wild.example"]),
            Err(TlsError::NoIdentity)
        ));
        assert!(matches!(id_of(&[], &[]), Err(TlsError::NoIdentity)));
    }

    #[test]
    fn malformed_spiffe_ids_are_errors() {
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "spiffe://TD/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/../x",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "spiffe://td:443/x",
            "spiffe://user@td/x",
            "SPIFFE://td/x",
        ] {
            match id_of(&[bad], &["fallback.example"]) {
                Err(TlsError::InvalidSpiffeId(s)) => assert_eq!(s, bad),
                other => panic!("{bad}: unexpected {other:?}"),
            }
        }
        for good in ["spiffe://td", "spiffe://td.example/a/b.c/d-e_f"] {
            assert_eq!(id_of(&[good], &[]).unwrap(), good);
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            identity_from_cert(b"not a certificate"),
            Err(TlsError::MalformedCertificate(_))
        ));
    }

    #[test]
    fn thumbprint_is_stable_sha256_base64url() {
        let der = cert_der(&["spiffe://td/x"], &[]);
        let a = identity_from_cert(&der).unwrap();
        let b = identity_from_cert(&der).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.thumbprint.len(), 43);
        assert!(!a.thumbprint.contains(['=', '+', '/']));
        assert_eq!(a.thumbprint, thumbprint(&der));
        // Known answer: SHA-256 of "abc".
        assert_eq!(
            thumbprint(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        let other = identity_from_cert(&cert_der(&["spiffe://td/x"], &[])).unwrap();
        assert_eq!(other.id, a.id);
        assert_ne!(other.thumbprint, a.thumbprint);
    }

    #[test]
    fn node_ids() {
        let id = |s: &str| PeerIdentity {
            id: s.into(),
            thumbprint: String::new(),
        };
        assert_eq!(
            id("spiffe://tessera.dev/node/3").node_id("tessera.dev"),
            Some(3)
        );
        assert_eq!(id("spiffe://tessera.dev/node/3").node_id("other.dev"), None);
        assert_eq!(
            id("spiffe://tessera.devx/node/3").node_id("tessera.dev"),
            None
        );
        assert_eq!(
            id("spiffe://tessera.dev/node/03").node_id("tessera.dev"),
            None
        );
        assert_eq!(
            id("spiffe://tessera.dev/node/+3").node_id("tessera.dev"),
            None
        );
        assert_eq!(
            id("spiffe://tessera.dev/node/").node_id("tessera.dev"),
            None
        );
        assert_eq!(
            id("spiffe://tessera.dev/node/3/x").node_id("tessera.dev"),
            None
        );
        assert_eq!(
            id("spiffe://tessera.dev/svc/3").node_id("tessera.dev"),
            None
        );
        assert_eq!(id("node3.tessera.dev").node_id("tessera.dev"), None);
        assert_eq!(
            id("spiffe://tessera.dev/node/0").node_id("tessera.dev"),
            Some(0)
        );
    }

    #[test]
    fn no_peer_certs_is_unauthenticated() {
        let req = tonic::Request::new(());
        let status = caller_identity(&req).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
