#!/usr/bin/env bash
# Linearizable against LOCAL reads on a three-node dev cluster, in one run
# (docs/BENCHMARKS.md "Linearizable reads"). Starts `tessera dev` in a
# temporary directory on ports 17443-17445 / 17543-17545, drives node 1 (the
# leader after init) and node 2 (a follower) with `tessera bench`, and stops
# the cluster. Extra arguments go to `tessera bench` (default: 5 s per
# operation, 64 in flight).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/tessera
dir=$(mktemp -d)
trap 'kill -INT $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; rm -rf "$dir"' EXIT
(cd "$dir" && TESSERA_LOG=warn exec "$bin" dev --base-port 17443 --raft-base-port 17543) >"$dir/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 300); do
  if (cd "$dir" && "$bin" cluster status --json --endpoint 127.0.0.1:17443 --cert .tessera-dev/certs/admin.pem) 2>/dev/null | grep -Eq '"leader_known": ?true'; then break; fi
  sleep 0.2
done
ops=introspect,introspect-local,introspect,introspect-local,exchange
for node in 17443 17444; do
  echo "## node at 127.0.0.1:$node"
  "$bin" bench --endpoint 127.0.0.1:$node --certs "$dir/.tessera-dev/certs" --ops $ops --seconds 5 "$@"
done
