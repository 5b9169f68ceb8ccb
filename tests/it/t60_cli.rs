//! The binary's contract with its operator: `--help` everywhere, exit code
//! 64 with a clear message on invalid configuration.

use std::process::Command;

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_KEK")
        .output()
        .unwrap()
}

#[test]
fn help_on_every_subcommand() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["certs", "init", "--help"],
        vec!["token", "issue", "--help"],
        vec!["token", "exchange", "--help"],
        vec!["token", "introspect", "--help"],
        vec!["revoke", "--help"],
        vec!["jwks", "--help"],
        vec!["health", "--help"],
        vec!["bench", "--help"],
    ] {
        let out = tessera(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn invalid_configuration_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Missing TLS files.
    let out = tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--raft-listen",
        "127.0.0.1:0",
        "--data-dir",
        d,
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca is required"));
    // An unknown key in the config file.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "node_id = 1\nlisten = \"127.0.0.1:0\"\nno_such_key = 3\n",
    )
    .unwrap();
    let out = tessera(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
    // A bad flag value.
    let out = tessera(&["serve", "--node-id", "zero"]);
    assert_eq!(out.status.code(), Some(64));
    // An invalid policy, with everything else present.
    let pki = tessera::certs::init_dev_pki(&dir.path().join("certs"), &Default::default()).unwrap();
    let policy = dir.path().join("p.cedar");
    std::fs::write(
        &policy,
        "permit(principal, action, resource) when { context.nope };",
    )
    .unwrap();
    let f = pki.tls_files("node1").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--data-dir",
            d,
        ])
        .args([
            "--ca",
            f.ca.to_str().unwrap(),
            "--cert",
            f.cert.to_str().unwrap(),
            "--key",
            f.key.to_str().unwrap(),
        ])
        .args(["--policy", policy.to_str().unwrap()])
        .env("TESSERA_KEK", crate::cluster::KEK)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy"));
    // A max lifetime below the default.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--data-dir",
            d,
            "--max-lifetime",
            "10",
        ])
        .args([
            "--ca",
            f.ca.to_str().unwrap(),
            "--cert",
            f.cert.to_str().unwrap(),
            "--key",
            f.key.to_str().unwrap(),
        ])
        .env("TESSERA_KEK", crate::cluster::KEK)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeds the maximum"), "{err}");
    // Bad limits: a malformed rate limit, a zero connection cap.
    for bad in [
        ["--rate-limit", "issue=fast"],
        ["--rate-limit", "nosuchclass=1/2"],
        ["--max-connections-per-peer", "0"],
        ["--watch-snapshot-deadline", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--raft-listen",
                "127.0.0.1:0",
                "--data-dir",
                d,
            ])
            .args(bad)
            .args([
                "--ca",
                f.ca.to_str().unwrap(),
                "--cert",
                f.cert.to_str().unwrap(),
                "--key",
                f.key.to_str().unwrap(),
            ])
            .env("TESSERA_KEK", crate::cluster::KEK)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("rate limit")
                || err.contains("connection limits")
                || err.contains("snapshot deadline must be positive"),
            "{bad:?}: {err}"
        );
    }
}
