//! Certificate issuance with `rcgen`: self-signed CAs and leaves signed by a
//! CA given as PEM. Pure in-memory work; writing files is `init`'s job.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::CertsError;

/// How long a CA made by [`self_signed_ca`] is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf made from [`LeafSpec::new`] is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before "now" so that a node whose clock is a
/// little behind the issuer's still accepts a freshly issued certificate.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// 9999-12-31T23:59:59Z: the last instant X.509 `GeneralizedTime` can encode.
const MAX_CERT_TIME_SECS: u64 = 253_402_300_799;

/// What a leaf certificate says: names, purposes and validity.
///
/// Built with [`LeafSpec::new`] (one year from now, client and server auth)
/// and adjusted through the public fields, e.g. a validity window in the
/// past to make an expired certificate in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name; informational only (identity comes from SANs).
    pub common_name: String,
    /// URI SANs, e.g. `spiffe://tessera.dev/svc/orders`.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Include the `serverAuth` extended key usage.
    pub server_auth: bool,
    /// Include the `clientAuth` extended key usage.
    pub client_auth: bool,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// A leaf valid for [`LEAF_VALIDITY`] from now (backdated a few minutes
    /// for clock skew), usable for both client and server authentication,
    /// with no SANs yet.
    pub fn new(common_name: impl Into<String>) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.into(),
            uris: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            server_auth: true,
            client_auth: true,
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + LEAF_VALIDITY,
        }
    }

    /// Sets the validity window (builder style).
    pub fn valid_between(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// Makes a self-signed CA certificate and its key, both PEM encoded, valid
/// for [`CA_VALIDITY`]. The key is ECDSA P-256.
pub fn self_signed_ca(common_name: &str) -> Result<(String, String), CertsError> {
    let now = SystemTime::now();
    let mut params = ca_params(common_name);
    set_validity(
        &mut params,
        now.checked_sub(BACKDATE).unwrap_or(now),
        now + CA_VALIDITY,
    )?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a leaf certificate described by `spec`, signed by the CA whose
/// certificate and key are given as PEM. Returns `(cert_pem, key_pem)`; the
/// new key is ECDSA P-256.
///
/// The CA must be one whose subject uses UTF-8 or printable strings (any CA
/// made by this module does): the issuer name is rebuilt from the CA
/// certificate and has to match it byte for byte for chains to verify.
pub fn issue_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    spec: &LeafSpec,
) -> Result<(String, String), CertsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(CertsError::InvalidCaKey)?;
    let ca_params = issuer_params_from_pem(ca_cert_pem)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if spec.server_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    for uri in &spec.uris {
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into()?));
    }
    for dns in &spec.dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.as_str().try_into()?));
    }
    for ip in &spec.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    set_validity(&mut params, spec.not_before, spec.not_after)?;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tessera");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Rebuilds the issuer-relevant parameters (subject name, key usages) of a
/// CA certificate. rcgen can do this itself only with its `x509-parser`
/// feature, which the crate does not enable.
fn issuer_params_from_pem(ca_cert_pem: &str) -> Result<CertificateParams, CertsError> {
    let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|_| CertsError::InvalidCaCertificate("not a PEM certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CertsError::InvalidCaCertificate(e.to_string()))?;
    if !cert.is_ca() {
        return Err(CertsError::InvalidCaCertificate(
            "certificate is not a CA (basicConstraints cA is false)".into(),
        ));
    }

    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| CertsError::InvalidCaCertificate("unsupported subject OID".into()))?
            .collect();
        let text = attr.as_str().map_err(|_| {
            CertsError::InvalidCaCertificate("unsupported subject string type".into())
        })?;
        let value = match attr.attr_value().tag() {
            x509_parser::der_parser::asn1_rs::Tag::PrintableString => {
                DnValue::PrintableString(text.try_into()?)
            }
            x509_parser::der_parser::asn1_rs::Tag::Utf8String => {
                DnValue::Utf8String(text.to_owned())
            }
            _ => {
                return Err(CertsError::InvalidCaCertificate(
                    "subject uses a string type other than UTF8String or PrintableString".into(),
                ))
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CertsError> {
    if not_after <= not_before {
        return Err(CertsError::InvalidOption(
            "certificate validity ends before it starts".into(),
        ));
    }
    for t in [not_before, not_after] {
        // `OffsetDateTime::from(SystemTime)` panics outside its range; X.509
        // cannot encode those instants anyway.
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) if d.as_secs() <= MAX_CERT_TIME_SECS => {}
            _ => {
                return Err(CertsError::InvalidOption(
                    "certificate validity must lie between 1970 and 9999".into(),
                ))
            }
        }
    }
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn ca_is_a_ca_and_leaf_chains_to_it() {
        let (ca_pem, ca_key) = self_signed_ca("Test CA").unwrap();
        let ca_der = parse(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());

        let mut spec = LeafSpec::new("svc");
        spec.uris.push("spiffe://example.org/svc".into());
        spec.dns_names.push("svc.example.org".into());
        spec.ip_addresses.push("127.0.0.1".parse().unwrap());
        let (leaf_pem, leaf_key) = issue_leaf(&ca_pem, &ca_key, &spec).unwrap();
        assert!(leaf_key.contains("PRIVATE KEY"));
        let leaf_der = parse(&leaf_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        assert!(!leaf.is_ca());
        // The issuer name must be byte-identical to the CA's subject.
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        let sans = &leaf.subject_alternative_name().unwrap().unwrap().value;
        assert!(sans
            .general_names
            .contains(&GeneralName::URI("spiffe://example.org/svc")));
        assert!(sans
            .general_names
            .contains(&GeneralName::DNSName("svc.example.org")));
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
    }

    #[test]
    fn purposes_follow_the_spec() {
        let (ca_pem, ca_key) = self_signed_ca("Test CA").unwrap();
        let mut spec = LeafSpec::new("client-only");
        spec.server_auth = false;
        let (pem, _) = issue_leaf(&ca_pem, &ca_key, &spec).unwrap();
        let der = parse(&pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn expired_leaf_can_be_issued() {
        let (ca_pem, ca_key) = self_signed_ca("Test CA").unwrap();
        let now = SystemTime::now();
        let spec = LeafSpec::new("old").valid_between(
            now - Duration::from_secs(2 * 86400),
            now - Duration::from_secs(86400),
        );
        let (pem, _) = issue_leaf(&ca_pem, &ca_key, &spec).unwrap();
        let der = parse(&pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!leaf.validity().is_valid());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (ca_pem, ca_key) = self_signed_ca("Test CA").unwrap();
        let spec = LeafSpec::new("x");
        assert!(matches!(
            issue_leaf("garbage", &ca_key, &spec),
            Err(CertsError::InvalidCaCertificate(_))
        ));
        assert!(matches!(
            issue_leaf(&ca_pem, "garbage", &spec),
            Err(CertsError::InvalidCaKey(_))
        ));
        let now = SystemTime::now();
        let backwards = spec
            .clone()
            .valid_between(now, now - Duration::from_secs(1));
        assert!(matches!(
            issue_leaf(&ca_pem, &ca_key, &backwards),
            Err(CertsError::InvalidOption(_))
        ));
        let far = spec.clone().valid_between(
            now,
            UNIX_EPOCH + Duration::from_secs(MAX_CERT_TIME_SECS + 1),
        );
        assert!(matches!(
            issue_leaf(&ca_pem, &ca_key, &far),
            Err(CertsError::InvalidOption(_))
        ));
        // A leaf is not a CA: refuse to sign with it.
        let (leaf_pem, leaf_key) = issue_leaf(&ca_pem, &ca_key, &spec).unwrap();
        assert!(matches!(
            issue_leaf(&leaf_pem, &leaf_key, &spec),
            Err(CertsError::InvalidCaCertificate(_))
        ));
        let mut bad_dns = LeafSpec::new("x");
        bad_dns.dns_names.push("bad\u{e9}name".into());
        assert!(matches!(
            issue_leaf(&ca_pem, &ca_key, &bad_dns),
            Err(CertsError::Generate(_))
        ));
    }
}
