//! The audit log: one JSON object per line for every policy decision and
//! every state change. It carries identities, `jti`s, policy ids and
//! outcomes — never a token, a key or a key-encryption key.
//!
//! Records go through a bounded queue to one writer thread, and a request
//! never waits for it: when the queue is full (the disk is slower than the
//! requests) the record is dropped and *counted*, never lost silently. The
//! count is exposed ([`AuditLog::dropped`]), warned about at most every
//! [`DROP_WARN_EVERY`], and written into the log itself as an
//! `audit_dropped` record as soon as the writer catches up.
//!
//! A file sink rotates by size ([`AuditRotation`]): `audit.jsonl` becomes
//! `audit.jsonl.1`, the previous `.1` becomes `.2`, and so on up to
//! `max_files`; the oldest is deleted. Each batch is flushed and
//! `fdatasync`ed, and the directory is synced after each rotation, so what
//! the writer reports written survives a crash. Batches under load are
//! group commits, at most one sync per [`SYNC_GAP`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// Capacity of the queue between request handlers and the writer.
pub const QUEUE: usize = 4096;

/// Least time between two "records dropped" warnings in the service log.
pub const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Most records written per batch (one flush and one fdatasync per batch):
/// whatever is queued, so a slow fsync is paid once for all of it.
const BATCH: usize = QUEUE;

/// Least time between the starts of two batches' syncs: under load the
/// writer collects for this long, so fdatasyncs stay at most ~100 per
/// second however many requests there are (each one cost ~4 % of a loaded
/// benchmark's CPU when every few requests had their own; issue 11). At
/// 4,096 queued records this absorbs 400k records/s without drops. A record
/// arriving after a quiet spell is written at once.
const SYNC_GAP: Duration = Duration::from_millis(10);

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
    /// Append to a file, rotated by size (see [`AuditRotation`]).
    File(PathBuf),
    /// Write to standard error (under systemd: the journal).
    Stderr,
    /// Discard (benchmarks).
    Discard,
}

/// Size-based rotation of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRotation {
    /// Rotate when the live file would grow past this many bytes
    /// (0: never rotate).
    pub max_bytes: u64,
    /// Rotated files kept besides the live one (`.1` .. `.N`); the oldest
    /// is deleted. At least 1 when rotating.
    pub max_files: u32,
}

/// Upper bound on [`AuditRotation::max_files`]: each rotation renames every
/// kept file, so the work per rotation stays small.
pub const MAX_AUDIT_FILES: u32 = 1000;

impl Default for AuditRotation {
    /// 100 MiB per file, 10 rotated files: about 1.1 GB at most.
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            max_files: 10,
        }
    }
}

impl AuditRotation {
    /// Checks the bounds; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes > 0 && (self.max_files == 0 || self.max_files > MAX_AUDIT_FILES) {
            return Err(format!(
                "audit_max_files must be between 1 and {MAX_AUDIT_FILES} when audit_max_bytes is set"
            ));
        }
        if self.max_bytes > 0 && self.max_bytes < 4096 {
            return Err("audit_max_bytes must be 0 (no rotation) or at least 4096".into());
        }
        Ok(())
    }
}

/// Where the writer thread puts lines: the seam that tests replace with a
/// slow or stalled output.
pub trait AuditOutput: Send + 'static {
    /// Writes one record (a JSON line including its `\n`).
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()>;
    /// Makes everything written so far durable (or at least visible).
    fn sync(&mut self) -> std::io::Result<()>;
    /// What the output is, for error messages (a file's path).
    fn describe(&self) -> String {
        "the audit output".into()
    }
}

/// Where the audit writer reports a write or sync error: the node stops on
/// it (fail-stop, like a failed write under the data directory).
pub type FailureReport = tokio::sync::mpsc::UnboundedSender<String>;

/// Standard error, one `write_all` per line so lines never interleave with
/// the service log mid-line.
struct StderrOutput;

impl AuditOutput for StderrOutput {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(line)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()
    }
    fn describe(&self) -> String {
        "standard error".into()
    }
}

/// An append-only file rotated by size.
pub struct RotatingFile {
    path: PathBuf,
    rotation: AuditRotation,
    file: std::io::BufWriter<std::fs::File>,
    /// Bytes in the live file (including buffered ones).
    size: u64,
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending; creates its directory.
    pub fn open(path: &Path, rotation: AuditRotation) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let existed = path.exists();
        let file = open_append(path)?;
        if !existed {
            // The new name must survive a crash as well as its contents.
            sync_dir(path)?;
        }
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            rotation,
            file: std::io::BufWriter::new(file),
            size,
        })
    }

    /// `path.N`.
    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Closes the live file durably, shifts `.N-1 -> .N`, ..., live -> `.1`
    /// (the old `.N` is replaced, so at most `max_files` are kept), and
    /// starts an empty live file.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let n = self.rotation.max_files;
        for i in (1..n).rev() {
            let from = self.numbered(i);
            if from.exists() {
                std::fs::rename(&from, self.numbered(i + 1))?;
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        let file = open_append(&self.path)?;
        sync_dir(&self.path)?;
        self.file = std::io::BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Makes renames and creations in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

impl AuditOutput for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.rotation.max_bytes > 0 && self.size > 0 && self.size + len > self.rotation.max_bytes
        {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// What the handles share with the writer.
struct Counters {
    /// Records dropped since start (queue full, writer gone, or in a batch
    /// whose write or sync failed).
    dropped: AtomicU64,
    /// Writes or syncs of the output that failed.
    write_errors: AtomicU64,
    /// Milliseconds after `epoch` of the last drop warning, +1 (0: never).
    last_warn: AtomicU64,
    epoch: Instant,
}

impl Counters {
    /// Counts one drop and warns if the last warning is old enough.
    fn drop_one(&self, why: &str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_warn.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_WARN_EVERY.as_millis() as u64;
        // Only the caller that wins the exchange warns: one line per period.
        if due
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = total,
                "audit records dropped: {why}; the count is written to the audit log when it catches up"
            );
        }
    }
}

/// A handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditEvent>>,
    counters: Arc<Counters>,
}

impl AuditLog {
    /// Starts the writer thread for `sink` (files rotated per `rotation`).
    /// It ends once every handle is dropped and the queue is drained; the
    /// returned join handle lets the owner wait for it. The first write or
    /// sync error is sent to `failures` (see [`AuditLog::start_with`]).
    pub fn start(
        sink: AuditSink,
        rotation: AuditRotation,
        failures: Option<FailureReport>,
    ) -> std::io::Result<(Self, Option<std::thread::JoinHandle<()>>)> {
        let out: Box<dyn AuditOutput> = match sink {
            AuditSink::Discard => return Ok((Self::discard(), None)),
            AuditSink::Stderr => Box::new(StderrOutput),
            AuditSink::File(path) => Box::new(RotatingFile::open(&path, rotation)?),
        };
        let (log, task) = Self::start_with(out, QUEUE, failures)?;
        Ok((log, Some(task)))
    }

    /// Starts a writer thread on any output with a queue of `queue` records.
    /// A batch whose write or sync fails is counted as dropped whole (none
    /// of it is known durable: a buffered write fails only at the flush),
    /// and the first such error goes to `failures`, naming the output: the
    /// node stops rather than go on deciding without a record.
    pub fn start_with(
        mut out: Box<dyn AuditOutput>,
        queue: usize,
        failures: Option<FailureReport>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(queue.max(1));
        let counters = Arc::new(Counters {
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            last_warn: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let shared = counters.clone();
        // A plain thread: the writes are blocking and this works the same
        // under any tokio runtime flavour.
        let task = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut failures = failures;
                let mut reported = 0u64;
                let mut batch = Vec::with_capacity(BATCH);
                let mut line = Vec::with_capacity(512);
                // Never synced yet: the first record is written at once.
                let mut last_sync: Option<Instant> = None;
                while let Some(ev) = rx.blocking_recv() {
                    batch.push(ev);
                    // Group commit: under load, wait out the rest of
                    // SYNC_GAP since the last sync so that one fdatasync
                    // covers everything queued meanwhile. An idle log
                    // writes its record at once.
                    if let Some(gap) = last_sync.and_then(|t| SYNC_GAP.checked_sub(t.elapsed())) {
                        // This is the writer's own OS thread, never a
                        // runtime worker, and the pause is pacing, not a
                        // wait for an event.
                        #[allow(clippy::disallowed_methods)]
                        std::thread::sleep(gap);
                    }
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    let res = (|| {
                        for ev in &batch {
                            line.clear();
                            serde_json::to_writer(&mut line, ev)?;
                            line.push(b'\n');
                            out.write_line(&line)?;
                        }
                        report_drops(&mut *out, &shared, &mut reported, &mut line)?;
                        out.sync()
                    })();
                    last_sync = Some(Instant::now());
                    if let Err(e) = res {
                        // No record of the batch is known durable: all are
                        // counted like drops.
                        let lost = batch.len() as u64;
                        shared.dropped.fetch_add(lost, Ordering::Relaxed);
                        shared.write_errors.fetch_add(1, Ordering::Relaxed);
                        let what = out.describe();
                        tracing::error!(error = %e, lost, output = %what, "audit log write failed");
                        if let Some(f) = failures.take() {
                            let _ = f.send(format!(
                                "writing the audit log {what}: {e} ({lost} records not written)"
                            ));
                        }
                    }
                    batch.clear();
                }
                let res = report_drops(&mut *out, &shared, &mut reported, &mut line)
                    .and_then(|()| out.sync());
                if let Err(e) = res {
                    shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, output = %out.describe(), "audit log write failed");
                }
            })?;
        Ok((
            Self {
                tx: Some(tx),
                counters,
            },
            task,
        ))
    }

    /// A handle that writes nowhere.
    pub fn discard() -> Self {
        Self {
            tx: None,
            counters: Arc::new(Counters {
                dropped: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                last_warn: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// Records an event. Never waits: when the writer is a full queue
    /// behind, the event is dropped and counted (see the module docs).
    /// `async` so that a future sink may wait without changing callers.
    pub async fn record(&self, event: AuditEvent) {
        self.try_record(event);
    }

    /// [`AuditLog::record`] for code that is not async.
    pub fn try_record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self
                .counters
                .drop_one("the audit writer is a full queue behind"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.drop_one("the audit writer has stopped")
            }
        }
    }

    /// Records dropped since this log was started (monotonic; for metrics).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// The counts alone, for a metrics exporter: unlike a handle, they do
    /// not keep the writer running (it ends when the last handle goes).
    pub fn counts(&self) -> AuditCounts {
        AuditCounts(self.counters.clone())
    }
}

/// The writer's counts, without a handle to the writer.
#[derive(Clone)]
pub struct AuditCounts(Arc<Counters>);

impl AuditCounts {
    /// See [`AuditLog::dropped`].
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Writes or syncs of the output that failed since the log was started
    /// (monotonic).
    pub fn write_errors(&self) -> u64 {
        self.0.write_errors.load(Ordering::Relaxed)
    }
}

/// Writes an `audit_dropped` record for the drops not yet reported.
fn report_drops(
    out: &mut dyn AuditOutput,
    counters: &Counters,
    reported: &mut u64,
    line: &mut Vec<u8>,
) -> std::io::Result<()> {
    let total = counters.dropped.load(Ordering::Relaxed);
    if total <= *reported {
        return Ok(());
    }
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    line.clear();
    serde_json::to_writer(
        &mut *line,
        &serde_json::json!({
            "ts": ts,
            "op": "audit_dropped",
            "decision": "error",
            "caller": "",
            "dropped": total - *reported,
            "dropped_total": total,
        }),
    )?;
    line.push(b'\n');
    out.write_line(line)?;
    *reported = total;
    Ok(())
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
