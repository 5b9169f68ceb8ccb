#!/usr/bin/env bash
# The README tour as a script. Run it from the repository root while a
# cluster runs in another terminal: `tessera dev` (scripts/dev-cluster.sh)
# or a single `cargo run --release -- serve --dev`.
#
# Which node to talk to: TESSERA_ENDPOINT (default 127.0.0.1:7443, node 1).
# Against another node of the dev cluster, writes (the revocation) are
# forwarded to the leader:  TESSERA_ENDPOINT=127.0.0.1:7444 scripts/tour.sh
# Certificates come from $TESSERA_DEV_DIR/certs (default .tessera-dev).
# TESSERA_BIN picks a binary instead of `cargo run --release`.
set -euo pipefail
tessera() {
  if [[ -n ${TESSERA_BIN:-} ]]; then "$TESSERA_BIN" "$@"; else cargo run -q --release -- "$@"; fi
}
certs=${TESSERA_DEV_DIR:-.tessera-dev}/certs
export TESSERA_CA=${TESSERA_CA:-$certs/ca.pem}
export TESSERA_CERT=${TESSERA_CERT:-$certs/frontend.pem}
svc=spiffe://tessera.dev/svc
echo "== talking to ${TESSERA_ENDPOINT:-127.0.0.1:7443}"

T1=$(tessera token issue -a "$svc/orders" -s "orders:write payments:charge ledger:write")
T2=$(tessera token exchange --cert "$certs/orders.pem" --subject-token "$T1" \
       -a "$svc/payments" -s "payments:charge ledger:write")
T3=$(tessera token exchange --cert "$certs/payments.pem" --subject-token "$T2" \
       -a "$svc/ledger" -s ledger:write)
echo "== T3, introspected by ledger"
tessera token introspect --cert "$certs/ledger.pem" "$T3"
echo "== orders revokes T2"
REV=$(tessera revoke --cert "$certs/orders.pem" --token "$T2")
echo "$REV"
# Read-your-writes: wait (bounded) until this node has applied the revocation.
MIN=$(echo "$REV" | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
echo "== T3 after the revocation"
tessera token introspect --cert "$certs/ledger.pem" --min-revision "${MIN:-0}" "$T3"
echo "== T1 after the revocation (asked by its audience, orders)"
tessera token introspect --cert "$certs/orders.pem" --min-revision "${MIN:-0}" "$T1"
