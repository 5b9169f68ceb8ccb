#!/usr/bin/env bash
# Read replicas on loopback (docs/SCALING.md): linearizable Introspect
# throughput of three voters plus 0, 1, 2 and 4 learners, each node capped
# at the same CPU quota, in one run.
#
# For each learner count it starts `tessera dev --base-port 0 --learners N`
# in a temporary directory, moves every node process into its own cgroup
# (v1 cpu controller) with cpu.cfs_quota_us = CPU_PER_NODE x period, runs
# `tessera bench --ops introspect` with the requests in flight spread over
# every node (PER_NODE_INFLIGHT each), optionally a short revocation run on
# the voters, prints the cluster's voters and learners, stops the cluster
# and removes the cgroups. A summary table comes last. Needs root (cgroups).
#
# Settings (environment): CPU_PER_NODE (0.2), CFS_PERIOD_US (20000: a short
# period spreads a node's quota evenly instead of running it for the first
# 20 ms of every 100 ms), BENCH_SECONDS (10),
# PER_NODE_INFLIGHT (16), LEARNER_COUNTS ("0 1 2 4"), WRITES (1: also
# `bench-revoke` at 16 clients for 3 s), TESSERA_BIN (target/release/tessera),
# CG_SHARES (16384: the bench's cgroup weight against the processes in the
# root cgroup, so that a busy machine does not starve the capped nodes
# below their quota; the quota still caps each node).
#
# Every wait is bounded; on exit (also on error or Ctrl-C) the clusters
# this script started are stopped (SIGTERM, then SIGKILL by pid) and the
# cgroups removed.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=${CPU_PER_NODE:-0.2}
seconds=${BENCH_SECONDS:-10}
per_node=${PER_NODE_INFLIGHT:-16}
counts=${LEARNER_COUNTS:-"0 1 2 4"}
writes=${WRITES:-1}
shares=${CG_SHARES:-16384}
bin=${TESSERA_BIN:-$PWD/target/release/tessera}
[ -x "$bin" ] || cargo build --release -q --bin tessera

cgroot=/sys/fs/cgroup/cpu
[ -w "$cgroot" ] || { echo "needs root and the cgroup v1 cpu controller at $cgroot" >&2; exit 1; }
period=${CFS_PERIOD_US:-20000}
quota=$(awk -v c="$cpu" -v p="$period" 'BEGIN { printf "%d", c * p }')
cg=$cgroot/tessera-bench-replicas-$$
work=$(mktemp -d)
dev=""
node_pids=""

stop_cluster() {
  if [ -n "$dev" ] && kill -0 "$dev" 2>/dev/null; then
    kill -TERM "$dev" 2>/dev/null || true
    # tessera dev stops its nodes (SIGTERM, SIGKILL after 20 s): bounded.
    for _ in $(seq 1 120); do kill -0 "$dev" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$dev" 2>/dev/null || true
  fi
  for p in $node_pids; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$dev" ]; then wait "$dev" 2>/dev/null || true; fi
  dev=""
  node_pids=""
}

remove_cgroups() {
  [ -d "$cg" ] || return 0
  for d in "$cg"/*/; do
    [ -d "$d" ] || continue
    # Anything left (it should not be) goes back to the root group.
    while read -r p; do echo "$p" >"$cgroot/cgroup.procs" 2>/dev/null || true; done <"$d/cgroup.procs"
    rmdir "$d" 2>/dev/null || true
  done
  rmdir "$cg" 2>/dev/null || echo "could not remove $cg" >&2
}

cleanup() {
  stop_cluster
  remove_cgroups
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$cg"
echo "$shares" >"$cg/cpu.shares"

# cgroup_for NAME: a child group capped at the node quota (client: no cap).
cgroup_for() {
  mkdir -p "$cg/$1"
  echo "$period" >"$cg/$1/cpu.cfs_period_us"
  if [ "$1" = client ]; then echo -1 >"$cg/$1/cpu.cfs_quota_us"; else echo "$quota" >"$cg/$1/cpu.cfs_quota_us"; fi
  echo "$cg/$1"
}

# ticks PID: utime + stime of a process, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

client=$(cgroup_for client)
summary=$work/summary
echo "| learners | nodes | voters | reads sent to | in flight | requests | errors | Introspect /s | p50 ms | p99 ms | x (0 learners) | load avg before → after |" >"$summary"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|" >>"$summary"
declare -A base_tput

echo "# bench-replicas: $(nproc) CPUs; CPU_PER_NODE=$cpu (quota $quota/$period us); ${seconds}s per run; $per_node in flight per node; $(date -u +%FT%TZ)"
echo "# $("$bin" --version 2>/dev/null || echo tessera)"
for n in $counts; do
  dir=$work/learners-$n
  mkdir -p "$dir"
  (cd "$dir" && TESSERA_LOG=warn exec "$bin" dev --base-port 0 --learners "$n" --timeout 180) \
    >"$dir/dev.out" 2>"$dir/dev.err" &
  dev=$!
  ready=0
  for _ in $(seq 1 480); do
    if grep -q '^cluster ready' "$dir/dev.out" 2>/dev/null; then ready=1; break; fi
    kill -0 "$dev" 2>/dev/null || break
    sleep 0.5
  done
  if [ "$ready" != 1 ]; then
    echo "cluster with $n learner(s) did not start; last lines:" >&2
    tail -n 20 "$dir/dev.err" >&2 || true
    exit 1
  fi
  # "node <id> pid <pid> api <addr> raft <addr> ..."
  node_pids=$(awk '$1 == "node" && $3 == "pid" { print $4 }' "$dir/dev.out")
  apis=$(awk '$1 == "node" && $3 == "pid" { print $6 }' "$dir/dev.out" | paste -sd, -)
  nodes=$(echo "$node_pids" | wc -w)
  i=0
  for p in $node_pids; do
    i=$((i + 1))
    echo "$p" >"$(cgroup_for "node$i")/cgroup.procs"
  done
  first=${apis%%,*}
  status=$("$bin" cluster status --json --endpoint "$first" \
    --ca "$dir/.tessera-dev/certs/ca.pem" --cert "$dir/.tessera-dev/certs/admin.pem")
  voters=$(echo "$status" | grep -c '"role": "voter"' || true)
  learners=$(echo "$status" | grep -c '"role": "learner"' || true)
  leader_api=$(echo "$status" | awk -F'"' '/"leader_api_addr"/ { print $4 }')
  echo
  echo "## $n learner(s): $nodes nodes ($voters voters, $learners learners), leader at $leader_api"
  # Two spreads: every node, and every node but the leader (the leader
  # keeps its CPU for writes and read-index confirmations).
  others=$(echo "$apis" | tr ',' '\n' | grep -vx "$leader_api" | paste -sd, -)
  for spread in all non-leader; do
    if [ "$spread" = all ]; then eps=$apis; else eps=$others; fi
    count=$(echo "$eps" | tr ',' '\n' | wc -l)
    inflight=$((per_node * count))
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "### Introspect over $spread ($count nodes, $inflight in flight); load $load_before"
    out=$dir/bench-$spread.out
    cpu_before=$(for p in $node_pids; do ticks "$p"; done)
    sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$client" \
      timeout $((seconds + 600)) "$bin" bench --endpoint "$eps" --certs "$dir/.tessera-dev/certs" \
      --ops introspect --seconds "$seconds" --concurrency "$inflight" --crypto-iterations 1 \
      | sed -n '/^verified-token cache/,$p' | tee "$out"
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    cpu_after=$(for p in $node_pids; do ticks "$p"; done)
    # CPU seconds each node used during the run (utime + stime), against
    # the quota's ceiling of CPU_PER_NODE x BENCH_SECONDS (node 1.. in order).
    echo "node CPU seconds during the run (ceiling $(awk -v c="$cpu" -v s="$seconds" 'BEGIN { print c * s }')): $(paste -d' ' <(echo "$cpu_before") <(echo "$cpu_after") \
      | awk -v hz="$(getconf CLK_TCK)" '{ printf "node%d %.2f  ", NR, ($2 - $1) / hz }')"
    row=$(grep '^| Introspect ' "$out" | head -n 1)
    # | Introspect | in flight | requests | errors | throughput | p50 | p99 | max |
    tput=$(echo "$row" | awk -F'|' '{ gsub(/ /, "", $6); print $6 }')
    [ -n "${base_tput[$spread]:-}" ] || base_tput[$spread]=$tput
    ratio=$(awk -v a="$tput" -v b="${base_tput[$spread]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    echo "$row" | awk -F'|' -v l="$n" -v nn="$nodes" -v v="$voters" -v sp="$spread ($count)" -v x="$ratio" -v lb="$load_before" -v la="$load_after" \
      '{ for (k = 3; k <= 8; k++) gsub(/^ +| +$/, "", $k);
         printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s → %s |\n", l, nn, v, sp, $3, $4, $5, $6, $7, $8, x, lb, la }' >>"$summary"
  done
  if [ "$writes" = 1 ]; then
    echo "### revocations through the leader (the write quorum: $voters voters)"
    sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$client" \
      timeout 300 "$bin" bench-revoke --endpoints "$leader_api" --certs "$dir/.tessera-dev/certs" \
      --clients 16 --seconds 3 --no-warmup | grep '^| 16 ' || echo "(bench-revoke failed)"
  fi
  for i in $(seq 1 "$nodes"); do
    echo "node$i throttled: $(awk '$1 == "nr_throttled" { print $2 }' "$cg/node$i/cpu.stat") periods"
  done | paste -sd' ' -
  stop_cluster
  for i in $(seq 1 "$nodes"); do rmdir "$cg/node$i" 2>/dev/null || true; done
done

echo
echo "## Summary (linearizable Introspect, one token; CPU_PER_NODE=$cpu, period $period us; x: against 0 learners with the same spread)"
cat "$summary"
