//! The client side of Tessera: what callers and resource servers embed.
//!
//! For now this holds the connection helper the CLI, the benchmark and the
//! tests share: a tonic channel over mutual TLS with the caller's
//! certificate.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::tls::TlsFiles;

/// Errors while connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint or TLS setup is invalid, or the connection failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds an endpoint for `addr` (`host:port` or `https://host:port`) that
/// presents the certificate in `files` and trusts only `files.ca`. The
/// server name checked is `localhost` when `server_name` is `None`, which
/// the development certificates carry.
pub fn endpoint(
    addr: &str,
    files: &TlsFiles,
    server_name: Option<&str>,
) -> Result<Endpoint, ClientError> {
    let uri = if addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("https://{addr}")
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .domain_name(server_name.unwrap_or("localhost"));
    let connect_err = |source| ClientError::Connect {
        endpoint: uri.clone(),
        source,
    };
    let ep = Endpoint::from_shared(uri.clone())
        .map_err(connect_err)?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(ep)
}

/// Connects to `addr` over mutual TLS.
pub async fn connect(addr: &str, files: &TlsFiles) -> Result<Channel, ClientError> {
    let ep = endpoint(addr, files, None)?;
    ep.connect().await.map_err(|source| ClientError::Connect {
        endpoint: addr.to_string(),
        source,
    })
}
