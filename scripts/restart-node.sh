#!/usr/bin/env bash
# Restarts node N of the dev cluster after it died (scripts/kill-node.sh N):
# asks the running `tessera dev` to restart its stopped nodes (SIGHUP), with
# the same ports and data, and waits until node N is listening again.
set -euo pipefail
source "$(dirname "$0")/dev-env.sh"
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || { echo "usage: $0 NODE" >&2; exit 64; }
n=$1
if pid=$(node_pid "$n"); then
  echo "node $n is running (pid $pid); kill it first (scripts/kill-node.sh $n)" >&2
  exit 1
fi
sup=$(dev_pid) || { echo "no running tessera dev in $DEV_DIR" >&2; exit 1; }
log="$DEV_DIR/node$n.log"
before=$(grep -c "^tessera node $n listening on " "$log" 2>/dev/null || true)
kill -HUP "$sup"
for _ in $(seq 1 150); do
  now=$(grep -c "^tessera node $n listening on " "$log" 2>/dev/null || true)
  if [[ ${now:-0} -gt ${before:-0} ]] && pid=$(node_pid "$n"); then
    echo "node $n is back (pid $pid) at $(node_api "$n")"
    exit 0
  fi
  sleep 0.2
done
echo "node $n did not come back within 30 s; see $log" >&2
exit 1
