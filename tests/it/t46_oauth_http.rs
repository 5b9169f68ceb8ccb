//! The OAuth 2.0 HTTP endpoints (`/oauth2/token`, `/oauth2/introspect`,
//! `/oauth2/revoke`) over real HTTPS with client certificates (RFC 8705
//! `tls_client_auth`): a full client-credentials → exchange → introspect →
//! revoke → introspect round, every RFC 6749 §5.2 error code the endpoints
//! use, and the gRPC service seeing what HTTP did (one code path).

use std::net::SocketAddr;

use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use tonic::Code;

use crate::cluster::*;
use crate::t44_https::{client_tls, send_http1, tls_connect, Reply};

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn form<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k.as_ref()), enc(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&")
}

/// `POST path` with a body of `content_type`, presenting `who`'s
/// certificate if given, over a new HTTP/1.1 connection.
async fn post_raw(
    c: &TestCluster,
    who: Option<&str>,
    path: &str,
    content_type: &str,
    body: String,
) -> Reply {
    let addr: SocketAddr = c.node(1).http_addr().expect("HTTPS listener");
    let files = who.map(|w| c.files(w));
    let ca = c.files("frontend").ca;
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send_http1(addr, &ca, files.as_ref(), req).await
}

/// A form POST as `who`.
async fn post<K: AsRef<str>, V: AsRef<str>>(
    c: &TestCluster,
    who: Option<&str>,
    path: &str,
    pairs: &[(K, V)],
) -> Reply {
    post_raw(
        c,
        who,
        path,
        "application/x-www-form-urlencoded",
        form(pairs),
    )
    .await
}

/// Asserts an RFC 6749 §5.2 error and returns its description.
fn assert_error(r: &Reply, status: StatusCode, code: &str) -> String {
    assert_eq!(
        r.status,
        status,
        "{code}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    body["error_description"].as_str().unwrap().to_string()
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn exchange_form<'a>(subject: &'a str, aud: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", AT),
        ("audience", aud),
        ("scope", scope),
        ("requested_token_type", AT),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_http_issue_exchange_introspect_revoke_round() {
    let c = TestCluster::start(1).await;
    let (orders, payments) = (id("orders"), id("payments"));

    // client_credentials: frontend's bootstrap token for orders.
    let r = post(
        &c,
        Some("frontend"),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id("frontend")),
            ("audience", &orders),
            ("scope", "orders:write payments:charge ledger:write"),
        ],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let t1 = r.json();
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["scope"], "orders:write payments:charge ledger:write");
    assert!(t1["expires_in"].as_u64().unwrap() > 0);
    assert!(t1.get("issued_token_type").is_none());
    let t1 = t1["access_token"].as_str().unwrap().to_string();

    // RFC 8693 exchange: orders narrows it for payments (via `resource`).
    let mut f = exchange_form(&t1, "", "payments:charge");
    f.retain(|(k, _)| *k != "audience");
    f.push(("resource", &payments));
    let r = post(&c, Some("orders"), "/oauth2/token", &f).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let t2 = r.json();
    assert_eq!(t2["issued_token_type"], AT);
    assert_eq!(t2["token_type"], "Bearer");
    assert_eq!(t2["scope"], "payments:charge");
    let t2 = t2["access_token"].as_str().unwrap().to_string();

    // Introspection by the audience: the claims, the actor, the binding.
    let r = post(
        &c,
        Some("payments"),
        "/oauth2/introspect",
        &[("token", &t2)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let claims = r.json();
    assert_eq!(claims["active"], true, "{claims}");
    assert_eq!(claims["sub"], id("frontend"));
    assert_eq!(claims["client_id"], orders);
    assert_eq!(claims["aud"], serde_json::json!([payments]));
    assert_eq!(claims["scope"], "payments:charge");
    assert_eq!(claims["act"]["sub"], orders);
    assert!(claims["cnf"]["x5t#S256"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    // Not an audience: told no more than "inactive" (RFC 7662 §4).
    let r = post(&c, Some("ledger"), "/oauth2/introspect", &[("token", &t2)]).await;
    assert_eq!(r.json(), serde_json::json!({ "active": false }));

    // Revocation by its holder (RFC 7009): 200, empty body.
    let r = post(
        &c,
        Some("orders"),
        "/oauth2/revoke",
        &[("token", t2.as_str()), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    // Unknown or invalid tokens are not an error either (RFC 7009 §2.2).
    let r = post(
        &c,
        Some("orders"),
        "/oauth2/revoke",
        &[("token", "not.a.token")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Now inactive, over HTTP and over gRPC (one state, one code path).
    let r = post(
        &c,
        Some("payments"),
        "/oauth2/introspect",
        &[("token", &t2)],
    )
    .await;
    assert_eq!(r.json(), serde_json::json!({ "active": false }));
    let grpc = c
        .tokens("admin")
        .await
        .introspect(introspect_req(&t2))
        .await
        .unwrap()
        .into_inner();
    assert!(!grpc.active);
    // The subject token it came from is untouched.
    let r = post(&c, Some("orders"), "/oauth2/introspect", &[("token", &t1)]).await;
    assert_eq!(r.json()["active"], true);

    // invalid_grant: the revoked token cannot be exchanged any more.
    let r = post(
        &c,
        Some("payments"),
        "/oauth2/token",
        &exchange_form(&t2, &id("ledger"), "ledger:write"),
    )
    .await;
    let why = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(why.contains("subject token"), "{why}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_http_every_error_code() {
    let c = TestCluster::start(1).await;
    let orders = id("orders");
    let t1 = c
        .tokens("frontend")
        .await
        .issue_token(issue_req("orders", &["orders:write", "payments:charge"]))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    // client_credentials for `aud`.
    let cc = |aud: &str| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("audience".to_string(), id(aud)),
            ("scope".to_string(), "orders:read".to_string()),
        ]
    };

    // invalid_client: no client certificate, or a client_id that is not
    // the certificate's identity.
    let base = cc("orders");
    let r = post(&c, None, "/oauth2/token", &base).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    let mut spoof = base.clone();
    spoof.push(("client_id".into(), orders.clone()));
    let r = post(&c, Some("frontend"), "/oauth2/token", &spoof).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    let r = post(&c, None, "/oauth2/introspect", &[("token", &t1)]).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");

    // invalid_request: no grant_type, a repeated parameter, not a form,
    // no token to introspect or revoke, a malformed exchange.
    let r = post(&c, Some("frontend"), "/oauth2/token", &[("scope", "x")]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post(
        &c,
        Some("frontend"),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "a"),
            ("scope", "b"),
        ],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post_raw(
        &c,
        Some("frontend"),
        "/oauth2/token",
        "application/json",
        r#"{"grant_type":"client_credentials"}"#.into(),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post::<&str, &str>(&c, Some("orders"), "/oauth2/introspect", &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = post(
        &c,
        Some("orders"),
        "/oauth2/revoke",
        &[("token_type_hint", "x")],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let payments = id("payments");
    let mut untyped = exchange_form(&t1, &payments, "payments:charge");
    untyped.retain(|(k, _)| *k != "subject_token_type");
    let r = post(&c, Some("orders"), "/oauth2/token", &untyped).await;
    let why = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(why.contains("subject_token_type"), "{why}");

    // unsupported_grant_type.
    let r = post(
        &c,
        Some("frontend"),
        "/oauth2/token",
        &[
            ("grant_type", "password"),
            ("username", "u"),
            ("password", "p"),
        ],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "unsupported_grant_type");

    // invalid_grant: a subject token that is not ours.
    let r = post(
        &c,
        Some("orders"),
        "/oauth2/token",
        &exchange_form(
            "eyJhbGciOiJub25lIn0.e30.",
            &id("payments"),
            "payments:charge",
        ),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");

    // invalid_scope: wider than the subject token's.
    let r = post(
        &c,
        Some("orders"),
        "/oauth2/token",
        &exchange_form(&t1, &id("payments"), "payments:charge ledger:write"),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_scope");
    // ...and none requested, for client_credentials too (it said
    // invalid_request, against HTTP.md's table).
    let r = post(
        &c,
        Some("frontend"),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("audience", orders.as_str()),
        ],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_scope");

    // invalid_target: policy grants frontend nothing for ledger.
    let r = post(&c, Some("frontend"), "/oauth2/token", &cc("ledger")).await;
    let why = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_target");
    assert!(why.contains(&id("ledger")), "{why}");

    // unauthorized_client: payments does not own frontend's token, so
    // may not revoke it (the gRPC Revoke rule).
    let r = post(&c, Some("payments"), "/oauth2/revoke", &[("token", &t1)]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "unauthorized_client");
    let still = c
        .tokens("orders")
        .await
        .introspect(introspect_req(&t1))
        .await
        .unwrap()
        .into_inner();
    assert!(still.active, "a refused revocation revoked nothing");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_http_shares_the_grpc_rate_limit() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.limits.rate.apply("issue=1/3").unwrap();
    })
    .await;
    // The burst is spent over gRPC...
    let mut frontend = c.tokens("frontend").await;
    for _ in 0..3 {
        frontend
            .issue_token(issue_req("orders", &["orders:write"]))
            .await
            .unwrap();
    }
    // ...and the token endpoint draws on the same bucket (one per second
    // refills: a few tries on a slow machine).
    let f = [
        ("grant_type", "client_credentials"),
        ("audience", "spiffe://tessera.dev/svc/orders"),
        ("scope", "orders:write"),
    ];
    let mut refused = None;
    for _ in 0..10 {
        let r = post(&c, Some("frontend"), "/oauth2/token", &f).await;
        if r.status != StatusCode::OK {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the token endpoint was never rate limited");
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    let secs: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(secs, 1, "a refill of one per second");
    assert!(
        c.node(1)
            .rate_limiter()
            .refusals(tessera::api::RpcClass::Issue)
            >= 1
    );
    // Another class of the same caller is not touched.
    let err = frontend
        .introspect(introspect_req("x.y.z"))
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    assert_ne!(err, Err(Code::ResourceExhausted));
    c.stop().await;
}

/// As `frontend`, announces a 1,000-byte form to `/oauth2/token`, sends
/// ten bytes of it and returns the head of the reply (status line and
/// headers), read within the suite's bound.
async fn post_a_trickled_body(c: &TestCluster) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr: SocketAddr = c.node(1).http_addr().expect("HTTPS listener");
    let files = c.files("frontend");
    let mut s = tls_connect(addr, client_tls(&files.ca, Some(&files), b"http/1.1")).await;
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a reply within the bound")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// The OAuth handlers read the whole body before charging the rate limit:
/// a caller over its limit that sent headers and then trickled (or held
/// back) its body kept a request and its connection waiting until the
/// request timeout, instead of being told `slow_down` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_caller_was_made_to_send_its_whole_body_first() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.limits.rate.apply("issue=1/1").unwrap();
        // Bounds each attempt whose bucket refilled in between (a slow
        // machine): that request waits for its body until this timeout.
        cfg.http.request_timeout = std::time::Duration::from_secs(3);
    })
    .await;
    let mut frontend = c.tokens("frontend").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // Spend the bucket (one token, refilled once a second)...
        let _ = frontend
            .issue_token(issue_req("orders", &["orders:write"]))
            .await;
        // ...then announce a 1,000-byte form and send ten bytes of it.
        let status_line = post_a_trickled_body(&c)
            .await
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if status_line.contains(" 429 ") {
            return c.stop().await;
        }
        statuses.push(status_line);
    }
    panic!("never refused before its body arrived: {statuses:?}");
}

/// A request still unanswered at the request timeout (here: its body never
/// all arrived) was answered 503 without the `Retry-After: 1` every other
/// 503 of the endpoints carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_was_a_503_without_retry_after() {
    let c = TestCluster::start_with(1, |cfg| {
        cfg.http.request_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let text = post_a_trickled_body(&c).await.to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 503 "), "{text}");
    assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
    c.stop().await;
}

/// Interoperability (issue 12, item 4): `tests/interop/oauth_interop.py`
/// drives the endpoints with Authlib's `OAuth2Session` and verifies the
/// tokens with joserfc against the JWKS fetched over HTTPS. Needs
/// `python3` with `authlib` and `cryptography` (`.ci/run` installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_http_interop_with_authlib() {
    let c = TestCluster::start(1).await;
    let addr = c.node(1).http_addr().expect("HTTPS listener");
    let client = |name: &str| {
        let f = c.files(name);
        serde_json::json!({ "id": id(name), "cert": f.cert, "key": f.key })
    };
    let config = serde_json::json!({
        "base": format!("https://{addr}"),
        "ca": c.files("frontend").ca,
        "now": c.now(),
        "clients": {
            "frontend": client("frontend"),
            "orders": client("orders"),
            "payments": client("payments"),
        },
    });
    let path = c.dir.path().join("interop.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/oauth_interop.py"
    );
    ensure_interop_packages().await;
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .kill_on_drop(true)
        .output();
    // Python start-up and a dozen HTTPS round trips: seconds; the bound
    // is generous for a busy machine.
    let out = tokio::time::timeout(WAIT * 4, run)
        .await
        .expect("interop script finished in time")
        .expect("python3 is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(3),
        "the interop test needs Python packages: python3 -m pip install --user authlib cryptography\n{stderr}"
    );
    assert!(
        out.status.success(),
        "interop script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("interop ok"), "{stdout}");
    c.stop().await;
}

/// Installs the interop script's Python packages when they are missing, as
/// `.ci/run` does, so that `cargo test` alone works on a fresh machine
/// (with the network access cargo itself needs). Bounded in time.
async fn ensure_interop_packages() {
    let probe = tokio::process::Command::new("python3")
        .args(["-c", "import authlib, cryptography, joserfc, requests"])
        .output()
        .await
        .expect("python3 is installed");
    if probe.status.success() {
        return;
    }
    let install = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--user",
            "authlib",
            "cryptography",
            "requests",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), install)
        .await
        .expect("pip install finished in time")
        .expect("pip runs");
    assert!(
        out.status.success(),
        "cannot install the interop test's Python packages (python3 -m pip install --user authlib cryptography requests):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A token too long for any verifier was refused over HTTP as 429
/// `slow_down`, which tells an OAuth client to back off and retry a request
/// that can never succeed. It is the request's doing: 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_too_large_to_mint_was_answered_slow_down() {
    let c = TestCluster::start_with(1, |cfg| cfg.token.max_token_len = 512).await;
    let r = post(
        &c,
        Some("frontend"),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id("frontend")),
            ("audience", &id("orders")),
            ("scope", "orders:write"),
        ],
    )
    .await;
    let why = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(why.contains("512 bytes"), "{why}");
    assert!(!r.headers.contains_key(header::RETRY_AFTER));
    c.stop().await;
}
