//! Development PKI: a throw-away CA plus node, admin and service
//! certificates for running a cluster on one machine (`tessera certs init`).
//!
//! Everything here is for development and tests. Production deployments
//! bring their own CA (SPIRE, cert-manager, a corporate PKI); the node only
//! needs the PEM files named in [`crate::tls::TlsFiles`].
//!
//! Layout written by [`init_dev_pki`] into one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the CA (10 years; key 0600) |
//! | `node{i}.pem/.key` | node `i` (1-based): URI `spiffe://{td}/node/{i}`, DNS `localhost`, `node{i}`, IP `127.0.0.1` |
//! | `admin.pem/.key` | URI `spiffe://{td}/admin`, DNS `admin.{td}` |
//! | `{name}.pem/.key` | service `svc/{name}`: URI `spiffe://{td}/svc/{name}`, DNS `{name}.{td}` |
//!
//! All leaves are valid for one year and carry both the client and server
//! authentication purposes; keys are ECDSA P-256 and written with mode 0600.

mod issue;

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use issue::{issue_leaf, self_signed_ca, LeafSpec, CA_VALIDITY, LEAF_VALIDITY};

use crate::tls::TlsFiles;

/// The default SPIFFE trust domain of the development PKI.
pub const DEFAULT_TRUST_DOMAIN: &str = "tessera.dev";
/// The default number of node certificates.
pub const DEFAULT_NODES: u32 = 3;
/// The services that get certificates by default: the admin identity and
/// the demo services used by the examples.
pub const DEFAULT_SERVICES: [&str; 5] = [
    "admin",
    "svc/frontend",
    "svc/orders",
    "svc/payments",
    "svc/ledger",
];
/// Upper bound on node certificates, so a typo cannot fill a disk.
const MAX_NODES: u32 = 100;

/// Errors of the development PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// `ca.key` already exists and `force` was not given.
    #[error(
        "refusing to overwrite existing CA key {}: remove the directory or pass --force to replace the development PKI",
        .path.display()
    )]
    CaKeyExists {
        /// The existing key file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An option (trust domain, name, node count, validity) is invalid.
    #[error("invalid PKI option: {0}")]
    InvalidOption(String),
    /// The CA certificate given to [`issue_leaf`] is unusable.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCertificate(String),
    /// The CA key given to [`issue_leaf`] is unusable.
    #[error("invalid CA private key")]
    InvalidCaKey(#[source] rcgen::Error),
    /// rcgen refused to generate a key or certificate (e.g. a SAN that is
    /// not ASCII).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What [`init_dev_pki`] generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiOptions {
    /// SPIFFE trust domain, e.g. `tessera.dev`.
    pub trust_domain: String,
    /// Number of node certificates (`node1` ..= `nodeN`).
    pub nodes: u32,
    /// Service identities as SPIFFE paths (`admin`, `svc/orders`); the file
    /// name is the last path segment, which must therefore be unique.
    pub services: Vec<String>,
    /// Extra SANs (DNS names or IP addresses) put on every node certificate,
    /// e.g. container or pod host names.
    pub extra_node_sans: Vec<String>,
    /// Replace an existing PKI in the directory.
    pub force: bool,
}

impl Default for DevPkiOptions {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            nodes: DEFAULT_NODES,
            services: DEFAULT_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            extra_node_sans: Vec::new(),
            force: false,
        }
    }
}

/// One certificate written by [`init_dev_pki`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// File stem: `node1`, `admin`, `orders`.
    pub name: String,
    /// The identity the certificate carries (its SPIFFE URI SAN).
    pub spiffe_id: String,
    /// PEM certificate file.
    pub cert: PathBuf,
    /// PEM private key file (0600).
    pub key: PathBuf,
}

/// The files of a development PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key` (0600).
    pub ca_key: PathBuf,
    /// Node certificates, node 1 first.
    pub nodes: Vec<IssuedCert>,
    /// Service certificates, in the order of [`DevPkiOptions::services`].
    pub services: Vec<IssuedCert>,
}

impl DevPki {
    /// Every file written, CA first, then nodes and services, each
    /// certificate followed by its key.
    pub fn files(&self) -> Vec<&Path> {
        let mut out = vec![self.ca_cert.as_path(), self.ca_key.as_path()];
        for c in self.nodes.iter().chain(&self.services) {
            out.push(&c.cert);
            out.push(&c.key);
        }
        out
    }

    /// The TLS files (CA, certificate, key) for the certificate named
    /// `name` (`node1`, `admin`, `orders`), if it was generated.
    pub fn tls_files(&self, name: &str) -> Option<TlsFiles> {
        self.nodes
            .iter()
            .chain(&self.services)
            .find(|c| c.name == name)
            .map(|c| TlsFiles {
                ca: self.ca_cert.clone(),
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
    }
}

/// Generates a development CA and the node and service certificates into
/// `dir` (created if missing); see the module docs for the layout.
///
/// Refuses with [`CertsError::CaKeyExists`] if `dir/ca.key` exists, unless
/// `opts.force`: replacing the CA silently would invalidate every
/// certificate already handed out.
pub fn init_dev_pki(dir: &Path, opts: &DevPkiOptions) -> Result<DevPki, CertsError> {
    validate_trust_domain(&opts.trust_domain)?;
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(CertsError::InvalidOption(format!(
            "node count must be between 1 and {MAX_NODES}"
        )));
    }
    let mut stems: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
    stems.push("ca".into());
    for service in &opts.services {
        validate_service_path(service)?;
        let stem = last_segment(service).to_owned();
        if stems.contains(&stem) {
            return Err(CertsError::InvalidOption(format!(
                "service {service:?} would overwrite the files of another certificate ({stem}.pem)"
            )));
        }
        stems.push(stem);
    }
    let mut node_ips = vec![IpAddr::from([127, 0, 0, 1])];
    let mut node_dns = vec!["localhost".to_owned()];
    for san in &opts.extra_node_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => node_ips.push(ip),
            Err(_) => node_dns.push(san.clone()),
        }
    }

    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    match fs::symlink_metadata(&ca_key) {
        Ok(_) if !opts.force => return Err(CertsError::CaKeyExists { path: ca_key }),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CertsError::Io {
                path: ca_key,
                source,
            })
        }
    }

    let td = &opts.trust_domain;
    let (ca_pem, ca_key_pem) = self_signed_ca(&format!("Tessera development CA ({td})"))?;
    // The key first: if it cannot be written, no certificate refers to it.
    write_private(&ca_key, &ca_key_pem)?;
    write_public(&ca_cert, &ca_pem)?;

    let mut pki = DevPki {
        dir: dir.to_owned(),
        ca_cert,
        ca_key,
        nodes: Vec::new(),
        services: Vec::new(),
    };

    for i in 1..=opts.nodes {
        let name = format!("node{i}");
        let spiffe_id = format!("spiffe://{td}/node/{i}");
        let mut spec = LeafSpec::new(format!("tessera {name}"));
        spec.uris.push(spiffe_id.clone());
        spec.dns_names = node_dns.clone();
        spec.dns_names.push(name.clone());
        spec.ip_addresses = node_ips.clone();
        pki.nodes.push(write_leaf(
            dir,
            &ca_pem,
            &ca_key_pem,
            name,
            spiffe_id,
            &spec,
        )?);
    }
    for service in &opts.services {
        let name = last_segment(service).to_owned();
        let spiffe_id = format!("spiffe://{td}/{service}");
        let mut spec = LeafSpec::new(service.clone());
        spec.uris.push(spiffe_id.clone());
        spec.dns_names.push(format!("{name}.{td}"));
        pki.services.push(write_leaf(
            dir,
            &ca_pem,
            &ca_key_pem,
            name,
            spiffe_id,
            &spec,
        )?);
    }
    Ok(pki)
}

fn write_leaf(
    dir: &Path,
    ca_pem: &str,
    ca_key_pem: &str,
    name: String,
    spiffe_id: String,
    spec: &LeafSpec,
) -> Result<IssuedCert, CertsError> {
    let (cert_pem, key_pem) = issue_leaf(ca_pem, ca_key_pem, spec)?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_private(&key, &key_pem)?;
    write_public(&cert, &cert_pem)?;
    Ok(IssuedCert {
        name,
        spiffe_id,
        cert,
        key,
    })
}

fn write_public(path: &Path, contents: &str) -> Result<(), CertsError> {
    fs::write(path, contents).map_err(|source| CertsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a private key readable by its owner only. The old file is removed
/// first and the new one created exclusively with mode 0600, so the key is
/// never readable by others, not even briefly, and a planted symlink is not
/// followed.
fn write_private(path: &Path, contents: &str) -> Result<(), CertsError> {
    let io_err = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// SPIFFE trust domains are lowercase letters, digits, `.`, `-` and `_`.
fn validate_trust_domain(td: &str) -> Result<(), CertsError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CertsError::InvalidOption(format!(
            "trust domain {td:?} must be non-empty lowercase letters, digits, '.', '-' or '_'"
        )))
    }
}

/// A service path is one or more SPIFFE path segments (letters, digits, `.`,
/// `-`, `_`; not `.` or `..`) separated by `/`, and usable as a DNS label.
fn validate_service_path(path: &str) -> Result<(), CertsError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let last = last_segment(path);
    let dns_label_ok = last.len() <= 63
        && last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !last.starts_with('-')
        && !last.ends_with('-');
    if path.split('/').all(segment_ok) && dns_label_ok {
        Ok(())
    } else {
        Err(CertsError::InvalidOption(format!(
            "service name {path:?} must be '/'-separated segments of letters, digits, '.', '-' or '_', ending in a DNS label"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::GeneralName;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn sans(path: &Path) -> Vec<String> {
        let der = CertificateDer::from_pem_file(path).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert.subject_alternative_name().unwrap().unwrap();
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn default_layout_is_written_and_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let pki = init_dev_pki(&dir, &DevPkiOptions::default()).unwrap();

        let mut expected = vec!["ca"];
        expected.extend(["node1", "node2", "node3"]);
        expected.extend(["admin", "frontend", "orders", "payments", "ledger"]);
        for stem in expected {
            let cert = dir.join(format!("{stem}.pem"));
            let key = dir.join(format!("{stem}.key"));
            CertificateDer::from_pem_file(&cert).unwrap();
            PrivateKeyDer::from_pem_file(&key).unwrap();
            assert_eq!(mode(&key), 0o600, "{stem}.key must be 0600");
        }
        assert_eq!(pki.nodes.len(), 3);
        assert_eq!(pki.services.len(), 5);
        assert_eq!(pki.nodes[1].spiffe_id, "spiffe://tessera.dev/node/2");
        assert_eq!(pki.services[2].spiffe_id, "spiffe://tessera.dev/svc/orders");

        let files = pki.tls_files("orders").unwrap();
        assert_eq!(files.ca, dir.join("ca.pem"));
        assert_eq!(files.cert, dir.join("orders.pem"));
        assert_eq!(files.key, dir.join("orders.key"));
        assert!(pki.tls_files("nobody").is_none());
        let all = pki.files();
        assert_eq!(all.len(), 18);
        assert_eq!(all[0], dir.join("ca.pem"));
        assert!(all.iter().all(|f| f.exists()));
    }

    #[test]
    fn node_and_service_sans() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = DevPkiOptions {
            trust_domain: "example.org".into(),
            nodes: 2,
            services: vec!["admin".into(), "svc/orders".into()],
            extra_node_sans: vec!["tessera-0.tessera".into(), "10.0.0.7".into()],
            force: false,
        };
        init_dev_pki(tmp.path(), &opts).unwrap();

        let node = sans(&tmp.path().join("node2.pem"));
        assert_eq!(node[0], "URI:spiffe://example.org/node/2");
        for want in ["DNS:localhost", "DNS:node2", "DNS:tessera-0.tessera"] {
            assert!(node.contains(&want.to_owned()), "{want} in {node:?}");
        }
        assert!(node.contains(&"IP:[127, 0, 0, 1]".to_owned()));
        assert!(node.contains(&"IP:[10, 0, 0, 7]".to_owned()));

        assert_eq!(
            sans(&tmp.path().join("orders.pem")),
            vec![
                "URI:spiffe://example.org/svc/orders",
                "DNS:orders.example.org"
            ]
        );
        assert_eq!(
            sans(&tmp.path().join("admin.pem")),
            vec!["URI:spiffe://example.org/admin", "DNS:admin.example.org"]
        );
        assert!(!tmp.path().join("node3.pem").exists());
    }

    #[test]
    fn refuses_to_overwrite_ca_key_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init_dev_pki(tmp.path(), &DevPkiOptions::default()).unwrap();
        let ca_before = fs::read(&first.ca_cert).unwrap();

        let err = init_dev_pki(tmp.path(), &DevPkiOptions::default()).unwrap_err();
        match &err {
            CertsError::CaKeyExists { path } => assert_eq!(path, &tmp.path().join("ca.key")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("--force"));
        assert_eq!(fs::read(&first.ca_cert).unwrap(), ca_before);

        let forced = DevPkiOptions {
            force: true,
            ..DevPkiOptions::default()
        };
        init_dev_pki(tmp.path(), &forced).unwrap();
        assert_ne!(fs::read(&first.ca_cert).unwrap(), ca_before);
        assert_eq!(mode(&first.ca_key), 0o600);
    }

    #[test]
    fn forced_rewrite_tightens_loose_key_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("node1.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        init_dev_pki(tmp.path(), &DevPkiOptions::default()).unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn invalid_options_are_rejected_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            DevPkiOptions {
                trust_domain: "Tessera.Dev".into(),
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                trust_domain: String::new(),
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                nodes: 0,
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                nodes: MAX_NODES + 1,
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["svc/../etc".into()],
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["svc/a_b".into()],
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["svc//x".into()],
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["a/orders".into(), "b/orders".into()],
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["svc/node1".into()],
                ..DevPkiOptions::default()
            },
            DevPkiOptions {
                services: vec!["ca".into()],
                ..DevPkiOptions::default()
            },
        ];
        for opts in cases {
            let err = init_dev_pki(tmp.path(), &opts).unwrap_err();
            assert!(
                matches!(err, CertsError::InvalidOption(_)),
                "{opts:?}: {err:?}"
            );
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
