//! Metrics and anomaly signals: after a scripted workload, each node's
//! metrics text (parsed with a Prometheus text parser) shows exactly the
//! calls it served, by method and status code, and the decisions, refusals
//! and Raft state behind them; a caller whose exchange rate jumps to 20
//! times its baseline raises exactly one `anomaly` audit event.

use std::collections::BTreeMap;

use tessera::metrics::AnomalySettings;
use tessera::pb;
use tonic::Code;

use crate::cluster::*;

/// Node `id`'s metrics text, as `GET /metrics` serves it.
pub async fn scrape(c: &TestCluster, id: u64) -> String {
    let files = c.files("admin");
    let addr = c.node(id).http_addr().expect("an HTTPS listener");
    let reply = crate::t44_https::https_as(
        addr,
        &files.ca,
        Some(&files),
        http::Method::GET,
        "/metrics",
        Default::default(),
    )
    .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(
        reply.headers[http::header::CONTENT_TYPE],
        tessera::metrics::CONTENT_TYPE
    );
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_need_a_client_certificate() {
    let c = TestCluster::start(1).await;
    let files = c.files("admin");
    let reply = crate::t44_https::get(
        c.node(1).http_addr().expect("an HTTPS listener"),
        &files.ca,
        "/metrics",
    )
    .await;
    assert_eq!(reply.status, http::StatusCode::UNAUTHORIZED);
    c.stop().await;
}

/// Series name and sorted labels, e.g. `name{a="1",b="2"}`.
type Key = String;

/// Every sample of a scrape, keyed by series; histograms by their
/// `_count` and `_sum` series (the buckets are not needed here).
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics text parses");
    let mut out = BTreeMap::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key(&s.metric, &s.labels), value);
    }
    out
}

fn key(metric: &str, labels: &prometheus_parse::Labels) -> Key {
    let labels: BTreeMap<&String, &String> = labels.iter().collect();
    let inner: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{metric}{{{}}}", inner.join(","))
}

/// `name{labels}` with labels given in any order.
fn series(metric: &str, labels: &[(&str, &str)]) -> Key {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let inner: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{metric}{{{}}}", inner.join(","))
}

/// What changed between two scrapes of series of `metric`.
fn deltas(
    before: &BTreeMap<Key, f64>,
    after: &BTreeMap<Key, f64>,
    metric: &str,
) -> BTreeMap<Key, f64> {
    let prefix = format!("{metric}{{");
    after
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The calls a client made, by method label and status code.
#[derive(Default)]
struct Calls(BTreeMap<(&'static str, &'static str), u64>);

impl Calls {
    fn note<T>(&mut self, method: &'static str, r: &Result<T, tonic::Status>) {
        let code = match r {
            Ok(_) => "OK",
            Err(s) => tessera::api::rpc_metrics::code_name(s.code()),
        };
        *self.0.entry((method, code)).or_default() += 1;
    }

    fn count(&self, method: &str, code: &str) -> u64 {
        self.0
            .iter()
            .filter(|((m, c), _)| *m == method && *c == code)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The expected `tessera_rpc_requests_total` deltas.
    fn expected(&self) -> BTreeMap<Key, f64> {
        self.0
            .iter()
            .map(|((m, c), n)| {
                (
                    series("tessera_rpc_requests_total", &[("method", m), ("code", c)]),
                    *n as f64,
                )
            })
            .collect()
    }
}

const ISSUE: &str = "tessera.v1.TokenService/IssueToken";
const EXCHANGE: &str = "tessera.v1.TokenService/ExchangeToken";
const INTROSPECT: &str = "tessera.v1.TokenService/Introspect";
const REVOKE: &str = "tessera.v1.TokenService/Revoke";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_exact_counts_of_the_calls_each_node_served() {
    // One introspection a second per caller: a quick series of them meets
    // the rate limit.
    let c = TestCluster::start_with(3, |cfg| {
        cfg.limits.rate.apply("introspect=1/1").unwrap();
    })
    .await;
    let leader = c.agreed_leader(&[1, 2, 3]).await;
    let on = if leader == 1 { 2 } else { 1 };
    let mut before = BTreeMap::new();
    for i in 1..=3 {
        before.insert(i, parse(&scrape(&c, i).await));
    }

    let mut calls = Calls::default();
    let mut frontend = c.tokens_on(on, "frontend").await;
    let mut first = None;
    for _ in 0..3 {
        let r = frontend
            .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
            .await;
        calls.note(ISSUE, &r);
        first.get_or_insert(r.unwrap().into_inner());
    }
    let first = first.unwrap();
    for _ in 0..2 {
        // Policy: frontend may not issue for the admin audience.
        let r = frontend
            .issue_token(issue_req("admin", &["orders:write"]))
            .await;
        assert_eq!(r.as_ref().unwrap_err().code(), Code::PermissionDenied);
        calls.note(ISSUE, &r);
    }
    let r = frontend.issue_token(issue_req("orders", &[])).await;
    assert_eq!(r.as_ref().unwrap_err().code(), Code::InvalidArgument);
    calls.note(ISSUE, &r);
    let r = c
        .tokens_on(on, "orders")
        .await
        .exchange_token(exchange_req(
            &first.access_token,
            "payments",
            &["payments:charge"],
        ))
        .await;
    calls.note(EXCHANGE, &r);
    r.unwrap();
    let r = frontend
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Subject(id("orders"))),
        })
        .await;
    assert_eq!(r.as_ref().unwrap_err().code(), Code::PermissionDenied);
    calls.note(REVOKE, &r);
    // A write on a follower, forwarded to the leader (over the Raft
    // transport, which is not counted as an API call anywhere).
    let r = c
        .tokens_on(on, "admin")
        .await
        .revoke(revoke_jti("metrics-test-1"))
        .await;
    calls.note(REVOKE, &r);
    r.unwrap();
    for _ in 0..20 {
        let r = frontend
            .introspect(introspect_req(&first.access_token))
            .await;
        if let Err(s) = &r {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        }
        calls.note(INTROSPECT, &r);
    }
    let refused = calls.count(INTROSPECT, "RESOURCE_EXHAUSTED");
    assert!(
        refused >= 1,
        "twenty introspections in a row were never refused"
    );
    c.wait_converged(&[1, 2, 3]).await;

    let after: BTreeMap<u64, _> = {
        let mut m = BTreeMap::new();
        for i in 1..=3 {
            m.insert(i, parse(&scrape(&c, i).await));
        }
        m
    };
    for i in 1..=3 {
        let (b, a) = (&before[&i], &after[&i]);
        let rpc = deltas(b, a, "tessera_rpc_requests_total");
        if i == on {
            assert_eq!(rpc, calls.expected(), "node {i}");
        } else {
            assert!(rpc.is_empty(), "node {i} served no API call: {rpc:?}");
        }
        // Every node applied the one revocation.
        assert_eq!(
            deltas(b, a, "tessera_revocations_applied_total"),
            BTreeMap::from([(series("tessera_revocations_applied_total", &[]), 1.0)]),
            "node {i}"
        );
        assert!(a[&series("tessera_revocations_active", &[])] >= 1.0);
        // Raft's state, as every node sees it.
        assert_eq!(
            a[&series("tessera_raft_leader_id", &[])],
            leader as f64,
            "node {i}"
        );
        assert_eq!(
            a[&series("tessera_raft_is_leader", &[])],
            f64::from(u8::from(i == leader))
        );
        assert!(a[&series("tessera_raft_applied_index", &[])] >= 1.0);
        assert!(a[&series("tessera_raft_commit_index", &[])] >= 1.0);
        assert!(a[&series("tessera_raft_term", &[])] >= 1.0);
        assert!(a[&series("tessera_signing_key_created_timestamp_seconds", &[])] > 0.0);
        assert!(
            a[&series("tessera_certificate_expiry_timestamp_seconds", &[])] > c.now() as f64,
            "the node certificate is valid"
        );
        assert_eq!(a[&series("tessera_watch_subscribers", &[])], 0.0);
        assert!(a.contains_key(&series(
            "tessera_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("profile", "debug")]
        )));
    }
    // Every metric the dashboard and the alert rules use is served by some
    // node (a family with no series yet is not listed; anomalies have
    // their own test).
    let mut texts = Vec::new();
    for i in 1..=3 {
        texts.push(scrape(&c, i).await);
    }
    let served: std::collections::BTreeSet<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .chain(["tessera_anomalies_total"])
        .collect();
    for file in [
        include_str!("../../deploy/grafana/tessera.json"),
        include_str!("../../deploy/prometheus/alerts.yaml"),
    ] {
        for name in file
            .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .filter(|t| t.starts_with("tessera_"))
        {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(served.contains(family), "{name} is not served");
        }
    }
    // The leader knows each follower's lag.
    let lag: Vec<&String> = after[&leader]
        .keys()
        .filter(|k| k.starts_with("tessera_raft_replication_lag_entries{"))
        .collect();
    assert_eq!(lag.len(), 2, "{lag:?}");

    // On the node that served them: latencies, decisions, per-caller
    // counts, rate-limit refusals.
    let (b, a) = (&before[&on], &after[&on]);
    let d = |metric: &str| deltas(b, a, metric);
    assert_eq!(
        d("tessera_rpc_duration_seconds_count")
            [&series("tessera_rpc_duration_seconds_count", &[("method", ISSUE)])],
        6.0
    );
    let ok_introspections = calls.count(INTROSPECT, "OK") as f64;
    let decision = |action: &str, outcome: &str| {
        series(
            "tessera_policy_decisions_total",
            &[("action", action), ("outcome", outcome)],
        )
    };
    assert_eq!(
        d("tessera_policy_decisions_total"),
        BTreeMap::from([
            (decision("issue", "allow"), 3.0),
            (decision("issue", "deny"), 2.0),
            (decision("exchange", "allow"), 1.0),
            (decision("revoke", "allow"), 1.0),
            (decision("revoke", "deny"), 1.0),
            // Frontend is not the token's audience: active, but the claims
            // are not disclosed to it (a `deny` of `disclose`).
            (decision("introspect", "deny"), ok_introspections),
        ])
    );
    let per_caller = |op: &str, outcome: &str, who: &str| {
        series(
            "tessera_token_requests_total",
            &[("op", op), ("outcome", outcome), ("caller", &id(who))],
        )
    };
    assert_eq!(
        d("tessera_token_requests_total"),
        BTreeMap::from([
            (per_caller("issue", "allow", "frontend"), 3.0),
            (per_caller("issue", "deny", "frontend"), 2.0),
            (per_caller("exchange", "allow", "orders"), 1.0),
        ])
    );
    assert_eq!(
        d("tessera_rate_limit_refusals_total"),
        BTreeMap::from([(
            series(
                "tessera_rate_limit_refusals_total",
                &[("class", "introspect")]
            ),
            refused as f64
        )])
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_at_twenty_times_the_baseline_raise_one_anomaly() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.metrics.anomaly = AnomalySettings {
            bucket_secs: 60,
            multiple: 10.0,
            min_rate: 10,
            min_refusals: 1_000,
            alpha: 0.2,
            warmup: 3,
            window_secs: 300,
            max_identities: 100,
        };
    })
    .await;
    let mut frontend = c.tokens("frontend").await;
    let mut orders = c.tokens("orders").await;
    // `per_minute` exchanges by orders in each of `minutes` minutes of the
    // manual clock.
    let mut run = async |minutes: u64, per_minute: u64| {
        for _ in 0..minutes {
            let t = frontend
                .issue_token(issue_req("orders", &["payments:charge"]))
                .await
                .unwrap()
                .into_inner();
            for _ in 0..per_minute {
                orders
                    .exchange_token(exchange_req(
                        &t.access_token,
                        "payments",
                        &["payments:charge"],
                    ))
                    .await
                    .unwrap();
            }
            c.clock.advance(60);
        }
    };
    // A baseline of two a minute; then forty a minute (20x) for two
    // minutes, inside one alert window.
    run(5, 2).await;
    run(2, 40).await;

    let m = parse(&scrape(&c, 1).await);
    let anomalies: BTreeMap<&String, &f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("tessera_anomalies_total{"))
        .collect();
    let exchange = series(
        "tessera_anomalies_total",
        &[("signal", "exchange"), ("caller", &id("orders"))],
    );
    assert_eq!(anomalies, BTreeMap::from([(&exchange, &1.0)]));

    let orders_id = id("orders");
    c.stop_audit_and_read(move |audit| {
        let events: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["op"] == "anomaly")
            .collect();
        assert_eq!(events.len(), 1, "{events:#?}");
        let e = &events[0];
        assert_eq!(e["decision"], "alert");
        assert_eq!(e["caller"], orders_id.as_str());
        assert_eq!(e["anomaly"]["signal"], "exchange");
        // Raised the moment the count passed ten times the baseline of 2.
        assert_eq!(e["anomaly"]["count"], 21);
    })
    .await;
}

/// A node whose audit log could not be written went on deciding, with no
/// record of its decisions and no metric to alert on: the writer counted
/// the lost records but nothing exported them, and the `audit_dropped`
/// record operators were told to alert on cannot reach a full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_audit_disk_was_full_kept_issuing_unaudited_tokens() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.audit = tessera::api::AuditSink::File("/dev/full".into());
    })
    .await;
    // A decision whose record cannot be written; the node may already be
    // stopping when it answers.
    let _ = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write"]))
        .await;
    let message = tokio::time::timeout(WAIT, c.node(1).failed())
        .await
        .expect("the node stops when its audit log cannot be written");
    assert!(message.contains("audit log /dev/full"), "{message}");
    assert!(message.contains("No space left on device"), "{message}");
    let m = parse(&c.node(1).metrics().encode());
    assert!(
        m[&series("tessera_audit_records_dropped_total", &[])] >= 1.0,
        "{m:?}"
    );
    assert!(m[&series("tessera_audit_write_errors_total", &[])] >= 1.0);
}
