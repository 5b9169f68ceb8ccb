//! The development directory and the addresses of its nodes: the
//! [`Layout`] (node count and base ports, recorded in `DIR/dev.json` because
//! Raft membership stores addresses), the rules for restarting a cluster in
//! an existing directory, and [`prepare`], which creates the certificates,
//! KEK, policy and pid file the nodes need.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cmd::CliError;

/// The example policy, written to `DIR/policy.cedar` on first start.
const EXAMPLE_POLICY: &str = include_str!("../../../deploy/policy/example.cedar");
/// The record of the options the cluster in a directory was created with.
const LAYOUT_FILE: &str = "dev.json";
/// The supervisor's own pid (for `scripts/restart-node.sh`).
pub(super) const SUPERVISOR_PID_FILE: &str = "dev.pid";

/// The options that fix a cluster's addresses, recorded in `DIR/dev.json`:
/// Raft membership stores addresses, so a restart must reuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Layout {
    /// Every node, voters and learners.
    pub(super) nodes: u32,
    pub(super) base_port: u16,
    pub(super) raft_base_port: u16,
    /// How many of the last nodes are learners (absent in the records of
    /// clusters made before learners existed: none).
    #[serde(default)]
    pub(super) learners: u32,
}

impl Layout {
    /// Refuses port ranges that overflow or overlap.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.learners >= self.nodes {
            return Err("--nodes must be at least 1".into());
        }
        if self.nodes > 9 {
            return Err(format!(
                "at most 9 nodes in all: {} voters and {} learners",
                self.voters(),
                self.learners
            ));
        }
        let range = |base: u16, what: &str| -> Result<Option<(u32, u32)>, String> {
            if base == 0 {
                return Ok(None);
            }
            let last = u32::from(base) + self.nodes - 1;
            if last > u32::from(u16::MAX) {
                return Err(format!(
                    "{what} {base} leaves no room for {} nodes (last port {last})",
                    self.nodes
                ));
            }
            Ok(Some((u32::from(base), last)))
        };
        let api = range(self.base_port, "--base-port")?;
        let raft = if self.base_port == 0 {
            None
        } else {
            range(self.raft_base_port, "--raft-base-port")?
        };
        if let (Some((a0, a1)), Some((r0, r1))) = (api, raft) {
            if a0 <= r1 && r0 <= a1 {
                return Err(format!(
                    "API ports {a0}-{a1} and Raft ports {r0}-{r1} overlap; \
                     choose --base-port and --raft-base-port further apart"
                ));
            }
        }
        Ok(())
    }

    /// How many nodes vote (nodes 1 to this).
    pub(super) fn voters(&self) -> u32 {
        self.nodes - self.learners
    }

    /// Whether some listener uses a port picked by the kernel.
    pub(super) fn kernel_ports(&self) -> bool {
        self.base_port == 0 || self.raft_base_port == 0
    }

    /// The API listen address of node `i` (1-based).
    pub(super) fn api_listen(&self, i: u32) -> String {
        let port = match self.base_port {
            0 => 0,
            base => u32::from(base) + i - 1,
        };
        format!("127.0.0.1:{port}")
    }

    /// The Raft listen address of node `i` (1-based).
    pub(super) fn raft_listen(&self, i: u32) -> String {
        let port = if self.base_port == 0 || self.raft_base_port == 0 {
            0
        } else {
            u32::from(self.raft_base_port) + i - 1
        };
        format!("127.0.0.1:{port}")
    }
}

/// Decides whether the cluster in a directory may be (re)started with
/// `want`. `recorded` is `DIR/dev.json` if present; `has_data` whether any
/// node data directory exists. Returns a message for the operator if not.
fn check_restart(want: &Layout, recorded: Option<&Layout>, has_data: bool) -> Result<(), String> {
    if !has_data {
        return Ok(());
    }
    match recorded {
        None => Err("holds node data not created by `tessera dev` (perhaps by \
                     `tessera serve --dev`); use another --dir or remove that data"
            .into()),
        Some(r) if r.kernel_ports() => {
            Err("holds a cluster started with ports picked by the kernel \
                    (--base-port 0); its Raft addresses cannot be reused, so it \
                    cannot be restarted: remove the directory or use another --dir"
                .into())
        }
        Some(r) if r != want => Err(format!(
            "holds a cluster created with --nodes {} --learners {} --base-port {} --raft-base-port {}; \
             Raft membership records those addresses, so restart it with the same \
             options (or use another --dir)",
            r.voters(),
            r.learners,
            r.base_port,
            r.raft_base_port
        )),
        Some(_) => Ok(()),
    }
}

/// The HTTPS listen address of node `i` (1-based).
pub(super) fn http_listen(layout: &Layout, http_base_port: u16, i: u32) -> String {
    let port = if layout.base_port == 0 || http_base_port == 0 {
        0
    } else {
        (u32::from(http_base_port) + i - 1).min(u32::from(u16::MAX))
    };
    format!("127.0.0.1:{port}")
}

/// Whether `pid` names a live process that looks like a `tessera` binary
/// (Linux `/proc`; elsewhere nothing is detected).
fn tessera_alive(pid: u32) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("tessera"),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Creates what the nodes need in `dir`, refusing anything inconsistent.
pub(super) fn prepare(dir: &Path, layout: &Layout) -> Result<(), CliError> {
    let usage = |m: String| CliError::Usage(m);
    fs::create_dir_all(dir).map_err(|e| usage(format!("creating {}: {e}", dir.display())))?;
    if let Some(pid) = read_pid(&dir.join(SUPERVISOR_PID_FILE)) {
        if pid != std::process::id() && tessera_alive(pid) {
            return Err(usage(format!(
                "a `tessera dev` (pid {pid}) is already running in {}",
                dir.display()
            )));
        }
    }
    let layout_path = dir.join(LAYOUT_FILE);
    let recorded: Option<Layout> = match fs::read_to_string(&layout_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| usage(format!("{}: {e}", layout_path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(usage(format!("{}: {e}", layout_path.display()))),
    };
    let max_nodes = recorded.map_or(layout.nodes, |r| r.nodes.max(layout.nodes));
    // Nodes left behind by a supervisor that was killed (-9) still hold
    // their ports and databases; new ones would only fail obscurely.
    let orphans: Vec<String> = (1..=max_nodes)
        .filter_map(|i| {
            let pid = read_pid(&dir.join(format!("node{i}.pid")))?;
            tessera_alive(pid).then(|| format!("node {i} (pid {pid})"))
        })
        .collect();
    if !orphans.is_empty() {
        return Err(usage(format!(
            "{} of an earlier `tessera dev` in {} still running; stop them first \
             (kill <pid>)",
            orphans.join(", "),
            dir.display()
        )));
    }
    let has_data = (1..=max_nodes).any(|i| dir.join(format!("node{i}")).exists());
    check_restart(layout, recorded.as_ref(), has_data)
        .map_err(|m| usage(format!("{} {m}", dir.display())))?;

    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        let opts = tessera::certs::DevPkiOptions {
            nodes: layout.nodes,
            ..Default::default()
        };
        tessera::certs::init_dev_pki(&certs, &opts)
            .map_err(|e| usage(format!("creating development certificates: {e}")))?;
        eprintln!("created development certificates in {}", certs.display());
    }
    let mut needed: Vec<String> = (1..=layout.nodes).map(|i| format!("node{i}")).collect();
    needed.push("admin".into());
    for name in needed {
        for ext in ["pem", "key"] {
            let p = certs.join(format!("{name}.{ext}"));
            if !p.exists() {
                return Err(usage(format!(
                    "{} is missing; recreate the certificates with \
                     `tessera certs init --dir {} --nodes {} --force`",
                    p.display(),
                    certs.display(),
                    layout.nodes
                )));
            }
        }
    }
    tessera::keys::Kek::load_or_generate(&dir.join("kek"))
        .map_err(|e| usage(format!("key-encryption key: {e}")))?;
    let policy = dir.join("policy.cedar");
    if !policy.exists() {
        fs::write(&policy, EXAMPLE_POLICY)
            .map_err(|e| usage(format!("writing {}: {e}", policy.display())))?;
    }
    let json = serde_json::to_string_pretty(layout)
        .map_err(|e| usage(format!("encoding {}: {e}", layout_path.display())))?;
    fs::write(&layout_path, json + "\n")
        .map_err(|e| usage(format!("writing {}: {e}", layout_path.display())))?;
    fs::write(
        dir.join(SUPERVISOR_PID_FILE),
        format!("{}\n", std::process::id()),
    )
    .map_err(|e| {
        usage(format!(
            "writing {}: {e}",
            dir.join(SUPERVISOR_PID_FILE).display()
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    use super::*;

    fn layout(nodes: u32, base_port: u16, raft_base_port: u16) -> Layout {
        Layout {
            nodes,
            base_port,
            raft_base_port,
            learners: 0,
        }
    }

    #[test]
    fn addresses_follow_the_base_ports() {
        let l = layout(3, 7443, 7543);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.api_listen(1), "127.0.0.1:7443");
        assert_eq!(l.api_listen(3), "127.0.0.1:7445");
        assert_eq!(l.raft_listen(1), "127.0.0.1:7543");
        assert_eq!(l.raft_listen(3), "127.0.0.1:7545");
        assert!(!l.kernel_ports());
    }

    #[test]
    fn base_port_zero_means_kernel_ports_for_both_listeners() {
        let l = layout(3, 0, 7543);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.api_listen(2), "127.0.0.1:0");
        assert_eq!(l.raft_listen(2), "127.0.0.1:0");
        assert!(l.kernel_ports());
        let l = layout(3, 7443, 0);
        assert_eq!(l.api_listen(2), "127.0.0.1:7444");
        assert_eq!(l.raft_listen(2), "127.0.0.1:0");
        assert!(l.kernel_ports());
    }

    #[test]
    fn learners_come_after_the_voters_and_count_towards_nine_nodes() {
        let l = Layout {
            learners: 4,
            ..layout(7, 7443, 7543)
        };
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.voters(), 3);
        assert_eq!(l.api_listen(7), "127.0.0.1:7449");
        let too_many = Layout {
            learners: 7,
            ..layout(10, 7443, 7543)
        };
        assert!(too_many.validate().unwrap_err().contains("at most 9"));
        let no_voter = Layout {
            learners: 2,
            ..layout(2, 7443, 7543)
        };
        assert!(no_voter.validate().is_err());
        // A restart names the options the cluster was created with.
        let e = check_restart(&layout(3, 7443, 7543), Some(&l), true).unwrap_err();
        assert!(e.contains("--nodes 3 --learners 4"), "{e}");
        // A record written before learners existed reads as none.
        let old: Layout =
            serde_json::from_str(r#"{"nodes":3,"base_port":7443,"raft_base_port":7543}"#).unwrap();
        assert_eq!(old, layout(3, 7443, 7543));
    }

    #[test]
    fn port_ranges_must_fit_and_not_overlap() {
        assert!(layout(3, 65534, 7543).validate().is_err());
        assert_eq!(layout(2, 65534, 7543).validate(), Ok(()));
        assert!(layout(3, 7443, 7445).validate().is_err());
        assert!(layout(3, 7445, 7443).validate().is_err());
        assert_eq!(layout(3, 7443, 7446).validate(), Ok(()));
        assert_eq!(layout(3, 7446, 7443).validate(), Ok(()));
        assert!(layout(0, 7443, 7543).validate().is_err());
        // With kernel ports for the API, the Raft base is irrelevant.
        assert_eq!(layout(3, 0, 65535).validate(), Ok(()));
    }

    #[test]
    fn restart_rules() {
        let want = layout(3, 7443, 7543);
        // Fresh directory: anything goes.
        assert_eq!(check_restart(&want, None, false), Ok(()));
        assert_eq!(check_restart(&want, Some(&layout(5, 1, 2)), false), Ok(()));
        // Same options: a restart.
        assert_eq!(check_restart(&want, Some(&want), true), Ok(()));
        // Data without a record (serve --dev), other options, kernel ports.
        assert!(check_restart(&want, None, true).is_err());
        let e = check_restart(&want, Some(&layout(3, 8443, 7543)), true).unwrap_err();
        assert!(e.contains("--base-port 8443"), "{e}");
        assert!(check_restart(&want, Some(&layout(4, 7443, 7543)), true).is_err());
        assert!(check_restart(&want, Some(&layout(3, 7443, 7544)), true).is_err());
        let zero = layout(3, 0, 0);
        let e = check_restart(&zero, Some(&zero), true).unwrap_err();
        assert!(e.contains("cannot be restarted"), "{e}");
    }

    #[test]
    fn prepare_creates_the_directory_once_and_refuses_other_ports() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let l = layout(3, 7443, 7543);
        assert!(prepare(&dir, &l).is_ok());
        for f in [
            "certs/ca.pem",
            "certs/node3.pem",
            "certs/admin.key",
            "kek",
            "policy.cedar",
            "dev.json",
            "dev.pid",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        assert_eq!(
            fs::read_to_string(dir.join("policy.cedar")).unwrap(),
            EXAMPLE_POLICY
        );
        let kek = fs::read(dir.join("kek")).unwrap();
        // Nodes have data now: same options restart, others are refused.
        fs::create_dir(dir.join("node1")).unwrap();
        assert!(prepare(&dir, &l).is_ok());
        assert_eq!(fs::read(dir.join("kek")).unwrap(), kek, "the KEK is kept");
        match prepare(&dir, &layout(3, 8443, 8543)) {
            Err(CliError::Usage(m)) => assert!(m.contains("--base-port 7443"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        // More nodes than there are certificates.
        fs::remove_dir(dir.join("node1")).unwrap();
        match prepare(&dir, &layout(4, 7443, 7543)) {
            Err(CliError::Usage(m)) => assert!(m.contains("node4.pem"), "{m}"),
            _ => panic!("expected a usage error"),
        }
    }

    #[test]
    fn prepare_refuses_a_directory_with_a_live_supervisor() {
        let tmp = tempfile::tempdir().unwrap();
        // The test binary itself stands in for a running supervisor
        // (its command line names `tessera`).
        let me = std::process::id();
        assert!(tessera_alive(me));
        // Our own pid is allowed (a pid file left by this very process).
        fs::write(tmp.path().join(SUPERVISOR_PID_FILE), format!("{me}\n")).unwrap();
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());
        let mut child = stand_in();
        fs::write(
            tmp.path().join(SUPERVISOR_PID_FILE),
            format!("{}\n", child.id()),
        )
        .unwrap();
        let r = prepare(tmp.path(), &layout(1, 7443, 7543));
        drop(child.stdin.take());
        child.wait().unwrap();
        match r {
            Err(CliError::Usage(m)) => assert!(m.contains("already running"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        // Once it is gone, a stale pid file is ignored.
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());

        // A node left running by a supervisor that was killed.
        let mut child = stand_in();
        fs::write(tmp.path().join("node1.pid"), format!("{}\n", child.id())).unwrap();
        let r = prepare(tmp.path(), &layout(1, 7443, 7543));
        drop(child.stdin.take());
        child.wait().unwrap();
        match r {
            Err(CliError::Usage(m)) => assert!(m.contains("node 1 (pid"), "{m}"),
            _ => panic!("expected a usage error"),
        }
        assert!(prepare(tmp.path(), &layout(1, 7443, 7543)).is_ok());
    }

    /// A live process whose command line names tessera, running until its
    /// stdin closes. Returns once it has said so: right after `spawn` the
    /// kernel may not have set up its command line yet.
    fn stand_in() -> std::process::Child {
        let mut child = Command::new("sh")
            .args(["-c", "echo up; read x", "tessera"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "up\n");
        child
    }

    /// The Kubernetes example carries a copy of the example policy in a
    /// ConfigMap; it must not drift from the real one.
    #[test]
    fn k8s_configmap_holds_the_example_policy() {
        let yaml = include_str!("../../../deploy/k8s/tessera.yaml");
        let start = yaml.find("  policy.cedar: |\n").expect("the ConfigMap key");
        let mut copy = String::new();
        for line in yaml[start..].lines().skip(1) {
            if line.starts_with("---") {
                break;
            }
            copy.push_str(line.strip_prefix("    ").unwrap_or(line));
            copy.push('\n');
        }
        assert_eq!(copy.trim_end(), EXAMPLE_POLICY.trim_end());
    }
}
