//! The audit log: one JSON object per line for every policy decision and
//! every state change. It carries identities, `jti`s, policy ids and
//! outcomes — never a token, a key or a key-encryption key.
//!
//! Records go through a bounded channel to one writer task, so a request
//! never waits on disk I/O unless the writer has fallen a full buffer behind;
//! then it waits (back-pressure) rather than dropping audit records.

use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::mpsc;

/// Capacity of the queue between request handlers and the writer.
const QUEUE: usize = 4096;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub ts: u64,
    /// The operation: `issue`, `exchange`, `introspect`, `revoke`, ...,
    /// or `anomaly` (decision `alert`: a caller's volume far above its
    /// baseline, see [`crate::metrics::anomaly`]).
    pub op: &'static str,
    /// `allow`, `deny` or `error` (`alert` for an anomaly).
    pub decision: &'static str,
    /// The mTLS identity of the caller.
    pub caller: String,
    /// Policy ids that determined the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    /// The `jti` of a token presented (subject token, introspected token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_jti: Option<String>,
    /// The `jti` of a token issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_jti: Option<String>,
    /// Audiences asked for or granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// Scopes granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Revision of a write, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why it was refused, in words that contain no secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `op: "anomaly"`: the signal and the numbers that raised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::metrics::Anomaly>,
}

impl AuditEvent {
    /// A record with the mandatory fields set.
    pub fn new(ts: u64, op: &'static str, decision: &'static str, caller: &str) -> Self {
        Self {
            ts,
            op,
            decision,
            caller: caller.to_string(),
            policy_ids: Vec::new(),
            subject_jti: None,
            issued_jti: None,
            audience: Vec::new(),
            scope: Vec::new(),
            revision: None,
            reason: None,
            anomaly: None,
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    /// Append to a file.
    File(PathBuf),
    /// Write to standard error.
    Stderr,
    /// Discard (benchmarks).
    Discard,
}

/// A handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditEvent>>,
}

impl AuditLog {
    /// Starts the writer thread. It ends once every handle is dropped and the
    /// queue is drained; the returned join handle lets the owner wait for it.
    pub fn start(sink: AuditSink) -> std::io::Result<(Self, Option<std::thread::JoinHandle<()>>)> {
        let mut out: Box<dyn std::io::Write + Send> = match sink {
            AuditSink::Discard => return Ok((Self { tx: None }, None)),
            AuditSink::Stderr => Box::new(std::io::stderr()),
            AuditSink::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(std::io::BufWriter::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ))
            }
        };
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        // A plain thread: the writes are blocking and this works the same
        // under any tokio runtime flavour.
        let task = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(256);
                while let Some(ev) = rx.blocking_recv() {
                    batch.push(ev);
                    while batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    let res = (|| {
                        for ev in batch.drain(..) {
                            serde_json::to_writer(&mut out, &ev)?;
                            out.write_all(b"\n")?;
                        }
                        out.flush()
                    })();
                    if let Err(e) = res {
                        batch.clear();
                        tracing::error!(error = %e, "audit log write failed");
                    }
                }
            })?;
        Ok((Self { tx: Some(tx) }, Some(task)))
    }

    /// A handle that writes nowhere.
    pub fn discard() -> Self {
        Self { tx: None }
    }

    /// Records an event (waits only if the writer is a full queue behind).
    pub async fn record(&self, event: AuditEvent) {
        if let Some(tx) = &self.tx {
            if tx.send(event).await.is_err() {
                tracing::error!("audit writer has stopped; record lost");
            }
        }
    }
}
