//! A resource server with [`Verifier`] and [`RevocationCache`]: the `orders`
//! service of the development cluster verifies the tokens it reads on stdin
//! (one per line), locally, as if `frontend` had presented them over mutual
//! TLS.
//!
//! ```text
//! tessera dev                                  # in another terminal
//! cargo run --example caller | cargo run --example resource_server
//! ```
//!
//! Revoke a token (`tessera revoke --jti ...`) and verify it again: the
//! cache has the revocation within milliseconds. Settings from the
//! environment: `TESSERA_DEV_DIR` (default `.tessera-dev`),
//! `TESSERA_ENDPOINTS` (default the dev cluster's three API ports) and
//! `TESSERA_PRESENTER` (whose certificate presents the tokens, default
//! `frontend`).

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tessera::client::{CacheConfig, RevocationCache, Verifier, VerifierConfig, VerifyError};
use tessera::tls::TlsFiles;

const TD: &str = "spiffe://tessera.dev";

fn files(name: &str) -> TlsFiles {
    let dir = PathBuf::from(std::env::var("TESSERA_DEV_DIR").unwrap_or(".tessera-dev".into()))
        .join("certs");
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

fn endpoints() -> Vec<String> {
    std::env::var("TESSERA_ENDPOINTS")
        .unwrap_or("127.0.0.1:7443,127.0.0.1:7444,127.0.0.1:7445".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let me = files("orders");
    let cache = RevocationCache::start(CacheConfig::new(endpoints(), me.clone()))?;
    let mut config = VerifierConfig::new(
        endpoints(),
        me,
        "https://tessera.dev",
        format!("{TD}/svc/orders"),
    );
    // Fails closed: every token is refused until the cache has its first
    // snapshot, or once it has heard nothing from the cluster for
    // `max_staleness` (30 s by default; tightened here).
    config.max_staleness = Duration::from_secs(20);
    let verifier = Verifier::new(config, cache.clone())?;
    let keys = verifier.refresh_keys().await?;
    eprintln!("{keys} verification keys loaded");

    // In a real server this is the client certificate of the TLS
    // connection the request came on.
    let presenter = std::env::var("TESSERA_PRESENTER").unwrap_or("frontend".into());
    let presenter_der = CertificateDer::from_pem_file(files(&presenter).cert)?;

    // Serve from a complete copy: wait (bounded) for the first snapshot.
    cache.wait_ready(Duration::from_secs(10)).await?;

    // Tokens from stdin, read on a thread of their own (stdin blocks).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let token = line.trim();
        if token.is_empty() {
            continue;
        }
        match verifier.verify(token, Some(presenter_der.as_ref())).await {
            Ok(t) => eprintln!(
                "accepted jti {} sub {} scopes [{}] (revocations at revision {})",
                t.claims.jti, t.claims.sub, t.claims.scope, t.revision
            ),
            Err(VerifyError::Revoked) => eprintln!("refused: revoked"),
            Err(e) => eprintln!("refused: {e}"),
        }
    }
    let status = cache.status();
    eprintln!(
        "cache: revision {}, {} entries, connected to {:?}",
        status.revision, status.entries, status.connected_to
    );
    cache.shutdown().await;
    Ok(())
}
