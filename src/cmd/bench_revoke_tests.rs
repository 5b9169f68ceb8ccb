//! Tests of `tessera bench-revoke`: options, the load loop and the table.

use super::*;

fn args() -> BenchRevokeArgs {
    BenchRevokeArgs {
        endpoints: vec!["127.0.0.1:1".into(), " 127.0.0.1:2 ".into()],
        certs: PathBuf::from("certs"),
        clients: vec![1, 16],
        seconds: 3,
        max_requests: 100,
        leader_only: false,
        leader_too: false,
        connections: 1,
        etcd: vec![],
        no_warmup: false,
        pids: vec![],
        etcd_pids: vec![],
    }
}

#[test]
fn plan_trims_endpoints_and_keeps_options() {
    let p = Plan::from_args(args()).unwrap();
    assert_eq!(p.endpoints, vec!["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!(p.clients, vec![1, 16]);
    assert_eq!(p.duration, Duration::from_secs(3));
    assert_eq!(p.max_requests, 100);
    assert!(p.warmup);
    assert!(p.etcd.is_empty());
}

#[test]
fn plan_needs_a_system() {
    let mut a = args();
    a.endpoints = vec![" ".into()];
    assert!(Plan::from_args(a).unwrap_err().contains("--endpoints"));
}

#[test]
fn plan_rejects_bad_counts() {
    for f in [
        (|a: &mut BenchRevokeArgs| a.clients = vec![]) as fn(&mut BenchRevokeArgs),
        |a| a.clients = vec![1, 0],
        |a| a.clients = vec![MAX_CLIENTS + 1],
        |a| a.seconds = 0,
        |a| a.max_requests = 0,
        |a| a.connections = 0,
    ] {
        let mut a = args();
        f(&mut a);
        assert!(Plan::from_args(a).is_err());
    }
    let mut a = args();
    a.clients = vec![MAX_CLIENTS];
    assert!(Plan::from_args(a).is_ok());
}

#[test]
fn leader_only_needs_tessera_endpoints() {
    let mut a = args();
    a.endpoints = vec![];
    a.etcd = vec!["http://127.0.0.1:1".into()];
    a.leader_only = true;
    assert!(Plan::from_args(a).unwrap_err().contains("--leader-only"));
}

#[test]
fn leader_too_needs_endpoints_and_round_robin() {
    let mut a = args();
    a.leader_too = true;
    assert!(Plan::from_args(a).unwrap().leader_too);
    let mut a = args();
    a.leader_too = true;
    a.leader_only = true;
    assert!(Plan::from_args(a).unwrap_err().contains("--leader-too"));
}

#[test]
fn etcd_needs_the_feature() {
    let mut a = args();
    a.etcd = vec!["http://127.0.0.1:1".into()];
    let r = Plan::from_args(a);
    if cfg!(feature = "etcd-bench") {
        assert_eq!(r.unwrap().etcd, vec!["http://127.0.0.1:1"]);
    } else {
        assert!(r.unwrap_err().contains("etcd-bench"));
    }
}

#[test]
fn jti_is_22_url_safe_characters_and_fresh() {
    let a = random_jti().unwrap();
    let b = random_jti().unwrap();
    assert_eq!(a.len(), 22);
    assert!(a
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_ne!(a, b);
}

#[test]
fn etcd_payload_mirrors_a_revoked_jti() {
    let jti = "A".repeat(22);
    assert_eq!(etcd_key(&jti), format!("revoked/{jti}"));
    assert_eq!(etcd_key(&jti).len(), 30);
    assert_eq!(
        etcd_value(1_000),
        (1_000 + TOKEN_LIFETIME_SECS).to_be_bytes()
    );
    // The request Tessera sends for the same revocation.
    assert_eq!(prost::Message::encoded_len(&revoke_request(&jti)), 24);
}

#[test]
fn round_robin_cycles_over_every_client() {
    let picks: Vec<usize> = (0..7).map(|s| pick(s, 3)).collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    assert_eq!(pick(u64::MAX, 1), 0);
}

#[test]
fn percentiles_are_nearest_rank() {
    let s = RunStats {
        latencies_us: (1..=100).map(|i| i * 1000).collect(),
        elapsed: Duration::from_secs(2),
        ..Default::default()
    };
    assert_eq!(s.percentile_ms(0.50), 50.0);
    assert_eq!(s.percentile_ms(0.99), 99.0);
    assert_eq!(s.percentile_ms(1.0), 100.0);
    assert_eq!(s.percentile_ms(0.0), 1.0);
    assert_eq!(s.throughput(), 50.0);
    let empty = RunStats::default();
    assert_eq!(empty.percentile_ms(0.99), 0.0);
    assert_eq!(empty.throughput(), 0.0);
}

#[test]
fn row_matches_the_table_head() {
    let s = RunStats {
        requests: 3,
        errors: 1,
        latencies_us: vec![1500, 2500],
        elapsed: Duration::from_secs(1),
        cpu_busy: Some(97.4),
        ..Default::default()
    };
    let row = s.row(16);
    assert_eq!(row, "| 16 | 3 | 1 | 2 | 1.50 | 2.50 | 2.50 | 97 | - | - |");
    let head_cols = TABLE_HEAD.lines().next().unwrap().matches('|').count();
    assert_eq!(row.matches('|').count(), head_cols);
}

#[tokio::test]
async fn drive_stops_at_the_request_limit() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let s = drive(
        8,
        Duration::from_secs(600),
        50,
        REQUEST_TIMEOUT,
        op_fn(move |_w, _seq| {
            c.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        }),
        &[],
    )
    .await;
    assert_eq!(calls.load(Ordering::Relaxed), 50);
    assert_eq!(s.requests, 50);
    assert_eq!(s.ok(), 50);
    assert_eq!(s.errors, 0);
    assert!(s.first_error.is_none());
    assert!(s.latencies_us.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn drive_stops_at_the_deadline() {
    // An already-passed deadline: no request starts.
    let s = drive(
        4,
        Duration::ZERO,
        u64::MAX,
        REQUEST_TIMEOUT,
        op_fn(|_w, _seq| async { Ok(()) }),
        &[],
    )
    .await;
    assert_eq!(s.requests, 0);
}

#[tokio::test]
async fn drive_counts_errors_and_keeps_the_first() {
    let s = drive(
        1,
        Duration::from_secs(600),
        10,
        REQUEST_TIMEOUT,
        op_fn(|_w, seq| async move {
            if seq % 2 == 1 {
                Err(format!("failure {seq}"))
            } else {
                Ok(())
            }
        }),
        &[],
    )
    .await;
    assert_eq!(s.requests, 10);
    assert_eq!(s.errors, 5);
    assert_eq!(s.ok(), 5);
    assert_eq!(s.first_error.as_deref(), Some("failure 1"));
}

#[tokio::test]
async fn drive_uses_every_worker_and_sequence_number_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    drive(
        4,
        Duration::from_secs(600),
        40,
        REQUEST_TIMEOUT,
        op_fn(move |w, seq| {
            s2.lock().unwrap().push((w, seq));
            async move {
                // Yield so the other workers get turns.
                tokio::task::yield_now().await;
                Ok(())
            }
        }),
        &[],
    )
    .await;
    let mut v = seen.lock().unwrap().clone();
    let mut seqs: Vec<u64> = v.iter().map(|p| p.1).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>());
    v.sort_unstable();
    v.dedup_by_key(|p| p.0);
    assert_eq!(v.len(), 4);
}

#[tokio::test]
async fn a_stuck_request_times_out_and_the_run_ends() {
    let s = drive(
        2,
        Duration::from_secs(600),
        2,
        Duration::from_millis(5),
        op_fn(|_w, _seq| std::future::pending::<Result<(), String>>()),
        &[],
    )
    .await;
    assert_eq!(s.requests, 2);
    assert_eq!(s.errors, 2);
    assert!(s.first_error.unwrap().contains("no answer"));
}

#[test]
fn pids_need_their_system() {
    let mut a = args();
    a.pids = vec![1];
    assert!(Plan::from_args(a).is_ok());
    let mut a = args();
    a.etcd_pids = vec![1];
    assert!(Plan::from_args(a)
        .unwrap_err()
        .contains("--etcd-pids needs --etcd"));
    let mut a = args();
    a.endpoints = vec![];
    a.etcd = vec!["http://127.0.0.1:1".into()];
    a.pids = vec![1];
    assert!(Plan::from_args(a)
        .unwrap_err()
        .contains("--pids needs --endpoints"));
    let mut a = args();
    a.pids = vec![0];
    assert!(Plan::from_args(a).unwrap_err().contains("above 0"));
}

#[tokio::test]
async fn drive_reads_the_servers_cpu_from_proc() {
    // Requests that take a millisecond each, so that the run spans
    // clock ticks of /proc/stat (a run inside one tick has no figure).
    let op = || {
        op_fn(|_w, _seq| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        })
    };
    let me = [std::process::id()];
    let s = drive(2, Duration::from_secs(600), 100, REQUEST_TIMEOUT, op(), &me).await;
    assert!(s.server_us.is_some_and(|us| us >= 0.0), "{:?}", s.server_us);
    assert!(s
        .row(2)
        .ends_with(&format!(" {:.0} |", s.server_us.unwrap())));
    // A pid that names no process: no figure rather than a wrong one.
    let s = drive(
        2,
        Duration::from_secs(600),
        100,
        REQUEST_TIMEOUT,
        op(),
        &[u32::MAX],
    )
    .await;
    assert_eq!(s.server_us, None);
    assert!(s.row(2).ends_with(" - |"));
}
