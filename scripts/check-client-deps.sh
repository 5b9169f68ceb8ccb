#!/usr/bin/env bash
# The client library must stay light: a resource server that embeds
# `tessera-client` must not compile the server's storage, consensus or
# policy engine. Fails if sled, openraft or cedar-policy (or any crate
# whose name starts with one of them) is in its dependency tree, normal,
# build or dev edges alike. Run from anywhere; used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(sled|openraft|cedar-policy)([-_][a-z0-9_-]*)? v'
for pkg in tessera-client tessera-proto tessera-token; do
    tree=$(cargo tree -p "$pkg" --prefix none --edges normal,build,dev --target all)
    if found=$(grep -E "$forbidden" <<<"$tree" | sort -u) && [ -n "$found" ]; then
        echo "check-client-deps: $pkg depends on what only the server may use:" >&2
        echo "$found" >&2
        exit 1
    fi
done
echo "check-client-deps: tessera-client, tessera-proto and tessera-token are free of sled, openraft and cedar-policy"
