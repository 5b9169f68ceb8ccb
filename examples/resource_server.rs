//! A resource server with the client crate's [`AuthLayer`]: the `orders`
//! service of the development cluster serves a small gRPC API over mutual
//! TLS; every request is verified locally (JWKS, certificate binding, the
//! live revocation cache) before its handler runs, and the handler reads
//! the verified claims from the request.
//!
//! ```text
//! tessera dev                                  # in another terminal
//! cargo run --example resource_server          # serves 127.0.0.1:7500
//! cargo run --example caller                   # calls it as frontend
//! ```
//!
//! Revoke the caller's token (`tessera revoke --jti ...`, the jti is in
//! the caller's output) and call again with the same token: refused within
//! milliseconds. Settings from the environment: `TESSERA_DEV_DIR` (default
//! `.tessera-dev`), `TESSERA_ENDPOINTS` (default the dev cluster's three API
//! ports) and `ORDERS_LISTEN` (default `127.0.0.1:7500`).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_client::{AuthLayer, CacheConfig, RevocationCache, TlsFiles, Verifier, VerifierConfig};

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
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let me = files("orders");
    let cache = RevocationCache::start(CacheConfig::new(endpoints(), me.clone()))?;
    let mut config = VerifierConfig::new(
        endpoints(),
        me.clone(),
        "https://tessera.dev",
        format!("{TD}/svc/orders"),
    );
    // Fails closed: requests are refused (UNAVAILABLE) until the cache has
    // its first snapshot, or once it has heard nothing for this long.
    config.max_staleness = Duration::from_secs(20);
    let verifier = Arc::new(Verifier::new(config, cache.clone())?);
    verifier.refresh_keys().await?;
    cache.wait_ready(Duration::from_secs(10)).await?;

    let listen = std::env::var("ORDERS_LISTEN").unwrap_or("127.0.0.1:7500".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("orders serving on {listen}; Ctrl-C stops");
    let auth = AuthLayer::new(verifier, common::routes("orders:write"));
    common::serve(listener, &me, auth, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    cache.shutdown().await;
    Ok(())
}
