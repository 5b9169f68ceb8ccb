#!/usr/bin/env bash
# Durability audit in the style of ALICE (docs/DESIGN-NOTES.md, "Durability
# audit"). SIGKILL tests keep the page cache, so they pass with every fsync
# removed; this one reads the system calls instead.
#
#   scripts/durability-audit.sh            # build target/debug/tessera if missing
#   TESSERA_BIN=/path/to/tessera scripts/durability-audit.sh
#
# Runs one `tessera serve --dev` node under `strace -f` with a tiny
# snapshot interval (a snapshot every 8 entries, 2 entries kept: it builds
# snapshots and purges its log all along), acknowledges revocations and a
# policy larger than sled's blob threshold through separate client
# processes (recording when each request was sent and answered), stops the
# node and checks the trace with scripts/durability_check.py: at each
# acknowledgement, every file under the data directory was fsynced after
# its last write, and the directory of every created file was fsynced.
# Then a second traced node joins as a learner, catches up by installing a
# snapshot (node 1 purged its log); its trace is checked the same way at
# its answer to the leader.
# Exits non-zero on a violation. KEEP_AUDIT_DIR=1 keeps the trace.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

revokes=${AUDIT_REVOKES:-40}
ready_timeout=${READY_TIMEOUT:-120}

python3 scripts/durability_check.py --self-test

if ! command -v strace >/dev/null; then
    echo "installing strace" >&2
    apt-get install -y -qq strace >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq strace; }
fi

bin=${TESSERA_BIN:-target/debug/tessera}
if [ ! -x "$bin" ]; then
    cargo build -q --bin tessera
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tessera-durability.XXXXXX")
node_pid=
strace_pid=
node2_pid=
strace2_pid=
cleanup() {
    if [ -n "$node2_pid" ] && kill -0 "$node2_pid" 2>/dev/null; then
        kill -KILL "$node2_pid" 2>/dev/null || true
    fi
    if [ -n "$strace2_pid" ]; then
        wait "$strace2_pid" 2>/dev/null || true
    fi
    if [ -z "$node_pid" ] && [ -n "$strace_pid" ]; then
        node_pid=$(pgrep -P "$strace_pid" || true)
    fi
    if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
        kill -KILL "$node_pid" 2>/dev/null || true
    fi
    if [ -n "$strace_pid" ]; then
        wait "$strace_pid" 2>/dev/null || true
    fi
    if [ "${KEEP_AUDIT_DIR:-0}" = 1 ]; then
        echo "kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

dev="$tmp/dev"
data="$dev/node1"
certs="$dev/certs"
cd "$tmp"
# Created here: the loop below may read it before the background job opens it.
: >"$tmp/node.log"
TESSERA_SNAPSHOT_EVERY=8 TESSERA_KEEP_LOGS=2 \
    strace -f -ttt -T -yy -qq -s 0 -o "$tmp/trace" \
    -e trace=open,openat,creat,write,pwrite64,ftruncate,writev,pwritev,pwritev2,sendmsg,sendto,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat \
    "$bin" serve --dev --dev-dir "$dev" --listen 127.0.0.1:0 --raft-listen 127.0.0.1:0 \
    >"$tmp/node.log" 2>&1 &
strace_pid=$!

deadline=$((SECONDS + ready_timeout))
api=
while [ -z "$api" ]; do
    api=$(sed -n 's/^tessera node 1 listening on \([^ ]*\) raft .*/\1/p' "$tmp/node.log" | head -n 1)
    if [ -z "$api" ]; then
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$strace_pid" 2>/dev/null; then
            echo "the node did not start:" >&2
            cat "$tmp/node.log" >&2
            exit 1
        fi
        sleep 0.2
    fi
done
node_pid=$(pgrep -P "$strace_pid" || true)
if [ -z "$node_pid" ]; then
    echo "cannot find the node process under strace ($strace_pid)" >&2
    exit 1
fi
port=${api##*:}

conn=(--endpoint "$api" --ca "$certs/ca.pem" --cert "$certs/admin.pem" --key "$certs/admin.key")
now() { date +%s.%N; }

# The first revocation waits (bounded) for the node to become leader.
deadline=$((SECONDS + ready_timeout))
until "$bin" revoke "${conn[@]}" --jti audit-warmup >/dev/null 2>"$tmp/client.err"; do
    if [ $SECONDS -ge $deadline ]; then
        echo "the node never accepted a revocation:" >&2
        cat "$tmp/client.err" "$tmp/node.log" >&2
        exit 1
    fi
    sleep 0.2
done

acks="$tmp/acks"
: >"$acks"
ack() { # label, command...
    local label=$1
    shift
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    echo "$t0 $t1 $label" >>"$acks"
}
half=$((revokes / 2))
for i in $(seq 1 "$half"); do
    ack "revoke $i" "$bin" revoke "${conn[@]}" --jti "audit-$i-$(printf '%040d' "$i")"
done
# A policy above sled's blob threshold (~128 KiB): before the store chunked
# large values, its log entry and state went to unsynced files in blobs/.
{
    cat "$root/deploy/policy/example.cedar"
    for i in $(seq 1 3000); do
        printf '// padding line %05d: a policy larger than one sled page fragment\n' "$i"
    done
} >"$tmp/big.cedar"
ack "put policy ($(wc -c <"$tmp/big.cedar") bytes)" "$bin" cluster policy "${conn[@]}" put "$tmp/big.cedar"
for i in $(seq $((half + 1)) "$revokes"); do
    ack "revoke $i" "$bin" revoke "${conn[@]}" --jti "audit-$i-$(printf '%040d' "$i")"
done

# Phase 2: a second node, traced too, joins as a learner. Node 1 has purged
# its log behind its snapshots, so the learner catches up by installing a
# snapshot; when it tells the leader it has caught up, the snapshot it
# received must be durable.
data2="$dev/node2"
: >"$tmp/node2.log"
TESSERA_SNAPSHOT_EVERY=8 TESSERA_KEEP_LOGS=2 \
    strace -f -ttt -T -yy -qq -s 0 -o "$tmp/trace2" \
    -e trace=open,openat,creat,write,pwrite64,ftruncate,writev,pwritev,pwritev2,sendmsg,sendto,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat \
    "$bin" serve --node-id 2 --data-dir "$data2" --listen 127.0.0.1:0 --raft-listen 127.0.0.1:0 \
    --ca "$certs/ca.pem" --cert "$certs/node2.pem" --key "$certs/node2.key" --kek-file "$dev/kek" \
    >"$tmp/node2.log" 2>&1 &
strace2_pid=$!
deadline=$((SECONDS + ready_timeout))
api2=
raft2=
while [ -z "$api2" ]; do
    line=$(grep -m1 '^tessera node 2 listening on ' "$tmp/node2.log" || true)
    if [ -n "$line" ]; then
        api2=$(echo "$line" | sed -n 's/^tessera node 2 listening on \([^ ]*\) raft \([^ ]*\).*/\1/p')
        raft2=$(echo "$line" | sed -n 's/^tessera node 2 listening on \([^ ]*\) raft \([^ ]*\).*/\2/p')
    else
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$strace2_pid" 2>/dev/null; then
            echo "node 2 did not start:" >&2
            cat "$tmp/node2.log" >&2
            exit 1
        fi
        sleep 0.2
    fi
done
node2_pid=$(pgrep -P "$strace2_pid" || true)
port2=${api2##*:}
# The acknowledgement that depends on node 2's disk: its answer to the
# leader's last InstallSnapshot/AppendEntries before `cluster add` returns
# (the leader counts the learner as caught up from it). Without --api-port
# the checker takes node 2's last socket write before the answer, on any
# port: its Raft reply. Revocations node 2 would forward are acknowledged
# by the leader's disk, not node 2's, so they are not checked here.
acks2="$tmp/acks2"
t0=$(now)
"$bin" cluster add "${conn[@]}" "$raft2" --timeout "$ready_timeout" >/dev/null
t1=$(now)
echo "$t0 $t1 learner caught up (snapshot installed)" >"$acks2"
kill -TERM "$node2_pid"
wait "$strace2_pid" || true
node2_pid=
strace2_pid=

kill -TERM "$node_pid"
wait "$strace_pid" || true
strace_pid=
node_pid=

echo "sled blob files: $(find "$data" "$data2" -path '*/blobs/*' -type f | wc -l)"
if ! grep -q 'snapshots/tmp-recv' "$tmp/trace2"; then
    echo "node 2 never received a snapshot: the audit would not cover an install" >&2
    exit 1
fi
# Snapshots being built or received (snapshots/tmp-*) are deleted unread
# by recovery: nothing depends on them until they are renamed into place.
status=0
echo "== node 1 (leader: appends, snapshots, purges)"
python3 "$root/scripts/durability_check.py" --cwd "$tmp" --api-port "$port" --scratch 'tmp-.*' --commit-file db "$tmp/trace" "$data" "$acks" || status=1
echo "== node 2 (learner: installs a snapshot before it answers the leader)"
python3 "$root/scripts/durability_check.py" --cwd "$tmp" --scratch 'tmp-.*' --commit-file db "$tmp/trace2" "$data2" "$acks2" || status=1
exit $status
