//! The key ring: the key-encryption key (KEK), sealing of signing keys for
//! the replicated log, and the signing and verification keys derived from the
//! replicated key records.
//!
//! Private signing keys live in the state machine (and so in the Raft log and
//! in snapshots) only sealed with AES-256-GCM under the KEK. Every node loads
//! the same KEK from a file or an environment variable; a development node
//! generates one. The KEK's id (a hash prefix) travels with each record, so a
//! node with the wrong KEK fails clearly instead of signing garbage.
//!
//! During a KEK rotation a node holds two KEKs ([`KekRing`]): the current
//! one seals, either opens. [`lifecycle`] decides which key-lifecycle
//! command the leader proposes next.

pub mod lifecycle;

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;

use crate::raft::{KeyRecord, KeyState, KeyTimes, ResealedKey};
use crate::token::{self, KeySet, SigningKey, VerifyingKey};

/// Errors of the key layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The KEK could not be read or has the wrong shape.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// A sealed key could not be opened with this node's KEK(s).
    #[error(
        "signing key {kid} is sealed under the key-encryption key with id {kek_id}, which this node cannot use (it holds {held}): configure that KEK as kek_file or previous_kek_file (`tessera kek id --kek-file F` prints a file's id)"
    )]
    Unseal {
        /// The key id.
        kid: String,
        /// The KEK id the record names: the KEK this node needs.
        kek_id: String,
        /// The ids of the KEKs this node holds.
        held: String,
    },
    /// The key ring has no active signing key.
    #[error("no active signing key")]
    NoActiveKey,
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A record could not be turned into a key.
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

/// The 256-bit key-encryption key. Deliberately not `Debug` or `Display`.
pub struct Kek {
    key: LessSafeKey,
    id: String,
}

impl Kek {
    /// Builds a KEK from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != 32 {
            return Err(KeyError::Kek(format!(
                "must be 32 bytes, got {}",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyError::Kek("not a valid AES-256 key".into()))?;
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &[b"tessera-kek-id:".as_slice(), bytes].concat(),
        );
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// Parses a KEK written as base64 (standard or URL-safe) or 64 hex digits,
    /// surrounding whitespace ignored.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| KeyError::Kek("bad hex".into()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
                .map_err(|_| KeyError::Kek("expected 32 bytes as base64 or 64 hex digits".into()))?
        };
        Self::from_bytes(&bytes)
    }

    /// Loads a KEK from a file (base64 or hex text).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError::Kek(format!("reading {}: {e}", path.display())))?;
        Self::from_text(&text)
    }

    /// Loads the KEK at `path`, generating it (mode 0600) if the file does not
    /// exist. For development nodes only.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::from_file(path);
        }
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Crypto("rng".into()))?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        write_private(path, text.as_bytes())
            .map_err(|e| KeyError::Kek(format!("writing {}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// A short public id of this KEK (hash prefix), safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext`, binding it to `aad` (the key id). Output: nonce || ciphertext+tag.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Crypto("rng".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyError::Crypto("seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`Kek::seal`] produced. `None` if the data was not sealed
    /// by this KEK for this `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The KEKs a node holds: the current one, which seals, and during a KEK
/// rotation the previous one, which still opens keys not yet re-sealed.
pub struct KekRing {
    current: Kek,
    previous: Option<Kek>,
}

impl From<Kek> for KekRing {
    fn from(current: Kek) -> Self {
        Self {
            current,
            previous: None,
        }
    }
}

impl KekRing {
    /// The current KEK and, optionally, the previous one (ignored if it is
    /// the same key).
    pub fn new(current: Kek, previous: Option<Kek>) -> Self {
        let previous = previous.filter(|p| p.id() != current.id());
        Self { current, previous }
    }

    /// The KEK that seals new and re-sealed keys.
    pub fn current(&self) -> &Kek {
        &self.current
    }

    /// The ids of the KEKs held, current first (safe to log).
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(Kek::id)
            .collect()
    }

    /// The PKCS#8 private key of `record`, opened with the KEK its record
    /// names. The error names the KEK id this node would need.
    pub fn open(&self, record: &KeyRecord) -> Result<Vec<u8>, KeyError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|k| k.id() == record.kek_id)
            .find_map(|k| k.open(&record.kid, &record.sealed_private_key))
            .ok_or_else(|| KeyError::Unseal {
                kid: record.kid.clone(),
                kek_id: record.kek_id.clone(),
                held: self.ids().join(", "),
            })
    }

    /// Checks that every record opens: a node fails at start, naming the
    /// KEK it needs, rather than at its first signature after a rotation.
    pub fn check(&self, records: &[KeyRecord]) -> Result<(), KeyError> {
        for r in records {
            self.open(r)?;
        }
        Ok(())
    }

    /// Every record's private key sealed under the current KEK (for one
    /// [`crate::raft::Op::ResealKeys`]); `None` if all already are.
    pub fn reseal(&self, records: &[KeyRecord]) -> Result<Option<Vec<ResealedKey>>, KeyError> {
        if records.iter().all(|r| r.kek_id == self.current.id()) {
            return Ok(None);
        }
        records
            .iter()
            .map(|r| {
                let pkcs8 = self.open(r)?;
                Ok(ResealedKey {
                    kid: r.kid.clone(),
                    sealed_private_key: self.current.seal(&r.kid, &pkcs8)?,
                    kek_id: self.current.id().to_string(),
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()
            .map(Some)
    }
}

/// Generates a new Ed25519 signing key record, sealed under `kek`, in
/// `state` (the bootstrap key: active from its creation).
pub fn new_ed25519_record(kek: &Kek, state: KeyState, now: u64) -> Result<KeyRecord, KeyError> {
    let mut r = new_record(kek, token::Alg::EdDSA, now, now)?;
    r.state = state;
    if state == KeyState::Active {
        r.times.activated_at = Some(now);
    }
    Ok(r)
}

/// Generates a new pending signing key for `alg`, sealed under `kek`,
/// created at `now` and allowed to sign from `activate_after`.
pub fn new_record(
    kek: &Kek,
    alg: token::Alg,
    now: u64,
    activate_after: u64,
) -> Result<KeyRecord, KeyError> {
    let (pkcs8, public_key) = match alg {
        token::Alg::EdDSA => token::generate_ed25519()?,
        token::Alg::ES256 => token::generate_es256()?,
    };
    let mut id = [0u8; 9];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| KeyError::Crypto("rng".into()))?;
    let prefix = match alg {
        token::Alg::EdDSA => "ed",
        token::Alg::ES256 => "es",
    };
    let kid = format!(
        "{prefix}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    );
    let sealed_private_key = kek.seal(&kid, &pkcs8)?;
    Ok(KeyRecord {
        kid,
        alg: alg.name().into(),
        public_key,
        sealed_private_key,
        kek_id: kek.id().to_string(),
        state: KeyState::Pending,
        created_at: now,
        times: KeyTimes {
            activate_after,
            ..Default::default()
        },
    })
}

/// The keys derived from one version of the replicated key ring: the key
/// that signs and the set that verifies.
pub struct KeyRing {
    version: u64,
    /// Why this node cannot sign, when the active key cannot be opened
    /// (its KEK is not configured here): verifying needs only public keys,
    /// so the ring still verifies and publishes; only signing fails.
    signer: Result<Option<Arc<SigningKey>>, KeyError>,
    verifiers: KeySet,
}

impl KeyRing {
    /// Derives the ring from the replicated records. The newest active key
    /// signs; pending, active and retired keys verify. An active key this
    /// node cannot open fails only [`KeyRing::signer`]: a node midway
    /// through a KEK rotation still verifies every token and serves the
    /// JWKS (before, the whole ring failed, and Introspect took that for
    /// an invalid token and answered `active=false` for valid ones).
    pub fn from_records(
        version: u64,
        records: &[KeyRecord],
        keks: &KekRing,
    ) -> Result<Self, KeyError> {
        let mut verifiers = Vec::with_capacity(records.len());
        let mut newest_active: Option<&KeyRecord> = None;
        for r in records {
            let alg = token::Alg::from_name(&r.alg)?;
            verifiers.push(VerifyingKey::new(r.kid.clone(), alg, r.public_key.clone()));
            if r.state == KeyState::Active
                && newest_active.is_none_or(|n| (r.created_at, &r.kid) > (n.created_at, &n.kid))
            {
                newest_active = Some(r);
            }
        }
        let signer = newest_active
            .map(|r| {
                let pkcs8 = keks.open(r)?;
                let alg = token::Alg::from_name(&r.alg)?;
                Ok(Arc::new(SigningKey::from_pkcs8(
                    r.kid.clone(),
                    alg,
                    &pkcs8,
                )?))
            })
            .transpose();
        // The active key's tokens are checked by signing again, cheaper
        // than verifying (`VerifyingKey::with_signer`).
        if let Ok(Some(s)) = &signer {
            for v in verifiers.iter_mut().filter(|v| v.kid() == s.kid()) {
                *v = v.clone().with_signer(s.clone());
            }
        }
        Ok(Self {
            version,
            signer,
            verifiers: KeySet::new(verifiers),
        })
    }

    /// The state-machine key version this ring was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> Result<&SigningKey, KeyError> {
        match &self.signer {
            Ok(Some(key)) => Ok(key.as_ref()),
            Ok(None) => Err(KeyError::NoActiveKey),
            Err(e) => Err(e.clone()),
        }
    }

    /// The keys that verify tokens (and are published in JWKS).
    pub fn verifiers(&self) -> &KeySet {
        &self.verifiers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_bytes(&[7u8; 32]).unwrap()
    }

    fn keks() -> KekRing {
        kek().into()
    }

    #[test]
    fn seal_round_trip_and_aad_binding() {
        let k = kek();
        let sealed = k.seal("kid-1", b"secret").unwrap();
        assert_eq!(k.open("kid-1", &sealed).unwrap(), b"secret");
        assert!(k.open("kid-2", &sealed).is_none());
        assert!(Kek::from_bytes(&[8u8; 32])
            .unwrap()
            .open("kid-1", &sealed)
            .is_none());
        assert!(k.open("kid-1", &sealed[..5]).is_none());
    }

    #[test]
    fn kek_text_forms() {
        let hex = "07".repeat(32);
        assert_eq!(Kek::from_text(&hex).unwrap().id(), kek().id());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            Kek::from_text(&format!(" {b64}\n")).unwrap().id(),
            kek().id()
        );
        assert!(matches!(Kek::from_text("short"), Err(KeyError::Kek(_))));
        assert!(matches!(Kek::from_bytes(&[0; 16]), Err(KeyError::Kek(_))));
    }

    #[test]
    fn ring_signs_with_newest_active_and_verifies_all() {
        let k = kek();
        let a = new_ed25519_record(&k, KeyState::Active, 10).unwrap();
        let b = new_ed25519_record(&k, KeyState::Active, 20).unwrap();
        let p = new_ed25519_record(&k, KeyState::Pending, 30).unwrap();
        let ring = KeyRing::from_records(3, &[a.clone(), b.clone(), p.clone()], &k.into()).unwrap();
        assert_eq!(ring.signer().unwrap().kid(), b.kid);
        assert_eq!(ring.verifiers().len(), 3);
        assert_eq!(ring.version(), 3);
    }

    #[test]
    fn a_ring_whose_active_key_this_node_cannot_open_still_verifies() {
        let k = kek();
        let a = new_ed25519_record(&k, KeyState::Active, 10).unwrap();
        let claims: token::Claims = serde_json::from_value(serde_json::json!({
            "iss": "https://i", "sub": "s", "aud": "a", "exp": 200, "iat": 100,
            "nbf": 100, "jti": "j", "scope": "x", "client_id": "c",
        }))
        .unwrap();
        let jwt = KeyRing::from_records(1, std::slice::from_ref(&a), &k.into())
            .unwrap()
            .signer()
            .unwrap()
            .sign(&claims)
            .unwrap();
        let other = Kek::from_bytes(&[9u8; 32]).unwrap();
        let other_id = other.id().to_string();
        let ring = KeyRing::from_records(1, &[a], &other.into()).unwrap();
        let params = token::VerifyParams::new("https://i", 150).with_audience("a");
        assert_eq!(
            token::verify(&jwt, ring.verifiers(), &params).unwrap().jti,
            "j"
        );
        assert_eq!(ring.verifiers().len(), 1);
        let Err(err) = ring.signer() else {
            panic!("signed with a key sealed under another KEK");
        };
        assert!(matches!(&err, KeyError::Unseal { kek_id, held, .. }
            if *kek_id == kek().id() && *held == other_id));
        // The message names the KEK id needed, never the KEK.
        assert!(err.to_string().contains(kek().id()));
    }

    #[test]
    fn no_active_key() {
        let p = new_ed25519_record(&kek(), KeyState::Pending, 1).unwrap();
        let ring = KeyRing::from_records(1, &[p], &keks()).unwrap();
        assert!(matches!(ring.signer(), Err(KeyError::NoActiveKey)));
    }

    #[test]
    fn es256_keys_sign_and_verify_with_their_own_alg() {
        let k = kek();
        let r = new_record(&k, token::Alg::ES256, 5, 5).unwrap();
        assert!(r.kid.starts_with("es-"));
        assert_eq!(r.alg, "ES256");
        assert_eq!(r.public_key.len(), 65);
        let mut active = r.clone();
        active.state = KeyState::Active;
        let ring = KeyRing::from_records(1, &[active], &keks()).unwrap();
        let signer = ring.signer().unwrap();
        assert_eq!(signer.alg(), token::Alg::ES256);
        let claims: token::Claims = serde_json::from_value(serde_json::json!({
            "iss": "https://i", "sub": "s", "aud": "a", "exp": 200, "iat": 100,
            "nbf": 100, "jti": "j", "scope": "x", "client_id": "c",
        }))
        .unwrap();
        let jwt = signer.sign(&claims).unwrap();
        let params = token::VerifyParams::new("https://i", 150).with_audience("a");
        assert_eq!(
            token::verify(&jwt, ring.verifiers(), &params).unwrap().jti,
            "j"
        );
        // The JWKS carries the key as an EC P-256 key with its alg pinned.
        let jwks: serde_json::Value =
            serde_json::from_str(&ring.verifiers().to_jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "EC");
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    }

    #[test]
    fn kek_ring_opens_with_either_kek_and_reseals_under_the_current() {
        let old = Kek::from_bytes(&[1u8; 32]).unwrap();
        let new = || Kek::from_bytes(&[2u8; 32]).unwrap();
        let a = new_record(&old, token::Alg::EdDSA, 1, 1).unwrap();
        let b = new_record(&new(), token::Alg::ES256, 1, 1).unwrap();
        let both = KekRing::new(new(), Some(Kek::from_bytes(&[1u8; 32]).unwrap()));
        both.check(&[a.clone(), b.clone()]).unwrap();
        let resealed = both.reseal(&[a.clone(), b.clone()]).unwrap().unwrap();
        assert_eq!(resealed.len(), 2);
        assert!(resealed.iter().all(|r| r.kek_id == new().id()));
        // Once applied, the new KEK alone opens everything; the old alone
        // names the KEK it needs.
        let apply = |mut r: KeyRecord| {
            let s = resealed.iter().find(|s| s.kid == r.kid).unwrap();
            r.sealed_private_key = s.sealed_private_key.clone();
            r.kek_id = s.kek_id.clone();
            r
        };
        let (a2, b2) = (apply(a), apply(b));
        let only_new = KekRing::from(new());
        only_new.check(&[a2.clone(), b2.clone()]).unwrap();
        assert!(
            only_new
                .reseal(std::slice::from_ref(&a2))
                .unwrap()
                .is_none(),
            "nothing to do"
        );
        let only_old = KekRing::from(old);
        match only_old.check(&[a2]) {
            Err(KeyError::Unseal { kek_id, .. }) => assert_eq!(kek_id, new().id()),
            other => panic!("expected Unseal, got {:?}", other.err()),
        }
        // The same KEK twice is one KEK.
        assert_eq!(KekRing::new(new(), Some(new())).ids().len(), 1);
    }
}
