//! Unit tests of the audit writer: rotation by size, and drops (counted,
//! reported, never blocking) when the writer stalls.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;

use super::*;

/// Bound on every wait for the writer thread (it idles for microseconds).
const BOUND: Duration = Duration::from_secs(30);

fn event(i: usize) -> AuditEvent {
    let mut ev = AuditEvent::new(1_700_000_000, "revoke", "allow", &format!("svc-{i}"));
    ev.subject_jti = Some(format!("jti-{i:06}"));
    ev
}

/// Waits (bounded) for the writer thread to finish.
fn join(task: std::thread::JoinHandle<()>) {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(task.join().is_ok());
    });
    assert_eq!(rx.recv_timeout(BOUND), Ok(true), "audit writer did not end");
}

#[test]
fn size_rotation_keeps_max_files_and_the_newest_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rotation = AuditRotation {
        max_bytes: 4096,
        max_files: 3,
    };
    rotation.validate().unwrap();
    let (log, task) = AuditLog::start(AuditSink::File(path.clone()), rotation, None).unwrap();
    let n = 600; // about 70 KB: many more rotations than kept files
    for i in 0..n {
        log.try_record(event(i));
    }
    assert_eq!(log.dropped(), 0);
    drop(log);
    join(task.unwrap());

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audit.jsonl",
            "audit.jsonl.1",
            "audit.jsonl.2",
            "audit.jsonl.3"
        ]
    );
    // Oldest first: .3, .2, .1, live. Every file within the bound, and the
    // records are consecutive and end with the last one written.
    let mut seen = Vec::new();
    for name in [
        "audit.jsonl.3",
        "audit.jsonl.2",
        "audit.jsonl.1",
        "audit.jsonl",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(
            text.len() as u64 <= rotation.max_bytes,
            "{name}: {}",
            text.len()
        );
        assert!(text.ends_with('\n'), "{name} ends mid-record");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let caller = v["caller"].as_str().unwrap();
            seen.push(caller.trim_start_matches("svc-").parse::<usize>().unwrap());
        }
    }
    assert_eq!(*seen.last().unwrap(), n - 1);
    let first = seen[0];
    assert_eq!(seen, (first..n).collect::<Vec<_>>());
    assert!(first > 0, "nothing was rotated away");
}

#[test]
fn rotation_settings_are_bounded() {
    let ok = AuditRotation::default();
    assert_eq!(ok.validate(), Ok(()));
    let never = AuditRotation {
        max_bytes: 0,
        max_files: 0,
    };
    assert_eq!(never.validate(), Ok(()));
    for bad in [
        AuditRotation {
            max_bytes: 1 << 20,
            max_files: 0,
        },
        AuditRotation {
            max_bytes: 1 << 20,
            max_files: MAX_AUDIT_FILES + 1,
        },
        AuditRotation {
            max_bytes: 100,
            max_files: 3,
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

/// An output that blocks in its first write until released, the way a
/// stalled disk would, and keeps what it was given.
struct Stalled {
    entered: Option<std_mpsc::Sender<()>>,
    release: Option<std_mpsc::Receiver<()>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl AuditOutput for Stalled {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if let Some(entered) = self.entered.take() {
            let _ = entered.send(());
            if let Some(release) = self.release.take() {
                let _ = release.recv_timeout(BOUND);
            }
        }
        self.lines
            .lock()
            .unwrap()
            .push(String::from_utf8(line.to_vec()).unwrap());
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stalled_writer_drops_and_counts_records_and_never_blocks_a_request() {
    let (entered_tx, entered) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = Stalled {
        entered: Some(entered_tx),
        release: Some(release_rx),
        lines: lines.clone(),
    };
    let queue = 4;
    let (log, task) = AuditLog::start_with(Box::new(out), queue, None).unwrap();
    // The writer takes the first record and stalls inside its write.
    log.try_record(event(0));
    entered.recv_timeout(BOUND).expect("writer never started");
    // The queue fills; every further record is dropped, counted, and the
    // call returns at once (the future is ready on its first poll).
    for i in 1..=queue + 3 {
        log.record(event(i))
            .now_or_never()
            .expect("recording waited on a stalled writer");
    }
    assert_eq!(log.dropped(), 3);
    release.send(()).unwrap();
    drop(log);
    join(task);

    let lines = lines.lock().unwrap();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written: Vec<&str> = parsed
        .iter()
        .filter(|v| v["op"] == "revoke")
        .map(|v| v["caller"].as_str().unwrap())
        .collect();
    assert_eq!(written, ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]);
    let drops: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| v["op"] == "audit_dropped")
        .collect();
    assert_eq!(drops.len(), 1, "{lines:?}");
    assert_eq!(drops[0]["dropped"], 3);
    assert_eq!(drops[0]["dropped_total"], 3);
    assert_eq!(parsed.len(), 6);
}

/// An output whose every write fails, as on a full disk.
struct Failing;

impl AuditOutput for Failing {
    fn write_line(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("no space left on device"))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn records_a_failing_output_never_took_are_counted_as_dropped() {
    let (log, task) = AuditLog::start_with(Box::new(Failing), 16, None).unwrap();
    let counters = log.counters.clone();
    for i in 0..3 {
        log.try_record(event(i));
    }
    drop(log);
    join(task);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 3);
}

/// A full disk refuses a buffered record only at the flush: the count said
/// nothing was lost (records written into the buffer counted as written),
/// and the records went when the buffer was dropped.
#[test]
fn records_a_full_disk_refused_at_the_flush_were_not_counted() {
    let (log, task) = AuditLog::start(
        AuditSink::File("/dev/full".into()),
        AuditRotation::default(),
        None,
    )
    .unwrap();
    let counters = log.counters.clone();
    for i in 0..10 {
        log.try_record(event(i));
    }
    drop(log);
    join(task.unwrap());
    assert_eq!(
        counters.dropped.load(Ordering::Relaxed),
        10,
        "every record the disk refused is counted"
    );
    assert!(counters.write_errors.load(Ordering::Relaxed) >= 1);
}

/// The first failed write is reported, once, naming the output (the node
/// stops on it); later failures are only counted.
#[tokio::test]
async fn a_failed_audit_write_is_reported_once_naming_the_output() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (log, task) = AuditLog::start(
        AuditSink::File("/dev/full".into()),
        AuditRotation::default(),
        Some(tx),
    )
    .unwrap();
    log.try_record(event(1));
    let first = tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("the failure is reported")
        .expect("the writer holds the sender");
    assert!(first.contains("/dev/full"), "{first}");
    assert!(first.contains("No space left on device"), "{first}");
    log.try_record(event(2));
    drop(log);
    join(task.unwrap());
    assert!(rx.try_recv().is_err(), "reported once");
}
