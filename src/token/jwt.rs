//! Signing and verification of compact JWS access tokens (RFC 7515, RFC 9068
//! profile), following the JWT best practices of RFC 8725.
//!
//! Signing keys are parsed once, when the key ring changes, and the JWS is
//! assembled here (header, payload, signature, base64url without padding)
//! rather than through `jsonwebtoken::encode`, which re-parses the key on
//! every call. The signature is checked with the keys of the caller's
//! [`KeySet`] only, each for its own algorithm: through jsonwebtoken
//! (aws-lc-rs) with the public key, or, for an Ed25519 key whose private
//! half the caller attached ([`VerifyingKey::with_signer`]: a node holding
//! the active signing key), by signing the input again and comparing.
//!
//! [`verify`] checks, in this order, and stops at the first failure:
//!
//! 1. length ≤ `max_len`, before anything is parsed;
//! 2. exactly two dots (a scan that stops at the third dot), three non-empty
//!    segments, a header segment of bounded size;
//! 3. the header: base64url, a JSON object without duplicate members;
//! 4. `alg` ∈ {`EdDSA`, `ES256`} (so never `none`, `HS*`, `RS*`, …);
//! 5. no `jku`, `jwk`, `x5u`, `x5c` (keys never come from tokens), no `crit`;
//! 6. `typ` is `at+jwt` or `application/at+jwt` (case-insensitive);
//! 7. `kid` names a key of the set ([`TokenError::UnknownKey`] otherwise, so
//!    that callers can refresh their JWKS), and the key's algorithm is `alg`;
//! 8. the signature, with that key;
//! 9. the claims, strictly typed ([`Claims`]);
//! 10. `iss` exactly, then `exp`, `nbf`, `iat` against `now` with a bounded
//!     leeway, `aud` exactly (when an audience is expected), a non-empty
//!     `jti` and `sub`, and a bounded delegation chain.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, ED25519,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::claims::Claims;
use super::error::TokenError;

/// The `typ` header Tessera writes (RFC 9068 §2.1).
pub const TOKEN_TYPE: &str = "at+jwt";
/// Default maximum token length in bytes.
pub const DEFAULT_MAX_LEN: usize = 8 * 1024;
/// Default clock leeway in seconds for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: u64 = 30;
/// Largest delegation depth a cluster may be configured with (a node's
/// `max_depth`).
pub const MAX_DEPTH_LIMIT: usize = 32;
/// Default maximum delegation chain length accepted by [`verify`]: the
/// largest depth any cluster may mint, so that a verifier left at its
/// defaults accepts every token a correctly configured cluster issues (the
/// cluster's own `max_depth` is the policy; this only bounds work).
pub const DEFAULT_MAX_CHAIN: usize = MAX_DEPTH_LIMIT;
/// Largest clock leeway a node may be configured with, seconds: a leeway
/// keeps expired tokens valid for that long.
pub const MAX_LEEWAY: u64 = 300;
/// Longest header segment (base64url characters) [`verify`] will decode. Our
/// headers are under 100 characters; this only bounds work on junk.
const MAX_HEADER_B64: usize = 1024;
/// Longest `alg` or `kid` echoed back in an error.
const MAX_ECHO: usize = 64;

/// Signature algorithms Tessera signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    /// Ed25519 (RFC 8037). The default.
    EdDSA,
    /// ECDSA with P-256 and SHA-256, fixed-size (r‖s) signatures.
    ES256,
}

impl Alg {
    /// The JOSE name of the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }

    /// Parses a JOSE algorithm name; anything but `EdDSA` and `ES256` (exact
    /// case, as RFC 7518 names are case-sensitive) is refused.
    pub fn from_name(name: &str) -> Result<Self, TokenError> {
        match name {
            "EdDSA" => Ok(Alg::EdDSA),
            "ES256" => Ok(Alg::ES256),
            other => Err(TokenError::UnsupportedAlgorithm(echo(other))),
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A printable, bounded copy of an attacker-controlled header value, safe to
/// put in an error message or a log line.
fn echo(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_ECHO)
        .collect()
}

enum Signer {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

/// A private signing key, parsed once. Deliberately not `Clone`; its
/// `Debug` shows the `kid` and algorithm only.
pub struct SigningKey {
    kid: String,
    alg: Alg,
    signer: Signer,
    /// base64url of the fixed header, computed once.
    header_b64: String,
    public_key: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a PKCS#8 private key (v1 or v2 for Ed25519, v1 for P-256) for
    /// `alg`.
    pub fn from_pkcs8(kid: String, alg: Alg, pkcs8: &[u8]) -> Result<Self, TokenError> {
        if kid.is_empty() {
            return Err(TokenError::InvalidKey("empty kid"));
        }
        let (signer, public_key) = match alg {
            Alg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| TokenError::InvalidKey("not an Ed25519 PKCS#8 key"))?;
                let pk = kp.public_key().as_ref().to_vec();
                (Signer::Ed(kp), pk)
            }
            Alg::ES256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| TokenError::InvalidKey("not a P-256 PKCS#8 key"))?;
                let pk = kp.public_key().as_ref().to_vec();
                (Signer::Es(kp), pk)
            }
        };
        let header = json!({"alg": alg.name(), "typ": TOKEN_TYPE, "kid": kid});
        let header_b64 = B64.encode(header.to_string());
        Ok(Self {
            kid,
            alg,
            signer,
            header_b64,
            public_key,
        })
    }

    /// The key id written in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signature algorithm.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The raw public key (32 bytes for Ed25519, SEC1 uncompressed for P-256).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The matching verification key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::new(self.kid.clone(), self.alg, self.public_key.clone())
    }

    /// Whether `signature_b64` is the signature this key makes of
    /// `message` (Ed25519 only; see [`VerifyingKey::with_signer`]).
    fn made(&self, message: &[u8], signature_b64: &str) -> bool {
        let Signer::Ed(kp) = &self.signer else {
            return false;
        };
        let mut presented = [0u8; 64];
        match B64.decode_slice(signature_b64, &mut presented) {
            Ok(64) => {}
            _ => return false,
        }
        let ours = kp.sign(message);
        aws_lc_rs::constant_time::verify_slices_are_equal(ours.as_ref(), &presented).is_ok()
    }

    /// Serializes and signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let payload =
            serde_json::to_vec(claims).map_err(|_| TokenError::BadClaims("not serializable"))?;
        let mut out = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        B64.encode_string(&payload, &mut out);
        let sig = match &self.signer {
            Signer::Ed(kp) => kp.sign(out.as_bytes()).as_ref().to_vec(),
            Signer::Es(kp) => kp
                .sign(&SystemRandom::new(), out.as_bytes())
                .map_err(|_| TokenError::Crypto("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
        };
        out.push('.');
        B64.encode_string(&sig, &mut out);
        Ok(out)
    }
}

/// Generates an Ed25519 key: `(PKCS#8 v2 document, raw 32-byte public key)`.
/// The PKCS#8 bytes are secret: seal them, never log them.
pub fn generate_ed25519() -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| TokenError::Crypto("Ed25519 key generation failed"))?;
    let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| TokenError::Crypto("Ed25519 key generation failed"))?;
    Ok((doc.as_ref().to_vec(), kp.public_key().as_ref().to_vec()))
}

/// Generates a P-256 key: `(PKCS#8 v1 document, SEC1 uncompressed public
/// key)`. The PKCS#8 bytes are secret: seal them, never log them.
pub fn generate_es256() -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|_| TokenError::Crypto("P-256 key generation failed"))?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
        .map_err(|_| TokenError::Crypto("P-256 key generation failed"))?;
    Ok((doc.as_ref().to_vec(), kp.public_key().as_ref().to_vec()))
}

/// A fresh token id: 16 random bytes, base64url (22 characters).
pub fn new_jti() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Crypto("random generator failed"))?;
    Ok(B64.encode(bytes))
}

/// A public key that verifies tokens with one `kid` and one algorithm.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    alg: Alg,
    public_key: Vec<u8>,
    /// `None` when the bytes are not a valid key for `alg`: such a key is
    /// kept (so the set mirrors the replicated records) but verifies nothing
    /// and is left out of the JWKS.
    parsed: Option<ParsedPublicKey>,
    /// The private half, on a node that holds it: signatures are checked by
    /// signing again (see [`VerifyingKey::with_signer`]).
    signer: Option<Arc<SigningKey>>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("valid", &self.parsed.is_some())
            .field("resigns", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// A verification key from its raw public key (32 bytes for Ed25519, SEC1
    /// uncompressed point for P-256). Invalid bytes give a key that verifies
    /// nothing; use [`VerifyingKey::try_new`] to refuse them instead.
    pub fn new(kid: String, alg: Alg, public_key: Vec<u8>) -> Self {
        let parsed = parse_public_key(alg, &public_key).ok();
        Self {
            kid,
            alg,
            public_key,
            parsed,
            signer: None,
        }
    }

    /// Like [`VerifyingKey::new`] but refuses bytes that are not a valid
    /// public key for `alg`.
    pub fn try_new(kid: String, alg: Alg, public_key: Vec<u8>) -> Result<Self, TokenError> {
        let parsed = Some(parse_public_key(alg, &public_key)?);
        Ok(Self {
            kid,
            alg,
            public_key,
            parsed,
            signer: None,
        })
    }

    /// This key, checking Ed25519 signatures by making them again with
    /// `signer`, its private half, and comparing: an Ed25519 signature is a
    /// function of the key and the message alone (RFC 8032 §5.1.6), so the
    /// one signature this key would make of a token's signing input is the
    /// one every token it signed carries, and any bytes equal to it are a
    /// valid signature. Signing costs about a third of a verification
    /// (docs/BENCHMARKS.md), which is most of what an `Introspect` of a
    /// token seen for the first time costs the node. The comparison runs
    /// in constant time, so its timing tells nothing of the expected bytes;
    /// its outcome is what a verification would say, or stricter (a valid
    /// signature this key did not make is refused). Ignored unless `signer`
    /// is the private half of this very key (same kid, algorithm and public
    /// key) and the algorithm is Ed25519 (ECDSA signatures are randomized).
    pub fn with_signer(mut self, signer: Arc<SigningKey>) -> Self {
        if self.parsed.is_some()
            && self.alg == Alg::EdDSA
            && signer.alg == Alg::EdDSA
            && signer.kid == self.kid
            && signer.public_key == self.public_key
        {
            self.signer = Some(signer);
        }
        self
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The only algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The raw public key bytes.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Whether the public key bytes are a valid key for the algorithm.
    pub fn is_valid(&self) -> bool {
        self.parsed.is_some()
    }

    /// The key as a JWK (RFC 7517, RFC 8037), with `kid`, `alg` and
    /// `use: "sig"`. `None` for an invalid key.
    pub fn to_jwk(&self) -> Option<Value> {
        self.parsed.as_ref()?;
        Some(match self.alg {
            Alg::EdDSA => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(&self.public_key),
                "kid": self.kid,
                "alg": self.alg.name(),
                "use": "sig",
            }),
            Alg::ES256 => {
                // Checked in `parse_public_key`: 0x04 ‖ x(32) ‖ y(32).
                let x = self.public_key.get(1..33)?;
                let y = self.public_key.get(33..65)?;
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": B64.encode(x),
                    "y": B64.encode(y),
                    "kid": self.kid,
                    "alg": self.alg.name(),
                    "use": "sig",
                })
            }
        })
    }

    /// Reads one JWK. `Ok(None)` for a key Tessera does not use (another key
    /// type or algorithm, or `use` other than `sig`); an error for a
    /// supported key with bad material.
    pub fn from_jwk(jwk: &Value) -> Result<Option<Self>, TokenError> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        if field("use").is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let alg = match field("alg").map(Alg::from_name) {
            Some(Ok(alg)) => alg,
            // RFC 8725 §3.1: each key has one algorithm; a key without one
            // (or with one we do not verify) is not used.
            _ => return Ok(None),
        };
        let kid = field("kid").ok_or(TokenError::InvalidKey("JWK without kid"))?;
        let coord = |name: &str| {
            field(name)
                .and_then(|v| B64.decode(v).ok())
                .ok_or(TokenError::InvalidKey("JWK coordinate"))
        };
        let public_key = match (alg, field("kty"), field("crv")) {
            (Alg::EdDSA, Some("OKP"), Some("Ed25519")) => coord("x")?,
            (Alg::ES256, Some("EC"), Some("P-256")) => {
                let (x, y) = (coord("x")?, coord("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(TokenError::InvalidKey("JWK coordinate"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                point
            }
            _ => return Err(TokenError::InvalidKey("JWK type does not match its alg")),
        };
        Self::try_new(kid.to_owned(), alg, public_key).map(Some)
    }

    /// The signature check itself is jsonwebtoken's (aws-lc-rs backend),
    /// with the algorithm fixed by this key, never by the token header, or
    /// a signature made again and compared when this key has its private
    /// half (`with_signer`); all the RFC 8725 checks around it are ours.
    fn verify_signature(&self, message: &[u8], signature_b64: &str) -> Result<(), TokenError> {
        if self.parsed.is_none() {
            return Err(TokenError::BadSignature);
        }
        if let Some(signer) = &self.signer {
            return match signer.made(message, signature_b64) {
                true => Ok(()),
                false => Err(TokenError::BadSignature),
            };
        }
        let (key, alg) = match self.alg {
            Alg::EdDSA => (
                jsonwebtoken::DecodingKey::from_ed_der(&self.public_key),
                jsonwebtoken::Algorithm::EdDSA,
            ),
            Alg::ES256 => (
                jsonwebtoken::DecodingKey::from_ec_der(&self.public_key),
                jsonwebtoken::Algorithm::ES256,
            ),
        };
        match jsonwebtoken::crypto::verify(signature_b64, message, &key, alg) {
            Ok(true) => Ok(()),
            _ => Err(TokenError::BadSignature),
        }
    }
}

fn parse_public_key(alg: Alg, bytes: &[u8]) -> Result<ParsedPublicKey, TokenError> {
    match alg {
        Alg::EdDSA if bytes.len() == 32 => ParsedPublicKey::new(&ED25519, bytes)
            .map_err(|_| TokenError::InvalidKey("not an Ed25519 public key")),
        // Only the uncompressed form: it is what JWKs are built from.
        Alg::ES256 if bytes.len() == 65 && bytes[0] == 0x04 => {
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, bytes)
                .map_err(|_| TokenError::InvalidKey("not a P-256 public key"))
        }
        Alg::EdDSA => Err(TokenError::InvalidKey(
            "Ed25519 public key must be 32 bytes",
        )),
        Alg::ES256 => Err(TokenError::InvalidKey(
            "P-256 public key must be a 65-byte uncompressed point",
        )),
    }
}

/// The keys a verifier trusts, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeySet {
    /// A set of keys. With duplicate `kid`s, the last one wins.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
        }
    }

    /// Adds or replaces a key.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, ordered by `kid`.
    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// The set as a JWK Set (`{"keys": [...]}`), ordered by `kid`; invalid
    /// keys are left out.
    pub fn to_jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .values()
            .filter_map(VerifyingKey::to_jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// [`KeySet::to_jwks`] as JSON text.
    pub fn to_jwks_json(&self) -> String {
        self.to_jwks().to_string()
    }

    /// Reads a JWK Set. Keys Tessera does not use are skipped; a supported
    /// key with bad material is an error.
    pub fn from_jwks_json(text: &str) -> Result<Self, TokenError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|_| TokenError::Malformed("JWKS json"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(TokenError::Malformed("JWKS without keys"))?;
        let mut set = KeySet::default();
        for jwk in keys {
            if let Some(key) = VerifyingKey::from_jwk(jwk)? {
                set.insert(key);
            }
        }
        Ok(set)
    }
}

impl FromIterator<VerifyingKey> for KeySet {
    fn from_iter<I: IntoIterator<Item = VerifyingKey>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// What [`verify`] expects of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyParams {
    /// The exact `iss`.
    pub issuer: String,
    /// If set, this audience must be one of `aud` (exact match).
    pub audience: Option<String>,
    /// The current time, unix seconds.
    pub now: u64,
    /// Clock leeway in seconds for `exp`, `nbf`, `iat`.
    pub leeway: u64,
    /// Maximum token length in bytes, checked before any parsing.
    pub max_len: usize,
    /// Maximum delegation chain length (and actor nesting).
    pub max_chain: usize,
}

impl VerifyParams {
    /// Parameters with the defaults: no audience check, [`DEFAULT_LEEWAY`],
    /// [`DEFAULT_MAX_LEN`], [`DEFAULT_MAX_CHAIN`].
    pub fn new(issuer: impl Into<String>, now: u64) -> Self {
        Self {
            issuer: issuer.into(),
            audience: None,
            now,
            leeway: DEFAULT_LEEWAY,
            max_len: DEFAULT_MAX_LEN,
            max_chain: DEFAULT_MAX_CHAIN,
        }
    }

    /// The same parameters, requiring `audience` in `aud`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }
}

/// A JSON object that refuses duplicate members (RFC 8725 §3.4: a header
/// `{"alg":"none","alg":"EdDSA"}` must not mean one thing here and another
/// elsewhere).
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictObject, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    out.insert(k, v);
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Header parameters that would carry a key or point at one.
const FORBIDDEN_HEADERS: [&str; 4] = ["jku", "jwk", "x5u", "x5c"];

/// Verifies a compact JWS access token and returns its claims. See the
/// module documentation for the exact order of checks.
pub fn verify(token: &str, keys: &KeySet, params: &VerifyParams) -> Result<Claims, TokenError> {
    if token.len() > params.max_len {
        return Err(TokenError::TooLarge);
    }
    let (header_b64, payload_b64, sig_b64, signing_input) = split(token)?;

    let header = decode_header(header_b64)?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name)?,
        _ => return Err(TokenError::Malformed("header alg")),
    };
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    match header.get("typ") {
        Some(Value::String(t))
            if t.eq_ignore_ascii_case(TOKEN_TYPE)
                || t.eq_ignore_ascii_case("application/at+jwt") => {}
        _ => return Err(TokenError::WrongType),
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => kid,
        _ => return Err(TokenError::Malformed("header kid")),
    };
    let key = keys
        .get(kid)
        .ok_or_else(|| TokenError::UnknownKey(echo(kid)))?;
    if key.alg != alg {
        return Err(TokenError::AlgorithmMismatch);
    }

    // Decoded here only for a precise error; jsonwebtoken decodes it again.
    if B64.decode(sig_b64).is_err() {
        return Err(TokenError::Malformed("signature encoding"));
    }
    key.verify_signature(signing_input.as_bytes(), sig_b64)?;

    let payload = B64
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed("payload encoding"))?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            TokenError::BadClaims("claim missing or of the wrong type")
        }
        _ => TokenError::Malformed("payload json"),
    })?;
    check_claims(&claims, params)?;
    Ok(claims)
}

/// Splits a token into header, payload and signature segments plus the
/// signing input, refusing anything but exactly three non-empty segments.
fn split(token: &str) -> Result<(&str, &str, &str, &str), TokenError> {
    let mut dots = [0usize; 2];
    let mut n = 0;
    for (i, b) in token.bytes().enumerate() {
        if b == b'.' {
            // Stop at the third dot: junk costs a short scan, not a full split.
            if n == 2 {
                return Err(TokenError::Malformed("segments"));
            }
            dots[n] = i;
            n += 1;
        }
    }
    if n != 2 {
        return Err(TokenError::Malformed("segments"));
    }
    // Dots are ASCII, so these are char boundaries.
    let (header, rest) = token.split_at(dots[0]);
    let payload = &rest[1..dots[1] - dots[0]];
    let signature = &token[dots[1] + 1..];
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    if header.len() > MAX_HEADER_B64 {
        return Err(TokenError::Malformed("header too large"));
    }
    Ok((header, payload, signature, &token[..dots[1]]))
}

fn decode_header(header_b64: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed("header encoding"))?;
    serde_json::from_slice::<StrictObject>(&bytes)
        .map(|o| o.0)
        .map_err(|_| TokenError::Malformed("header json"))
}

/// The claim checks of [`verify`] alone: issuer, audience, times, `jti`,
/// chain length. For callers that keep tokens whose signature they already
/// verified and must re-check them against a later `now`.
pub fn check_claims(claims: &Claims, params: &VerifyParams) -> Result<(), TokenError> {
    if claims.iss != params.issuer {
        return Err(TokenError::WrongIssuer);
    }
    let now = params.now;
    if claims.exp.saturating_add(params.leeway) <= now {
        return Err(TokenError::Expired);
    }
    let horizon = now.saturating_add(params.leeway);
    if claims.nbf > horizon {
        return Err(TokenError::NotYetValid);
    }
    if claims.iat > horizon {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(aud) = &params.audience {
        if !claims.aud.contains(aud) {
            return Err(TokenError::WrongAudience);
        }
    }
    if claims.jti.is_empty() {
        return Err(TokenError::BadClaims("empty jti"));
    }
    if claims.sub.is_empty() {
        return Err(TokenError::BadClaims("empty sub"));
    }
    let act_depth = claims.act.as_ref().map_or(0, |a| a.depth());
    if claims.chain.len() > params.max_chain || act_depth > params.max_chain {
        return Err(TokenError::ChainTooLong);
    }
    Ok(())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
