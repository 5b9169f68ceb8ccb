#!/usr/bin/env bash
# Builds in release mode and runs the load generator against a one-node
# cluster it starts in-process on 127.0.0.1 (see docs/BENCHMARKS.md).
# Extra arguments go to `tessera bench`, e.g. --concurrency 16 --seconds 5,
# or --baseline --unique-tokens 32768 (ratios to a do-nothing mTLS service).
set -euo pipefail
cargo build --release -q
exec ./target/release/tessera bench "$@"
