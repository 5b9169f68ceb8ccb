//! `tessera health`: a probe for Kubernetes exec probes, systemd and
//! scripts. It connects with a client certificate (like every other
//! command), asks `grpc.health.v1.Health/Check` for the whole node and for
//! each `--service`, all within `--timeout`, and exits 0 when every answer
//! is `SERVING`, 1 otherwise, with a one-line reason.

use std::time::Duration;

use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{CliError, ConnArgs};

/// Options of `tessera health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Also check this service (repeatable), e.g. `tessera.v1.TokenService`.
    /// The whole node ("") is always checked.
    #[arg(long = "service")]
    services: Vec<String>,
    /// Longest the whole probe may take, connection included: `500ms`,
    /// `3s` or a number of seconds.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// `500ms`, `3s` or `3` (seconds); between 1 ms and 10 minutes.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().map(Duration::from_millis)
    } else {
        s.strip_suffix('s')
            .unwrap_or(s)
            .parse()
            .map(Duration::from_secs)
    }
    .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 3s, 3)"))?;
    if d.is_zero() || d > Duration::from_secs(600) {
        return Err("the timeout must be between 1ms and 600s".into());
    }
    Ok(d)
}

/// Runs `tessera health`.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    let endpoint = args.conn.endpoint.clone();
    tracing::debug!(%endpoint, services = ?args.services, "checking health");
    let probe = async {
        let channel = args
            .conn
            .channel()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let mut client = HealthClient::new(channel);
        let services = std::iter::once(String::new()).chain(args.services.iter().cloned());
        for service in services {
            let name = if service.is_empty() {
                "node".to_string()
            } else {
                format!("service {service}")
            };
            let status = client
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::NotFound => format!("{name}: unknown to {endpoint}"),
                    code => format!("{name} at {endpoint}: {code:?}: {}", s.message()),
                })?
                .into_inner()
                .status;
            let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
            if status != ServingStatus::Serving {
                return Err(format!("{name} at {endpoint} is {}", status.as_str_name()));
            }
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(args.timeout, probe).await {
        Ok(Ok(())) => {
            println!("SERVING {endpoint}");
            Ok(())
        }
        Ok(Err(reason)) => Err(CliError::Failed(anyhow::anyhow!(reason))),
        Err(_) => Err(CliError::Failed(anyhow::anyhow!(
            "no answer from {endpoint} within {:?}",
            args.timeout
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units_and_bounds() {
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
        for bad in ["0", "0ms", "601s", "x", "-1s", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
