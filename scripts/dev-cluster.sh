#!/usr/bin/env bash
# Builds the release binary and runs `tessera dev`: three nodes as separate
# processes on 127.0.0.1 (API 7443-7445, Raft 7543-7545), state under
# .tessera-dev/ at the repository root. Ctrl-C stops them all. Extra
# arguments go to `tessera dev` (e.g. --nodes 5, --dir /tmp/td).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
exec ./target/release/tessera dev "$@"
