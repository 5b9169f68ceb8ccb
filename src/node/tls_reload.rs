//! Certificate reload without restart: the API, Raft and HTTPS listeners
//! and the Raft client pick up renewed certificate, key and CA files on
//! `SIGHUP` ([`super::run_with_reload`]), on [`super::Node::reload_tls`],
//! and on a periodic check of the files' contents.
//!
//! A reload reads the three files once ([`LoadedTls`]), checks them (key
//! matches certificate, certificate chains to the CA and is valid now, and
//! still names this node), builds every configuration from that one
//! reading, and only then installs them all. Anything wrong and nothing
//! changes: the refusal is logged once per distinct content of the files,
//! and the previous material stays in use. Established connections keep
//! the session they negotiated; the next handshake uses the new material.
//!
//! The same task warns, at most hourly, once the certificate expires within
//! [`TlsReloadSettings::expiry_warning`]; health turns `NOT_SERVING` within
//! [`TlsReloadSettings::expiry_margin`] ([`crate::api::Shared::health`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::NodeError;
use crate::raft::network::Network as RaftNetwork;
use crate::tls::{files_digest, CertExpiry, CertInfo, LoadedTls, ServerTls, TlsFiles};

/// How often certificate expiry is judged when file checks are off.
const EXPIRY_TICK: Duration = Duration::from_secs(60);
/// Least time between two expiry warnings.
const WARN_EVERY: Duration = Duration::from_secs(3600);

/// When to look for renewed files and what counts as "about to expire".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReloadSettings {
    /// How often the files are compared with what is in use (by content);
    /// zero: only on `SIGHUP` or [`super::Node::reload_tls`].
    pub check_interval: Duration,
    /// Health reports `NOT_SERVING` once the node's certificate expires
    /// within this (zero: once it has expired).
    pub expiry_margin: Duration,
    /// A warning is logged (hourly) once the certificate expires within
    /// this.
    pub expiry_warning: Duration,
}

impl Default for TlsReloadSettings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(30),
            expiry_margin: Duration::from_secs(3600),
            expiry_warning: Duration::from_secs(7 * 86_400),
        }
    }
}

impl TlsReloadSettings {
    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        if self.expiry_warning < self.expiry_margin {
            return Err(
                "the certificate expiry warning must come no later than the expiry margin".into(),
            );
        }
        Ok(())
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files hold what is already in use.
    Unchanged,
    /// New material is in use; its certificate.
    Reloaded(CertInfo),
}

/// Holds every consumer of the node's TLS files and reloads them together.
pub struct TlsReloader {
    files: TlsFiles,
    mtls: ServerTls,
    https: Option<ServerTls>,
    network: RaftNetwork,
    expiry: Arc<CertExpiry>,
    settings: TlsReloadSettings,
    // A std mutex: held for a whole (synchronous) reload, so two reloads
    // never interleave; never held across an await.
    state: Mutex<State>,
}

struct State {
    /// Digest of the files in use.
    digest: [u8; 32],
    info: CertInfo,
    /// Digest of the files last refused, so a bad file is reported once,
    /// not on every check.
    refused: Option<[u8; 32]>,
    last_warning: Option<Instant>,
}

impl TlsReloader {
    /// A reloader for material already loaded and installed in `mtls` (API
    /// and Raft listeners), `https` and `network`.
    pub fn new(
        loaded: &LoadedTls,
        mtls: ServerTls,
        https: Option<ServerTls>,
        network: RaftNetwork,
        expiry: Arc<CertExpiry>,
        settings: TlsReloadSettings,
    ) -> Self {
        expiry.set(loaded.info().not_after);
        Self {
            files: loaded.files().clone(),
            mtls,
            https,
            network,
            expiry,
            settings,
            state: Mutex::new(State {
                digest: loaded.digest(),
                info: loaded.info().clone(),
                refused: None,
                last_warning: None,
            }),
        }
    }

    /// The certificate in use.
    pub fn current(&self) -> CertInfo {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .info
            .clone()
    }

    /// Reloads if the files' contents differ from what is in use. Blocking
    /// (reads files): call from `spawn_blocking`. A refusal is logged each
    /// time when `requested` (SIGHUP, an explicit call), else once per
    /// content of the files (the periodic check).
    pub fn reload(&self, requested: bool) -> Result<ReloadOutcome, NodeError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = files_digest(&self.files).ok();
        if digest == Some(state.digest) {
            return Ok(ReloadOutcome::Unchanged);
        }
        match self.install() {
            Ok(loaded) => {
                let info = loaded.info().clone();
                tracing::info!(
                    subject = %info.subject,
                    serial = %info.serial,
                    not_after = info.not_after,
                    expires_in_days = days_left(&self.expiry),
                    "TLS certificate reloaded"
                );
                state.digest = loaded.digest();
                state.info = info.clone();
                state.refused = None;
                Ok(ReloadOutcome::Reloaded(info))
            }
            Err(e) => {
                // Once per content (an unreadable file: every time).
                if requested || digest.is_none() || state.refused != digest {
                    tracing::error!(
                        error = %e,
                        in_use = %state.info.subject,
                        serial = %state.info.serial,
                        "renewed TLS files refused; the previous certificate stays in use"
                    );
                }
                state.refused = digest;
                Err(e)
            }
        }
    }

    /// Loads and checks the files, builds every configuration, then
    /// installs them all.
    fn install(&self) -> Result<LoadedTls, NodeError> {
        let loaded = LoadedTls::load(&self.files)?;
        self.network
            .check_tls(&loaded)
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let mtls = self.mtls.build(&loaded)?;
        let https = match &self.https {
            Some(h) => Some(h.build(&loaded)?),
            None => None,
        };
        self.mtls.install(mtls);
        if let (Some(h), Some(config)) = (&self.https, https) {
            h.install(config);
        }
        self.network.install_tls(&loaded);
        self.expiry.set(loaded.info().not_after);
        Ok(loaded)
    }

    /// Logs a warning (at most hourly) when the certificate expires within
    /// the warning window.
    fn check_expiry(&self) {
        let Some(left) = self.expiry.remaining() else {
            return;
        };
        if left > self.settings.expiry_warning {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.last_warning.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        state.last_warning = Some(Instant::now());
        tracing::warn!(
            subject = %state.info.subject,
            serial = %state.info.serial,
            not_after = state.info.not_after,
            expires_in_secs = left.as_secs(),
            not_serving_within_secs = self.settings.expiry_margin.as_secs(),
            "this node's TLS certificate expires soon: renew it (health turns NOT_SERVING within the margin)"
        );
    }

    /// Checks the files every `check_interval` (if set) and the expiry,
    /// until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let poll = !self.settings.check_interval.is_zero();
        let period = if poll {
            self.settings.check_interval
        } else {
            EXPIRY_TICK
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if poll {
                let me = self.clone();
                // Errors are logged by `reload`.
                let _ = tokio::task::spawn_blocking(move || me.reload(false)).await;
            }
            self.check_expiry();
        }
    }
}

fn days_left(expiry: &CertExpiry) -> u64 {
    expiry.remaining().map_or(0, |d| d.as_secs() / 86_400)
}
