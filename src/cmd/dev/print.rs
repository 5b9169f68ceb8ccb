//! What `tessera dev` prints once the cluster is ready: every node's
//! addresses, data and log, the leader, and commands to try next.

use std::io::Write as _;
use std::path::Path;

use tessera::pb;

use super::supervisor::Supervisor;

/// Prints the endpoints and example commands, then `cluster ready`.
pub(super) fn print_ready(sup: &Supervisor, s: &pb::ClusterStatusResponse, initialised: bool) {
    let dir = sup.dir.display();
    let mut out = String::new();
    let verb = if initialised {
        "initialised"
    } else {
        "restarted"
    };
    out.push_str(&format!(
        "tessera dev: {} node(s) in {dir}, cluster {verb}; supervisor pid {}\n",
        sup.nodes.len(),
        std::process::id()
    ));
    for n in &sup.nodes {
        out.push_str(&format!(
            "node {} pid {} api {} raft {} http {} data {} log {}\n",
            n.id,
            n.pid.unwrap_or(0),
            n.api.as_deref().unwrap_or("?"),
            n.raft.as_deref().unwrap_or("?"),
            n.http.as_deref().unwrap_or("?"),
            sup.node_dir(n.id).display(),
            sup.log_path(n.id).display(),
        ));
    }
    out.push_str(&format!(
        "leader: node {} ({}), term {}\n",
        s.leader_id, s.leader_api_addr, s.term
    ));
    let voters = sup.layout.voters();
    if sup.layout.learners > 0 {
        out.push_str(&format!(
            "learners (read replicas, not in the write quorum): nodes {}..={}\n",
            voters + 1,
            sup.layout.nodes
        ));
    }
    let non_voters: Vec<u32> = sup
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id <= voters)
        .filter(|&id| {
            !s.nodes
                .iter()
                .any(|m| m.node_id == u64::from(id) && m.role == "voter")
        })
        .collect();
    if !non_voters.is_empty() {
        out.push_str(&format!(
            "note: node(s) {non_voters:?} are not voters of this cluster \
             (see `tessera cluster add` and `promote`)\n"
        ));
    }
    let api = |i: usize| {
        sup.nodes
            .get(i)
            .and_then(|n| n.api.clone())
            .unwrap_or_default()
    };
    let tour_node = if sup.nodes.len() >= 2 { 1 } else { 0 };
    let mut env = String::new();
    if sup.dir != Path::new(".tessera-dev") {
        env = format!(
            "  export TESSERA_DEV_DIR={dir} TESSERA_CA={dir}/certs/ca.pem \
             TESSERA_CERT={dir}/certs/frontend.pem TESSERA_ADMIN_CERT={dir}/certs/admin.pem\n"
        );
    }
    let leader = s.leader_id;
    let mut tries: Vec<(String, String)> = vec![
        (
            format!("tessera cluster status --endpoint {}", api(0)),
            "leader, term, indexes, each member's lag".into(),
        ),
        (
            format!("TESSERA_ENDPOINT={} scripts/tour.sh", api(tour_node)),
            format!(
                "the README tour against node {}: writes from any node",
                tour_node + 1
            ),
        ),
        (
            "scripts/cluster-status.sh".into(),
            "every node's view".into(),
        ),
        (
            format!("scripts/kill-node.sh {leader}"),
            "SIGKILL the leader; the others elect a new one and keep serving".into(),
        ),
    ];
    if !sup.layout.kernel_ports() {
        tries.push((
            format!("scripts/restart-node.sh {leader}"),
            format!("bring it back (kill -HUP {})", std::process::id()),
        ));
    }
    let width = tries.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    out.push_str(&format!(
        "\nTry, in another terminal at the repository root (`tessera` is {}):\n{env}",
        sup.exe.display()
    ));
    for (cmd, why) in &tries {
        out.push_str(&format!("  {cmd:<width$}  # {why}\n"));
    }
    out.push_str(&format!(
        "Logs: {dir}/node<i>.log, audit: {dir}/audit-node<i>.jsonl. Ctrl-C stops every node.\n"
    ));
    out.push_str("cluster ready\n");
    let mut stdout = std::io::stdout().lock();
    // stdout may be a closed pipe (a script that stopped reading); the
    // cluster keeps running regardless.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
