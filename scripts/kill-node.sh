#!/usr/bin/env bash
# SIGKILL node N of the dev cluster (no goodbye: the crash case). The other
# nodes keep serving as long as a majority runs; `tessera dev` reports the
# death, and scripts/restart-node.sh N brings the node back.
set -euo pipefail
source "$(dirname "$0")/dev-env.sh"
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || { echo "usage: $0 NODE" >&2; exit 64; }
pid=$(node_pid "$1") || { echo "node $1 is not running" >&2; exit 1; }
kill -KILL "$pid"
echo "killed node $1 (pid $pid)"
