# Shared by the dev-cluster helpers (sourced, not run). Everything is
# relative to the repository root, where `tessera dev` keeps its state in
# $TESSERA_DEV_DIR (default .tessera-dev): certs/, kek, policy.cedar,
# node<i>/ (data), node<i>.log, node<i>.pid, dev.pid, dev.json.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEV_DIR=${TESSERA_DEV_DIR:-.tessera-dev}

# The tessera binary: $TESSERA_BIN, else the newest local build, else PATH.
tessera_bin() {
  if [[ -n ${TESSERA_BIN:-} ]]; then
    echo "$TESSERA_BIN"
  elif [[ -x target/release/tessera && ( ! -x target/debug/tessera || target/release/tessera -nt target/debug/tessera ) ]]; then
    echo target/release/tessera
  elif [[ -x target/debug/tessera ]]; then
    echo target/debug/tessera
  else
    command -v tessera || { echo "no tessera binary: run cargo build --release" >&2; return 1; }
  fi
}

# Node numbers that have a log, in order.
dev_nodes() {
  local f
  for f in "$DEV_DIR"/node*.log; do
    [[ -e $f ]] || continue
    f=${f##*/node}
    echo "${f%.log}"
  done | sort -n
}

# The API address node $1 last reported ("tessera node N listening on API raft RAFT").
node_api() {
  grep -o "^tessera node $1 listening on [^ ]*" "$DEV_DIR/node$1.log" 2>/dev/null | tail -n 1 | awk '{print $NF}'
}

# The pid of node $1 if it is running, else nothing (and status 1).
node_pid() {
  local pid
  pid=$(cat "$DEV_DIR/node$1.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# The pid of the running `tessera dev`, else nothing (and status 1).
dev_pid() {
  local pid
  pid=$(cat "$DEV_DIR/dev.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
