//! The key ring: the key-encryption key (KEK), sealing of signing keys for
//! the replicated log, and the signing and verification keys derived from the
//! replicated key records.
//!
//! Private signing keys live in the state machine (and so in the Raft log and
//! in snapshots) only sealed with AES-256-GCM under the KEK. Every node loads
//! the same KEK from a file or an environment variable; a development node
//! generates one. The KEK's id (a hash prefix) travels with each record, so a
//! node with the wrong KEK fails clearly instead of signing garbage.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;

use crate::raft::{KeyRecord, KeyState};
use crate::token::{self, KeySet, SigningKey, VerifyingKey};

/// Errors of the key layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The KEK could not be read or has the wrong shape.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// A sealed key could not be opened with this node's KEK.
    #[error(
        "key {kid} cannot be unsealed with this node's key-encryption key (sealed under {kek_id})"
    )]
    Unseal {
        /// The key id.
        kid: String,
        /// The KEK id the record names.
        kek_id: String,
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

/// Generates a new Ed25519 signing key record, sealed under `kek`, in `state`.
pub fn new_ed25519_record(kek: &Kek, state: KeyState, now: u64) -> Result<KeyRecord, KeyError> {
    let (pkcs8, public_key) = token::generate_ed25519()?;
    let mut id = [0u8; 9];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| KeyError::Crypto("rng".into()))?;
    let kid = format!(
        "ed-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    );
    let sealed_private_key = kek.seal(&kid, &pkcs8)?;
    Ok(KeyRecord {
        kid,
        alg: "EdDSA".into(),
        public_key,
        sealed_private_key,
        kek_id: kek.id().to_string(),
        state,
        created_at: now,
    })
}

/// The keys derived from one version of the replicated key ring: the key
/// that signs and the set that verifies.
pub struct KeyRing {
    version: u64,
    signer: Option<SigningKey>,
    verifiers: KeySet,
}

impl KeyRing {
    /// Derives the ring from the replicated records. The newest active key
    /// signs; pending, active and retired keys verify.
    pub fn from_records(version: u64, records: &[KeyRecord], kek: &Kek) -> Result<Self, KeyError> {
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
        let signer = match newest_active {
            None => None,
            Some(r) => {
                let pkcs8 =
                    kek.open(&r.kid, &r.sealed_private_key)
                        .ok_or_else(|| KeyError::Unseal {
                            kid: r.kid.clone(),
                            kek_id: r.kek_id.clone(),
                        })?;
                let alg = token::Alg::from_name(&r.alg)?;
                Some(SigningKey::from_pkcs8(r.kid.clone(), alg, &pkcs8)?)
            }
        };
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
        self.signer.as_ref().ok_or(KeyError::NoActiveKey)
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
        let ring = KeyRing::from_records(3, &[a.clone(), b.clone(), p.clone()], &k).unwrap();
        assert_eq!(ring.signer().unwrap().kid(), b.kid);
        assert_eq!(ring.verifiers().len(), 3);
        assert_eq!(ring.version(), 3);
    }

    #[test]
    fn wrong_kek_is_a_clear_error() {
        let a = new_ed25519_record(&kek(), KeyState::Active, 10).unwrap();
        let other = Kek::from_bytes(&[9u8; 32]).unwrap();
        assert!(matches!(
            KeyRing::from_records(1, &[a], &other),
            Err(KeyError::Unseal { .. })
        ));
    }

    #[test]
    fn no_active_key() {
        let p = new_ed25519_record(&kek(), KeyState::Pending, 1).unwrap();
        let ring = KeyRing::from_records(1, &[p], &kek()).unwrap();
        assert!(matches!(ring.signer(), Err(KeyError::NoActiveKey)));
    }
}
