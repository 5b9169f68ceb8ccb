//! A calling service with the client crate's [`TokenLayer`]: the `frontend`
//! of the development cluster calls the `orders` example server; the layer
//! gets (and caches, and renews) frontend's token for `orders` and attaches
//! it to each call.
//!
//! ```text
//! tessera dev                                  # in another terminal
//! cargo run --example resource_server          # in a third
//! cargo run --example caller
//! ```
//!
//! The first call succeeds and prints what the server's handler saw; the
//! second asks for a method whose scope frontend does not hold and is
//! refused with `PERMISSION_DENIED`. Settings from the environment:
//! `TESSERA_DEV_DIR` (default `.tessera-dev`), `TESSERA_ENDPOINTS` (default
//! the dev cluster's three API ports), `ORDERS_ADDR` (default
//! `127.0.0.1:7500`).

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use tessera_client::{TlsFiles, TokenLayer, TokenSource, TokenSourceConfig};

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
    // One crypto backend for the whole process, as the `tessera` binary does.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let me = files("frontend");
    let source = Arc::new(TokenSource::new(TokenSourceConfig::new(
        endpoints(),
        me.clone(),
    ))?);
    let tokens = TokenLayer::new(source, format!("{TD}/svc/orders"), ["orders:write"]);
    // The same certificate for the call as for the token: it is bound to it.
    let addr = std::env::var("ORDERS_ADDR").unwrap_or("127.0.0.1:7500".into());
    let channel = tessera_client::endpoint(&addr, &me, Some("orders.tessera.dev"))?.connect_lazy();

    let receipt = common::call(channel.clone(), &tokens, common::PLACE, "book", None).await?;
    eprintln!(
        "placed {}: sub {} client {} scopes [{}] jti {}",
        receipt.item, receipt.subject, receipt.client_id, receipt.scope, receipt.jti
    );
    match common::call(channel, &tokens, common::REFUND, "book", None).await {
        Ok(_) => eprintln!("refund accepted (unexpected: frontend holds no orders:refund)"),
        Err(status) => eprintln!("refund refused: {:?} {}", status.code(), status.message()),
    }
    Ok(())
}
