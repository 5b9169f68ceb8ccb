//! Reading certificates, keys and trust anchors from PEM files, with errors
//! that name the file and never echo its content.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TlsError;

/// Maps a PEM error to [`TlsError`]. Some `pem::Error` variants carry lines
/// of the file, which for a key file would be key material: they are
/// reduced to a fixed reason.
fn pem_error(path: &Path, err: pem::Error) -> TlsError {
    let reason = match err {
        pem::Error::Io(source) => {
            return TlsError::Read {
                path: path.to_owned(),
                source,
            }
        }
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64",
        pem::Error::NoItemsFound => "no items found",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable PEM",
    };
    TlsError::Pem {
        path: path.to_owned(),
        reason,
    }
}

/// Reads a file; errors name it.
#[cfg(test)]
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// All certificates in a PEM file, in order; at least one.
#[cfg(test)]
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(path, &read(path)?)
}

/// All certificates in PEM text read from `path`, in order; at least one.
pub(crate) fn parse_certs(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in PEM text read from `path`.
pub(crate) fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

/// A root store holding every certificate of PEM text read from `path`.
pub(crate) fn parse_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The first private key in a PEM file.
#[cfg(test)]
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(path, &read(path)?)
}

/// A root store holding every certificate of a CA file.
#[cfg(test)]
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    parse_roots(path, &read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pem");
        match load_certs(&path) {
            Err(TlsError::Read { path: p, .. }) => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
        match load_key(&path) {
            Err(TlsError::Read { path: p, .. }) => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_or_wrong_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_key(&empty),
            Err(TlsError::NoPrivateKey { .. })
        ));
        assert!(matches!(
            load_roots(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn broken_key_error_does_not_echo_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA!!";
        std::fs::write(
            &path,
            format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let err = load_key(&path).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(matches!(err, TlsError::Pem { .. }), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("bad.key"), "{shown}");
    }
}
