#!/usr/bin/env bash
# Linearizable against LOCAL introspection on a follower, in one run
# (docs/BENCHMARKS.md, "Gathered read rounds"). Starts a fresh three-node
# `tessera dev` (release build, kernel-chosen ports) and drives node 2 with
# three alternations of `introspect` and `introspect-local` (two 3 s runs
# each, 64 in flight). Prints the ratio of the throughputs, each node's CPU
# per read in either mode (leader, follower, other follower), and the
# follower's read-index rounds and reads. Extra arguments are `NAME=VALUE`
# environment settings for the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/tessera
dir=$(mktemp -d)
trap 'kill -INT $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; rm -rf "$dir"' EXIT
env "$@" TESSERA_LOG=warn "$bin" dev --dir "$dir/c" --base-port 0 --raft-base-port 0 >"$dir/out" 2>&1 &
dev=$!
for _ in $(seq 1 300); do grep -q "cluster ready" "$dir/out" && break; sleep 0.2; done
node2=$(grep "^node 2 pid" "$dir/out")
ep=$(awk '{print $6}' <<<"$node2")
http=$(awk '{print $10}' <<<"$node2")
pids=$(grep "^node . pid" "$dir/out" | awk '{print $4}')
cpu() { for p in $pids; do awk '{printf "%d ", $14+$15}' "/proc/$p/stat"; done; echo; }
for phase in 1 2 3 4 5 6; do
  if [ $((phase % 2)) = 1 ]; then op=introspect; else op=introspect-local; fi
  before=$(cpu)
  "$bin" bench --endpoint "$ep" --certs "$dir/c/certs" --ops "$op,$op" --seconds 3 >"$dir/bench" 2>&1
  after=$(cpu)
  echo "$op | $before | $after" >>"$dir/phases"
  grep -E "^\| Introspect" "$dir/bench" >>"$dir/phases"
done
curl -s --cacert "$dir/c/certs/ca.pem" --cert "$dir/c/certs/admin.pem" --key "$dir/c/certs/admin.key" \
  "https://$http/metrics" | grep -E "^tessera_read_index_(rounds|reads)_total" >>"$dir/phases" || true
python3 - "$dir/phases" "$(getconf CLK_TCK)" <<'PY'
import sys
path, tck = sys.argv[1], int(sys.argv[2])
agg, extra, cur = {}, [], None
for line in open(path).read().splitlines():
    if line.startswith('introspect'):
        op, c0, c1 = [x.strip() for x in line.split('|')]
        c0, c1 = list(map(int, c0.split())), list(map(int, c1.split()))
        cur = op
        a = agg.setdefault(op, [0, 0.0, [0] * len(c0)])
        for k in range(len(c0)):
            a[2][k] += c1[k] - c0[k]
    elif line.startswith('| Introspect'):
        c = [x.strip() for x in line.split('|')]
        agg[cur][0] += int(c[3])
        agg[cur][1] += float(c[5])
    else:
        extra.append(line)
lin, loc = agg['introspect'], agg['introspect-local']
per = lambda a: ' '.join('%.1f' % (t * 1e6 / tck / a[0]) for t in a[2])
print('linearizable/LOCAL %.3f  (%.0f/s against %.0f/s)' % (lin[1] / loc[1], lin[1] / 6, loc[1] / 6))
print('CPU us per read by node, linearizable: %s; LOCAL: %s' % (per(lin), per(loc)))
print(' '.join(extra))
PY
