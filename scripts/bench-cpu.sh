#!/usr/bin/env bash
# CPU per request of each phase of `tessera bench`, next to its throughput.
#
#   scripts/bench-cpu.sh BINARY [tessera bench arguments...]
#   scripts/bench-cpu.sh ./target/release/tessera --baseline --ops introspect,exchange --unique-tokens 32768
#
# Throughput on a shared machine moves with everyone else's load; the CPU a
# request costs moves much less. The bench process (one node in-process,
# the echo baseline and the load client) prints one table row per timed
# phase, right after the phase ends; this script reads the process's
# utime+stime (/proc/PID/stat) as each line arrives, so the CPU between two
# rows is the CPU of the second row's phase. Each row gets two more
# columns: CPU seconds and CPU µs per request (whole process: client and
# server sides of the loopback). Load average is printed before and after.
#
# A/B of two binaries in one run: alternate them, e.g.
#   for b in A B B A; do scripts/bench-cpu.sh /tmp/tessera-$b --baseline ...; done
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 BINARY [tessera bench arguments...]" >&2
    exit 64
fi
bin=$1
shift
hz=$(getconf CLK_TCK)
echo "binary: $bin"
echo "before: $(uptime)"
coproc BENCH { exec "$bin" bench "$@"; }
pid=$BENCH_PID
out=${BENCH[0]}
# utime + stime in clock ticks; the fields after the command name, which
# may contain spaces, start after the last ')'.
ticks() {
    local s
    s=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo ""; return; }
    s=${s##*) }
    awk '{print $12 + $13}' <<<"$s"
}
prev=""
load=""
while IFS= read -r line <&"$out"; do
    now=$(ticks)
    case "$line" in
    "|---"*)
        if [ -n "$load" ]; then
            prev=$now
            echo "$line---|---|"
        else
            echo "$line"
        fi
        ;;
    "| operation | in flight"*)
        # The load table: the micro-cost table above it is left alone.
        load=1
        echo "$line cpu (s) | cpu µs/req |"
        ;;
    "| "*" | "*" | "*)
        if [ -n "$load" ] && [ -n "$prev" ] && [ -n "$now" ]; then
            count=$(awk -F'|' '{gsub(/ /, "", $4); print $4}' <<<"$line")
            awk -v l="$line" -v c="$count" -v d="$((now - prev))" -v hz="$hz" \
                'BEGIN { printf "%s %.2f | %.1f |\n", l, d / hz, (c > 0 ? d / hz * 1e6 / c : 0) }'
            prev=$now
        else
            echo "$line"
        fi
        ;;
    *) echo "$line" ;;
    esac
done
wait "$pid"
echo "after: $(uptime)"
