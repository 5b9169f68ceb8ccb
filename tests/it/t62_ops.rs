//! What an operator relies on: the `tessera health` probe's exit codes,
//! logs without terminal escape codes when they go to a file, and one
//! trace id followed from the follower that took a write to the leader
//! that committed it.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cluster::*;

/// Runs `tessera health` against node `i` as `ledger`, stderr to `stderr`
/// (a file) when given; bounded by [`WAIT`].
async fn probe(
    c: &TestCluster,
    i: u64,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Option<&Path>,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.arg("health")
        .args(c.cli_conn(i, "ledger"))
        .arg("--timeout")
        .arg("25s")
        .args(extra)
        // The test's environment must not decide colours or formats.
        .env_remove("NO_COLOR")
        .env_remove("TESSERA_LOG")
        .env_remove("TESSERA_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    match stderr {
        Some(p) => cmd.stderr(std::fs::File::create(p).unwrap()),
        None => cmd.stderr(Stdio::piped()),
    };
    // Not `output()`: it would replace the file with a pipe.
    let child = cmd.spawn().unwrap();
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("probe did not finish")
        .unwrap()
}

/// Waits (on the health stream, not on time) until node `i` reports
/// `status`.
async fn wait_health(c: &TestCluster, i: u64, status: i32) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut h = HealthClient::new(c.channel_as(i, &c.files("ledger")).await);
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, async {
        while let Some(r) = watch.message().await.unwrap() {
            if r.status == status {
                return;
            }
        }
        panic!("health stream ended");
    })
    .await
    .expect("health status reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_exits_0_when_serving_and_1_without_quorum() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    wait_health(&c, leader, ServingStatus::Serving as i32).await;

    let out = probe(
        &c,
        leader,
        &["--service", "tessera.v1.TokenService"],
        &[],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {:?}", out.stderr);
    assert!(stdout.starts_with("SERVING "), "{stdout}");

    // A service the node does not have: not healthy.
    let out = probe(&c, leader, &["--service", "tessera.v1.Nope"], &[], None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tessera.v1.Nope"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // The leader cut off from its quorum.
    c.faults.isolate(leader);
    wait_health(&c, leader, ServingStatus::NotServing as i32).await;
    let out = probe(&c, leader, &[], &[], None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NOT_SERVING"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    c.faults.heal();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_output_to_a_file_has_no_escape_codes() {
    let c = TestCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.log");
    let debug = [("TESSERA_LOG", "debug")];
    let out = probe(&c, 1, &[], &debug, Some(&text)).await;
    assert_eq!(out.status.code(), Some(0));
    let log = std::fs::read_to_string(&text).unwrap();
    assert!(
        log.contains("DEBUG") && log.contains("checking health"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );

    let json = dir.path().join("json.log");
    let out = probe(&c, 1, &["--log-format", "json"], &debug, Some(&json)).await;
    assert_eq!(out.status.code(), Some(0));
    let log = std::fs::read_to_string(&json).unwrap();
    assert!(!log.contains('\u{1b}'), "{log:?}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "DEBUG" && v["fields"]["message"] == "checking health"),
        "{log}"
    );
    c.stop().await;
}

/// Every `tessera::trace` event of this test process, as JSON lines. The
/// subscriber is process-wide and sees only that target, so tests running
/// alongside add lines but never change these assertions (each looks for
/// its own trace id).
fn trace_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "{}=debug",
                tessera::trace::LOG_TARGET
            )))
            .with_writer(move || W(sink.clone()))
            .try_init()
            .expect("no other global subscriber in the test binary");
        buf
    })
    .clone()
}

/// The captured events with `trace_id`.
fn events_of(log: &Mutex<Vec<u8>>, trace_id: &str) -> Vec<serde_json::Value> {
    let bytes = log.lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["fields"]["trace_id"] == trace_id)
        .collect()
}

/// A revoke by jti on node `i` as the admin, retried while the cluster
/// answers UNAVAILABLE (as a client would).
async fn revoke_on(c: &TestCluster, i: u64, jti: &str, traceparent: Option<&str>) -> u64 {
    let mut client = c.tokens_on(i, "admin").await;
    for _ in 0..20 {
        let mut req = tonic::Request::new(revoke_jti(jti));
        if let Some(tp) = traceparent {
            req.metadata_mut()
                .insert("traceparent", tp.parse().unwrap());
        }
        match client.revoke(req).await {
            Ok(r) => return r.into_inner().revision,
            Err(s) if s.code() == tonic::Code::Unavailable => continue,
            Err(s) => panic!("{s}"),
        }
    }
    panic!("revoke kept failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_revoke_carries_the_callers_trace_to_the_leader() {
    let log = trace_log();
    let c = TestCluster::start(3).await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let follower = if leader == 1 { 2 } else { 1 };

    // The caller's traceparent: the same trace id on both nodes, with the
    // revision the leader committed.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-b7ad6b7169203331-01");
    let revision = revoke_on(&c, follower, "traced-jti-1", Some(&tp)).await;
    let seen = events_of(&log, trace);
    let on = |node: u64, msg: &str| {
        seen.iter().any(|v| {
            v["fields"]["node"] == node
                && v["fields"]["message"] == msg
                && v["fields"]["revision"] == revision
        })
    };
    assert!(
        on(follower, "write forwarded to the leader and committed"),
        "{seen:#?}"
    );
    assert!(on(leader, "forwarded write committed"), "{seen:#?}");

    // No traceparent: the follower starts a trace, and the leader logs the
    // same id for the same commit.
    let revision = revoke_on(&c, follower, "traced-jti-2", None).await;
    let bytes = log.lock().unwrap().clone();
    let all: Vec<serde_json::Value> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = all
        .iter()
        .find(|v| {
            v["fields"]["node"] == follower
                && v["fields"]["revision"] == revision
                && v["fields"]["message"] == "write forwarded to the leader and committed"
        })
        .unwrap_or_else(|| panic!("no follower event: {all:#?}"));
    let id = started["fields"]["trace_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(
        events_of(&log, id)
            .iter()
            .any(|v| v["fields"]["node"] == leader && v["fields"]["revision"] == revision),
        "{all:#?}"
    );
    c.stop().await;
}
