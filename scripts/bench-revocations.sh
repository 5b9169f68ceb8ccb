#!/usr/bin/env bash
# Revocation commits, Tessera (3 nodes) vs etcd (3 members), side by side in
# one run on this machine (docs/BENCHMARKS.md):
#
#   scripts/bench-revocations.sh [tessera bench-revoke options]
#   scripts/bench-revocations.sh --seconds 5 --clients 1,16,64
#
# Builds the release binary with the `etcd-bench` feature, starts a
# three-node `tessera dev` cluster and a three-member etcd cluster
# (scripts/etcd-cluster.sh) in a temporary directory, runs
# `tessera bench-revoke` against both (with both clusters' pids, so each
# table also shows the servers' CPU time per write), prints both tables (also saved to
# target/bench-revocations.md) and stops both clusters on exit, however it
# exits. KEEP_BENCH_DIR=1 keeps the temporary directory (data and logs).
set -euo pipefail
cd "$(dirname "$0")/.."

ready_timeout=${READY_TIMEOUT:-120}

# etcd-client's build script needs protoc; use the one our own build
# vendors (protoc-bin-vendored) when the machine has none.
if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null; then
    cargo fetch -q
    case $(uname -m) in
    x86_64) arch=x86_64 ;;
    aarch64) arch=aarch_64 ;;
    *) arch=$(uname -m) ;;
    esac
    PROTOC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path "*/protoc-bin-vendored-linux-$arch-*/bin/protoc" 2>/dev/null | sort | tail -n 1)
    if [ -z "$PROTOC" ]; then
        echo "no protoc found: install protobuf-compiler or set PROTOC" >&2
        exit 1
    fi
    export PROTOC
fi
cargo build --release --features etcd-bench
tessera=target/release/tessera

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench-revocations.XXXXXX")
dev_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
        # The supervisor stops its nodes on SIGTERM; give it a bounded time.
        kill -TERM "$dev_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
    fi
    scripts/etcd-cluster.sh stop "$tmp/etcd" || true
    if [ "${KEEP_BENCH_DIR:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "data and logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "starting a three-node Tessera cluster in $tmp/tessera" >&2
"$tessera" dev --dir "$tmp/tessera" --base-port 0 --raft-base-port 0 \
    >"$tmp/dev.out" 2>"$tmp/dev.err" &
dev_pid=$!
deadline=$((SECONDS + ready_timeout))
until grep -qx 'cluster ready' "$tmp/dev.out" 2>/dev/null; do
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        echo "tessera dev exited before the cluster was ready:" >&2
        tail -n 30 "$tmp/dev.err" >&2
        exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "tessera dev: no 'cluster ready' after ${ready_timeout}s:" >&2
        tail -n 30 "$tmp/dev.err" >&2
        exit 1
    fi
    sleep 0.2
done
# `node <i> pid <pid> api <host:port> raft <host:port> ...`
endpoints=$(awk '$1 == "node" && $3 == "pid" && $5 == "api" { print $6 }' "$tmp/dev.out" | paste -sd, -)
if [ -z "$endpoints" ]; then
    echo "no API addresses in the output of tessera dev:" >&2
    cat "$tmp/dev.out" >&2
    exit 1
fi
echo "tessera API endpoints: $endpoints" >&2
# The nodes' and members' pids, for their CPU time per request.
pids=$(awk '$1 == "node" && $3 == "pid" { print $4 }' "$tmp/dev.out" | paste -sd, -)

scripts/etcd-cluster.sh start "$tmp/etcd" >&2
etcd_pids=$(cat "$tmp"/etcd/m*.pid | paste -sd, -)

# Round-robin and leader-only Tessera in the same run (the forward hop's
# cost), unless the caller asked for leader-only alone.
extra=(--leader-too)
for a in "$@"; do
    if [ "$a" = --leader-only ] || [ "$a" = --leader-too ]; then
        extra=()
    fi
done
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
mkdir -p target
"$tessera" bench-revoke \
    --endpoints "$endpoints" \
    --certs "$tmp/tessera/certs" \
    --etcd "$(cat "$tmp/etcd/endpoints")" \
    --pids "$pids" --etcd-pids "$etcd_pids" \
    ${extra[@]+"${extra[@]}"} "$@" | tee target/bench-revocations.md
