#!/usr/bin/env bash
# A million active revocations on a three-node release `tessera dev`
# cluster (docs/BENCHMARKS.md, "1M revocations"):
#
#   scripts/bench-state-1m.sh            # REVOCATIONS=1000000 CLIENTS=256
#
# 1. starts the cluster (fixed ports, so that nodes can restart) and stops
#    one follower (F);
# 2. `tessera bench-revoke --max-requests N --leader-only` against the
#    leader; prints every node's RSS before and after;
# 3. restarts F: its log is far behind the leader's purged log, so it
#    installs a snapshot of N revocations; prints the time from its restart
#    until it has applied the leader's commit index, and its RSS;
# 4. stops the other follower (G, holding N) with SIGTERM and restarts it;
#    prints the time until it serves again and has applied the commit index.
# Uses target/release/tessera (TESSERA_BIN overrides); does not build.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${REVOCATIONS:-1000000}
clients=${CLIENTS:-256}
tessera=${TESSERA_BIN:-target/release/tessera}
ready_timeout=${READY_TIMEOUT:-120}
[ -x "$tessera" ] || { echo "no $tessera: cargo build --release --bin tessera" >&2; exit 1; }
tessera=$(cd "$(dirname "$tessera")" && pwd)/$(basename "$tessera")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench-1m.XXXXXX")
dir="$tmp/dev"
dev_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
    fi
    if [ "${KEEP_BENCH_DIR:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "data and logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three consecutive free ports for each listener kind.
base=$(python3 - <<'EOF'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(200):
    b = random.randrange(20000, 60000, 10)
    if all(free(b + k + d) for k in (0, 100, 200) for d in range(3)):
        print(b); break
EOF
)
"$tessera" dev --dir "$dir" --base-port "$base" --raft-base-port $((base + 100)) \
    --http-base-port $((base + 200)) --timeout "$ready_timeout" >"$tmp/dev.out" 2>"$tmp/dev.err" &
dev_pid=$!
deadline=$((SECONDS + ready_timeout))
until grep -qx 'cluster ready' "$tmp/dev.out" 2>/dev/null; do
    kill -0 "$dev_pid" 2>/dev/null || { tail -n 30 "$tmp/dev.err" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "no 'cluster ready'" >&2; exit 1; }
    sleep 0.2
done

api() { echo "127.0.0.1:$((base + $1 - 1))"; }
pid_of() { cat "$dir/node$1.pid"; }
rss_mb() { ps -o rss= -p "$1" | awk '{printf "%.1f", $1 / 1024}'; }
conn() { echo --endpoint "$(api "$1")" --ca "$dir/certs/ca.pem" --cert "$dir/certs/admin.pem" --key "$dir/certs/admin.key"; }
field() { # node, json field of its cluster status
    # shellcheck disable=SC2046
    "$tessera" cluster status $(conn "$1") --json 2>/dev/null |
        python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || echo -1
}
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }
listening() { grep -c "^tessera node $1 listening on " "$dir/node$1.log" 2>/dev/null || true; }

leader=$(field 1 leader_id)
followers=()
for i in 1 2 3; do [ "$i" = "$leader" ] || followers+=("$i"); done
f=${followers[0]}
g=${followers[1]}
echo "leader $leader; follower $f is stopped during the load, $g restarts after it"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do echo "RSS before, node $i: $(rss_mb "$(pid_of "$i")") MB"; done

# The pid file goes with the node: read it once.
pid=$(pid_of "$f")
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done

"$tessera" bench-revoke --endpoints "$(api "$leader")" --certs "$dir/certs" \
    --clients "$clients" --max-requests "$n" --seconds 3600 --no-warmup --leader-only
commit=$(field "$leader" commit_index)
echo "leader commit index $commit; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in "$leader" "$g"; do echo "RSS after, node $i: $(rss_mb "$(pid_of "$i")") MB"; done

wait_applied() { # node, index, previous listening count
    local deadline=$((SECONDS + 600))
    until [ "$(listening "$1")" -gt "$3" ] && [ "$(field "$1" applied_index)" -ge "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "node $1 never applied $2" >&2; exit 1; }
        sleep 0.05
    done
}

before=$(listening "$f")
t0=$(now)
kill -HUP "$dev_pid"
wait_applied "$f" "$commit" "$before"
t1=$(now)
grep -q "installing snapshot" "$dir/node$f.log" || echo "warning: node $f installed no snapshot" >&2
echo "follower $f back and caught up (snapshot install of $n, transfer included): $(elapsed "$t0" "$t1") s"
sleep 2
echo "RSS after install, node $f: $(rss_mb "$(pid_of "$f")") MB"

before=$(listening "$g")
t0=$(now)
# The pid file goes with the node: read it once.
pid=$(pid_of "$g")
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
t1=$(now)
kill -HUP "$dev_pid"
wait_applied "$g" "$commit" "$before"
t2=$(now)
echo "node $g stopped in $(elapsed "$t0" "$t1") s; restarted and caught up in $(elapsed "$t1" "$t2") s"
grep "store opened" "$dir/node$g.log" | tail -n 1
sleep 2
echo "RSS after restart, node $g: $(rss_mb "$(pid_of "$g")") MB"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
