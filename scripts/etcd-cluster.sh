#!/usr/bin/env bash
# A three-member etcd cluster on 127.0.0.1 for the revocation benchmark
# (docs/BENCHMARKS.md), so that Tessera's durable commits are compared with
# etcd's durable puts on the same machine.
#
#   scripts/etcd-cluster.sh start DIR   # start, wait until healthy
#   scripts/etcd-cluster.sh stop DIR    # stop the members started in DIR
#
# `start` installs Debian's etcd (3.4) with apt-get when `etcd` is missing,
# picks six free loopback ports, writes the client URLs comma-separated to
# DIR/endpoints (what `tessera bench-revoke --etcd` takes), gives each member
# its own data dir DIR/mN and log DIR/mN.log, and waits (bounded) until
# `etcdctl endpoint health` passes for every member. fsync is left as etcd
# ships it: the comparison is between durable commits.
#
# `stop` signals the members whose pids are in DIR/mN.pid (only if that pid
# is still an etcd serving DIR) and removes nothing: data, logs and
# endpoints stay for inspection. Starting again on the same DIR reuses the
# ports recorded in DIR/ports, since the members' data remembers them.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 64
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
members=(m1 m2 m3)
health_timeout=${ETCD_HEALTH_TIMEOUT:-30}

ensure_etcd() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        return
    fi
    echo "etcd not found: installing Debian's etcd-server and etcd-client" >&2
    if ! apt-get install -y -qq etcd-server etcd-client >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq etcd-server etcd-client >/dev/null
    fi
    # Some package versions start a default member on install; it would
    # hold port 2379 and disk bandwidth for nothing.
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl stop etcd || true
    fi
}

# Six free ports, all held open while they are chosen so they differ.
free_ports() {
    python3 -c '
import socket
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
'
}

# The pid in DIR/NAME.pid if that process is an etcd serving DIR/NAME.
member_pid() {
    local name=$1 pidfile="$dir/$1.pid" pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $dir/$name " || return 1
    echo "$pid"
}

start() {
    ensure_etcd
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for m in "${members[@]}"; do
        if member_pid "$m" >/dev/null; then
            echo "etcd member $m already running in $dir; stop it first" >&2
            exit 1
        fi
    done
    local ports state=new
    if [ -d "$dir/m1" ] && [ -f "$dir/ports" ]; then
        ports=$(cat "$dir/ports")
        state=existing
    elif [ -d "$dir/m1" ]; then
        echo "$dir/m1 exists without $dir/ports; use an empty directory" >&2
        exit 1
    else
        ports=$(free_ports)
        echo "$ports" >"$dir/ports"
    fi
    read -r c1 c2 c3 p1 p2 p3 <<<"$ports"
    local client=("$c1" "$c2" "$c3") peer=("$p1" "$p2" "$p3")
    local initial="m1=http://127.0.0.1:$p1,m2=http://127.0.0.1:$p2,m3=http://127.0.0.1:$p3"
    local endpoints="http://127.0.0.1:$c1,http://127.0.0.1:$c2,http://127.0.0.1:$c3"
    for i in 0 1 2; do
        local m=${members[$i]}
        # setsid: the members outlive this script and ignore the caller's
        # Ctrl-C; `stop` ends them.
        setsid etcd \
            --name "$m" \
            --data-dir "$dir/$m" \
            --listen-client-urls "http://127.0.0.1:${client[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${peer[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
            --initial-cluster "$initial" \
            --initial-cluster-token "tessera-bench" \
            --initial-cluster-state "$state" \
            --logger zap \
            </dev/null >>"$dir/$m.log" 2>&1 &
        echo $! >"$dir/$m.pid"
    done
    echo "$endpoints" >"$dir/endpoints"

    local deadline=$((SECONDS + health_timeout))
    until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --command-timeout=2s \
        endpoint health >/dev/null 2>&1; do
        for m in "${members[@]}"; do
            if ! member_pid "$m" >/dev/null; then
                echo "etcd member $m exited; see $dir/$m.log" >&2
                stop
                exit 1
            fi
        done
        if [ $SECONDS -ge $deadline ]; then
            echo "etcd not healthy after ${health_timeout}s; see $dir/m*.log" >&2
            ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health >&2 || true
            stop
            exit 1
        fi
        sleep 0.2
    done
    echo "etcd cluster ready: $endpoints"
}

stop() {
    local pids=() m pid
    for m in "${members[@]}"; do
        if pid=$(member_pid "$m"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # Bounded wait for a clean exit, then SIGKILL what is left.
    local i
    for i in $(seq 1 50); do
        local alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ ${#pids[@]} -eq 0 ] || echo "etcd cluster in $dir stopped"
}

case $cmd in
start) start ;;
stop)
    [ -d "$dir" ] || exit 0
    dir=$(cd "$dir" && pwd)
    stop
    ;;
*) usage ;;
esac
