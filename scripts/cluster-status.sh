#!/usr/bin/env bash
# Every node's view of the dev cluster started by `tessera dev`: process,
# role, leader, term, commit/applied index and, on the leader, each member's
# lag. Extra arguments go to `tessera cluster status` (e.g. --json).
set -euo pipefail
source "$(dirname "$0")/dev-env.sh"
bin=$(tessera_bin)
nodes=$(dev_nodes)
[[ -n $nodes ]] || { echo "no dev cluster in $DEV_DIR (start one with scripts/dev-cluster.sh)" >&2; exit 1; }
status=0
for i in $nodes; do
  api=$(node_api "$i")
  if pid=$(node_pid "$i"); then
    echo "== node $i (pid $pid) at $api"
    "$bin" cluster status --endpoint "$api" --ca "$DEV_DIR/certs/ca.pem" \
      --cert "$DEV_DIR/certs/admin.pem" "$@" || status=1
  else
    echo "== node $i: not running (last at ${api:-?})"
    status=1
  fi
done
exit $status
