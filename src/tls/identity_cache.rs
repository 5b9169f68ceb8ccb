//! A bounded memo of [`identity_from_cert`], keyed by the certificate's
//! exact DER bytes.
//!
//! Every request of a connection presents the same leaf certificate, and
//! deriving its identity (X.509 parse, SAN checks, SHA-256 thumbprint) cost
//! ~5 % of a loaded one-node benchmark's CPU, about as much as the rest of
//! an Introspect handler besides the signature check
//! (docs/BENCHMARKS.md, issue 11). The identity is a pure function of the
//! DER bytes (the handshake already verified the chain and its dates), so
//! a hit returns exactly what parsing would: entries are compared on the
//! whole DER, and the hash only picks the bucket.
//!
//! Bounded: at most [`CAPACITY`] certificates (each entry holds its DER,
//! ~1 KB); when full, the memo starts over. Certificates that name no
//! usable identity are not kept: their requests fail anyway.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use super::identity::{identity_from_cert, PeerIdentity};
use super::TlsError;

/// Most certificates remembered by the process-wide memo.
pub const CAPACITY: usize = 4096;

/// The process-wide memo used by [`super::request_caller`] and
/// [`super::caller_identity`].
static MEMO: LazyLock<IdentityMemo> = LazyLock::new(|| IdentityMemo::new(CAPACITY));

/// [`identity_from_cert`] through the process-wide memo.
pub fn cached_identity(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    MEMO.identity(der)
}

/// Certificates (DER) and their identities by bucket hash; a bucket rarely
/// holds more than one.
type Buckets = HashMap<u64, Vec<(Box<[u8]>, PeerIdentity)>>;

/// Identities by certificate, bounded.
pub(super) struct IdentityMemo {
    capacity: usize,
    /// How many certificates, and the buckets.
    entries: Mutex<(usize, Buckets)>,
}

impl IdentityMemo {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::new((0, HashMap::new())),
        }
    }

    /// The identity of `der`, parsed at most once while remembered.
    pub(super) fn identity(&self, der: &[u8]) -> Result<PeerIdentity, TlsError> {
        let key = bucket(der);
        if let Ok(entries) = self.entries.lock() {
            if let Some(bucket) = entries.1.get(&key) {
                if let Some((_, id)) = bucket.iter().find(|(d, _)| **d == *der) {
                    return Ok(id.clone());
                }
            }
        }
        // Parsed outside the lock: other callers are not held up by it.
        let id = identity_from_cert(der)?;
        if let Ok(mut entries) = self.entries.lock() {
            let (len, map) = &mut *entries;
            if *len >= self.capacity {
                map.clear();
                *len = 0;
            }
            let bucket = map.entry(key).or_default();
            if !bucket.iter().any(|(d, _)| **d == *der) {
                bucket.push((der.into(), id.clone()));
                *len += 1;
            }
        }
        Ok(id)
    }

    /// Certificates remembered (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.0)
    }
}

/// The bucket of a certificate: its length and last 64 bytes (the end of
/// the issuer's signature, different for every certificate issued), so
/// that a lookup does not hash the whole DER. Equality is checked on all
/// of it.
fn bucket(der: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    der.len().hash(&mut h);
    der[der.len().saturating_sub(64)..].hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{issue_leaf, self_signed_ca, LeafSpec};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn cert_der(uri: &str) -> Vec<u8> {
        let (ca, key) = self_signed_ca("Test CA").unwrap();
        let mut spec = LeafSpec::new("t");
        spec.uris = vec![uri.to_owned()];
        let (pem, _) = issue_leaf(&ca, &key, &spec).unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn memo_answers_what_parsing_answers_for_each_certificate() {
        let memo = IdentityMemo::new(8);
        let a = cert_der("spiffe://td.example/svc/a");
        let b = cert_der("spiffe://td.example/svc/b");
        for _ in 0..3 {
            assert_eq!(memo.identity(&a).unwrap(), identity_from_cert(&a).unwrap());
            assert_eq!(memo.identity(&b).unwrap(), identity_from_cert(&b).unwrap());
        }
        assert_eq!(memo.len(), 2);
        assert_eq!(memo.identity(&a).unwrap().id, "spiffe://td.example/svc/a");
    }

    #[test]
    fn memo_does_not_confuse_certificates_with_the_same_tail() {
        // Same length and last 64 bytes, different content: same bucket,
        // so only the full comparison tells them apart.
        let memo = IdentityMemo::new(8);
        let a = cert_der("spiffe://td.example/svc/a");
        let mut forged = a.clone();
        forged[10] ^= 0xff;
        assert_eq!(bucket(&a), bucket(&forged));
        memo.identity(&a).unwrap();
        assert_eq!(
            memo.identity(&forged).ok(),
            identity_from_cert(&forged).ok()
        );
        assert_ne!(memo.identity(&forged).ok(), memo.identity(&a).ok());
    }

    #[test]
    fn memo_stays_within_its_capacity() {
        let memo = IdentityMemo::new(2);
        for i in 0..5 {
            let der = cert_der(&format!("spiffe://td.example/svc/s{i}"));
            memo.identity(&der).unwrap();
            assert!(memo.len() <= 2);
        }
    }

    #[test]
    fn memo_refuses_what_parsing_refuses() {
        let memo = IdentityMemo::new(2);
        assert!(memo.identity(b"not a certificate").is_err());
        assert_eq!(memo.len(), 0);
    }
}
