//! A calling service with [`TokenSource`]: the `frontend` of the development
//! cluster gets its own token for `orders`, and keeps getting it from the
//! cache until the renewal point.
//!
//! ```text
//! tessera dev                                  # in another terminal
//! cargo run --example caller | cargo run --example resource_server
//! ```
//!
//! The token goes to stdout (it is this program's output, for the pipe);
//! everything else, jtis included, to stderr. Settings from the
//! environment: `TESSERA_DEV_DIR` (default `.tessera-dev`) and
//! `TESSERA_ENDPOINTS` (default the dev cluster's three API ports).

use std::path::PathBuf;

use tessera::client::{TokenSource, TokenSourceConfig};
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
    // One crypto backend for the whole process, as the `tessera` binary does.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let tokens = TokenSource::new(TokenSourceConfig::new(endpoints(), files("frontend")))?;
    let orders = format!("{TD}/svc/orders");
    let scopes = ["orders:write", "payments:charge", "ledger:write"];

    let token = tokens.token(&orders, &scopes).await?;
    // The second call is answered from the cache: same token, no request.
    let again = tokens.token(&orders, &scopes).await?;
    assert_eq!(token, again);
    eprintln!("got a token for {orders} ({} cached)", tokens.len());

    // A real caller sends it as `authorization: Bearer {token}` over a
    // connection made with the same certificate: the token is bound to it.
    println!("{token}");
    Ok(())
}
