#!/usr/bin/env bash
# The README tour as a script: run it from the repository root while
# `cargo run --release -- serve --dev` is running in another terminal.
set -euo pipefail
tessera() { cargo run -q --release -- "$@"; }
certs=.tessera-dev/certs
svc=spiffe://tessera.dev/svc

T1=$(tessera token issue -a "$svc/orders" -s "orders:write payments:charge ledger:write")
T2=$(tessera token exchange --cert "$certs/orders.pem" --subject-token "$T1" \
       -a "$svc/payments" -s "payments:charge ledger:write")
T3=$(tessera token exchange --cert "$certs/payments.pem" --subject-token "$T2" \
       -a "$svc/ledger" -s ledger:write)
echo "== T3, introspected by ledger"
tessera token introspect --cert "$certs/ledger.pem" "$T3"
echo "== orders revokes T2"
tessera revoke --cert "$certs/orders.pem" --token "$T2"
echo "== T3 after the revocation"
tessera token introspect --cert "$certs/ledger.pem" "$T3"
echo "== T1 after the revocation"
tessera token introspect --cert "$certs/ledger.pem" "$T1"
