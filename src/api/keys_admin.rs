//! The signing-key lifecycle as the service runs it: the JWKS document,
//! on-demand and scheduled rotation, activation and removal, and KEK
//! re-sealing. Every change is a replicated command proposed by the leader
//! and guarded at apply time (see `store::state::keys`): exactly one key
//! per rotation, however many callers or nodes ask at once.

use std::time::Duration;

use super::{ApiError, Shared};
use crate::keys;
use crate::keys::lifecycle::{self, Timing};
use crate::raft::{KeyRecord, KeyState, Op};
use crate::token::Alg;

/// How often a rotation decided on a ring that changed meanwhile is tried
/// again before the caller is told to retry.
const RACE_ATTEMPTS: usize = 3;

/// Signing-key rotation (see docs/OPERATIONS.md, "Signing keys").
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// Rotate the active signing key after it has signed this long; `None`
    /// (the default): only on demand (`tessera keys rotate`).
    pub rotation_period: Option<Duration>,
    /// How long a new key is published in the JWKS before it may sign: at
    /// least as long as verifiers cache the JWKS (it is the `max-age` the
    /// JWKS is served with). Default 10 minutes.
    pub publish_ahead: Duration,
    /// How often the leader checks whether a key is due for activation,
    /// removal or scheduled rotation. Default 10 s.
    pub check_interval: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            rotation_period: None,
            publish_ahead: Duration::from_secs(600),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// The JSON Web Key Set as this node serves it.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The JWK Set document (RFC 7517): every pending, active and retired
    /// key.
    pub json: String,
    /// The applied revision it was built from.
    pub revision: u64,
    /// How long a verifier may cache it (`Cache-Control: max-age`): the
    /// publish-ahead window, so a cached copy always holds the key that
    /// signs next.
    pub max_age: Duration,
}

/// What a rotation request did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The key the rotation is about (new, or the one already pending).
    pub key: KeyRecord,
    /// False: a rotation was already in progress and this is its key.
    pub created: bool,
    /// The key was activated at once (emergency rotation).
    pub activated: bool,
    /// The applied revision after the rotation.
    pub revision: u64,
}

impl Shared {
    /// Sets the key-rotation settings.
    pub fn with_key_settings(mut self, keys: KeySettings) -> Self {
        self.keys = keys;
        self
    }

    /// The key-rotation settings.
    pub fn key_settings(&self) -> &KeySettings {
        &self.keys
    }

    /// The JWKS document. `UNAVAILABLE` on a node that cannot vouch for
    /// its state (it might publish a stale key set). This is what every
    /// JWKS endpoint (gRPC `GetJwks`, HTTPS `/.well-known/jwks.json`)
    /// serves.
    pub fn jwks(&self) -> Result<Jwks, ApiError> {
        self.ensure_ready()?;
        let revision = self.state.revision();
        let ring = self.key_ring()?;
        Ok(Jwks {
            json: ring.verifiers().to_jwks_json(),
            revision,
            max_age: self.keys.publish_ahead,
        })
    }

    /// The ids of the KEKs this node holds, current first.
    pub fn kek_ids(&self) -> Vec<String> {
        self.keks.ids().into_iter().map(str::to_owned).collect()
    }

    /// Seconds a retired key stays published: every token it signed has
    /// expired (longest lifetime), plus verifiers' leeway and clock skew.
    /// The larger settings of an earlier run count while they are in force
    /// ([`TokenSettings::bounds`]).
    pub fn retire_grace(&self) -> u64 {
        let (lifetime, leeway, skew) = self.settings.bounds(self.clock.now());
        lifetime.saturating_add(leeway).saturating_add(skew)
    }

    /// Seconds from a new key's creation to its first signature: the JWKS
    /// max-age (publish-ahead) plus the clock skew tolerated between nodes.
    /// The key's `activate_after` is stamped with the creating leader's
    /// clock, and the leader that activates it judges it by its own; one
    /// running up to `max_clock_skew` ahead would otherwise let the key
    /// sign while a JWKS copy cached just before it was published is still
    /// fresh (its verifier then refuses the token: unknown kid).
    pub fn activation_delay(&self) -> u64 {
        self.keys
            .publish_ahead
            .as_secs()
            .saturating_add(self.settings.max_clock_skew)
    }

    fn timing(&self) -> Timing {
        Timing {
            rotation_period: self.keys.rotation_period.map(|p| p.as_secs()),
            publish_ahead: self.activation_delay(),
            retire_grace: self.retire_grace(),
        }
    }

    /// The key ring's records, oldest first, after a read barrier.
    pub async fn list_keys(&self) -> Result<(Vec<KeyRecord>, u64), ApiError> {
        let revision = self.read_barrier().await?;
        let mut keys = self.state.keys();
        keys.sort_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)));
        Ok((keys, revision))
    }

    /// On-demand rotation, on the leader only (elsewhere `UNAVAILABLE`
    /// with the leader's address): publishes a new pending key of `alg`
    /// (EdDSA when `None`), or answers the key of a rotation already in
    /// progress. With `now`, the key signs at once (an emergency: verifiers
    /// that cached the JWKS refuse its tokens until they refresh). A
    /// rotation in progress to another algorithm than the one asked for is
    /// `FailedPrecondition`: answering it (or activating it, with `now`)
    /// would hand the operator a key of an algorithm they did not ask for.
    pub async fn rotate_signing_key(
        &self,
        alg: Option<Alg>,
        now: bool,
    ) -> Result<Rotation, ApiError> {
        self.ensure_leader_for("key rotation")?;
        self.read_barrier().await?;
        for _ in 0..RACE_ATTEMPTS {
            let version = self.state.keys_version();
            let at = self.clock.now();
            let pending = self
                .state
                .keys()
                .into_iter()
                .find(|k| k.state == KeyState::Pending);
            let (key, created, revision) = match pending {
                Some(k) => {
                    if let Some(want) = alg.filter(|a| a.name() != k.alg) {
                        return Err(ApiError::FailedPrecondition(format!(
                            "a rotation to key {} ({}) is already in progress, not to {}: rotate with that algorithm, or once it is active rotate again",
                            k.kid,
                            k.alg,
                            want.name()
                        )));
                    }
                    (k, false, self.state.revision())
                }
                None => {
                    let activate_after = if now {
                        at
                    } else {
                        at.saturating_add(self.activation_delay())
                    };
                    let alg = alg.unwrap_or(Alg::EdDSA);
                    let key = keys::new_record(self.keks.current(), alg, at, activate_after)?;
                    let r = self
                        .write(Op::AddPendingKey {
                            key: key.clone(),
                            expected_version: version,
                        })
                        .await?;
                    if r.changed == 0 {
                        // Another rotation won the race: look again.
                        continue;
                    }
                    tracing::info!(kid = %key.kid, alg = %key.alg, revision = r.revision, "signing key published (pending)");
                    (key, true, r.revision)
                }
            };
            if !now {
                return Ok(Rotation {
                    key,
                    created,
                    activated: false,
                    revision,
                });
            }
            let r = self
                .write(Op::ActivateKey {
                    kid: key.kid.clone(),
                    retire_grace: self.retire_grace(),
                    early: true,
                })
                .await?;
            tracing::warn!(kid = %key.kid, revision = r.revision, "signing key activated at once (emergency rotation)");
            return Ok(Rotation {
                key,
                created,
                activated: r.changed > 0,
                revision: r.revision,
            });
        }
        Err(ApiError::Unavailable {
            reason: "the key ring kept changing during the rotation; retry".into(),
            leader: None,
        })
    }

    /// The leader's scheduled key work: activates a pending key whose
    /// publish-ahead window has passed, removes retired keys whose tokens
    /// have all expired, and starts a scheduled rotation. Does nothing on
    /// a follower. Returns how many commands changed the ring.
    pub async fn run_key_duties(&self) -> Result<u64, ApiError> {
        // Every node shows when the next rotation is due (0: not scheduled).
        let due = lifecycle::rotation_due(&self.state.keys(), &self.timing());
        self.metrics().set_key_rotation_due(due.unwrap_or(0));
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.current_leader != Some(m.id) {
                return Ok(0);
            }
        }
        // Plan on everything committed so far, never on a stale view.
        self.read_barrier().await?;
        let timing = self.timing();
        let plan = lifecycle::plan(&self.state.keys(), self.clock.now(), &timing);
        let mut changed = 0;
        if let Some(kid) = plan.activate {
            let r = self
                .write(Op::ActivateKey {
                    kid: kid.clone(),
                    retire_grace: timing.retire_grace,
                    early: false,
                })
                .await?;
            if r.changed > 0 {
                tracing::info!(%kid, revision = r.revision, "signing key activated; the previous one is retired");
                changed += 1;
            }
        }
        for kid in plan.remove {
            let r = self.write(Op::RemoveKey { kid: kid.clone() }).await?;
            if r.changed > 0 {
                tracing::info!(%kid, revision = r.revision, "retired signing key removed from the JWKS");
                changed += 1;
            }
        }
        if plan.rotate {
            let alg = self
                .state
                .keys()
                .iter()
                .filter(|k| k.state == KeyState::Active)
                .max_by_key(|k| k.created_at)
                .and_then(|k| Alg::from_name(&k.alg).ok())
                .unwrap_or(Alg::EdDSA);
            let r = self.rotate_signing_key(Some(alg), false).await?;
            if r.created {
                tracing::info!(kid = %r.key.kid, "scheduled rotation started");
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// KEK rotation, on the leader only: re-seals every signing key under
    /// this node's current KEK in one replicated command. Returns how many
    /// keys were re-sealed (0: all already were) and the revision.
    pub async fn reseal_keys(&self) -> Result<(u64, u64), ApiError> {
        self.ensure_leader_for("KEK rotation")?;
        self.read_barrier().await?;
        for _ in 0..RACE_ATTEMPTS {
            let version = self.state.keys_version();
            let records = self.state.keys();
            let Some(keys) = self.keks.reseal(&records)? else {
                return Ok((0, self.state.revision()));
            };
            let n = keys.len() as u64;
            let r = self
                .write(Op::ResealKeys {
                    keys,
                    expected_version: version,
                })
                .await?;
            if r.changed > 0 {
                tracing::info!(keys = n, kek_id = %self.keks.current().id(), revision = r.revision, "signing keys re-sealed under the current KEK");
                return Ok((n, r.revision));
            }
        }
        Err(ApiError::Unavailable {
            reason: "the key ring kept changing during the re-sealing; retry".into(),
            leader: None,
        })
    }

    /// `UNAVAILABLE` with the leader's address unless this node leads
    /// (and still holds its quorum): key material is generated by the
    /// leader only.
    pub(super) fn ensure_leader_for(&self, what: &str) -> Result<(), ApiError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(m.id) {
            return self.check_lease();
        }
        Err(ApiError::Unavailable {
            reason: format!("{what} runs on the leader"),
            leader: self.leader_hint(),
        })
    }
}
