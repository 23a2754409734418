#!/usr/bin/env bash
# Issue 15's figures: what the calls to the application backend cost.
#
#   loadtest/backend-calls.sh [REPEATS] [N]     (defaults: 2 5000)
#
# Against a fresh release gateway (--shards 2) and the harness's trivial backend
# (`loadtest backend`: /rpc echoes, /connect accepts the token's user):
# 1. rpc: `loadtest rpc -c 50 --duration 10s` through the gateway (round trips/s, p50/p99,
#    round trips per gateway CPU-second), then `-c 1` (one call at a time: latency on an
#    unloaded machine), then the same calls straight to the backend (`--direct`): the
#    difference of the latencies is what the gateway adds.
# 2. connect: `loadtest storm -n N --rounds 2` (everyone connects, then everyone drops and
#    reconnects at once, twice) without the connect proxy, with it, and with it and
#    `--proxy-max-in-flight 64`, in turn. SKIP_RPC=1 runs only this part.
# Loopback only, bounded in time; needs a release build
# (cargo build --release -p coregate -p loadtest). The reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-2}
N=${2:-5000}
OUT=${OUT:-/tmp/backend-calls}
mkdir -p "$OUT"

. loadtest/lib.sh

BPORT=$(free_port)
"$LT" backend --listen "127.0.0.1:$BPORT" --duration 3600s >"$OUT/backend.log" 2>&1 &
BPID=$!
trap 'kill $BPID 2>/dev/null || true' EXIT
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$BPORT))" 2>/dev/null; do sleep 0.05; done
BACKEND="http://127.0.0.1:$BPORT"


for i in $(seq "$REPEATS"); do
  [ "${SKIP_RPC:-}" = 1 ] && break
  # The event rate limit (120/min by default) would refuse a client that calls flat out.
  start_gateway "$OUT/rpc-$i.gateway.log" --proxy-rpc-url "$BACKEND/rpc" \
    --rate-limit-events 1000000 --rate-limit-window 1s --rate-limit-burst 1000
  echo "== rpc through the gateway, run $i"
  "$LT" rpc --url "ws://$WS/ws" --secret $S -c 50 --duration 10s --gateway-pid "$GWPID" \
    --json "$OUT/rpc-gateway-$i.json" | tee "$OUT/rpc-gateway-$i.log"
  echo "== rpc through the gateway, one client (latency unloaded), run $i"
  "$LT" rpc --url "ws://$WS/ws" --secret $S -c 1 --duration 5s --gateway-pid "$GWPID" \
    | tee "$OUT/rpc-gateway-1-$i.log"
  stop_gateway
  echo "== rpc straight to the backend, run $i"
  "$LT" rpc --direct "$BACKEND/rpc" -c 50 --duration 10s \
    --json "$OUT/rpc-direct-$i.json" | tee "$OUT/rpc-direct-$i.log"
  echo "== rpc straight to the backend, one client, run $i"
  "$LT" rpc --direct "$BACKEND/rpc" -c 1 --duration 5s | tee "$OUT/rpc-direct-1-$i.log"
done

[ "${SKIP_STORM:-}" = 1 ] && exit 0
for i in $(seq "$REPEATS"); do
  for proxy in off on on-64; do
    extra=()
    [ "$proxy" = on ] && extra=(--proxy-connect-url "$BACKEND/connect")
    [ "$proxy" = on-64 ] && extra=(--proxy-connect-url "$BACKEND/connect" --proxy-max-in-flight 64)
    start_gateway "$OUT/storm-$proxy-$i.gateway.log" "${extra[@]}"
    echo "== storm of $N, connect proxy $proxy, run $i"
    "$LT" storm --url "ws://$WS/ws" --secret $S -n "$N" --rounds 2 --settle 1s \
      --source-addrs 127.0.0.1,127.0.0.2 --gateway-pid "$GWPID" \
      --json "$OUT/storm-$proxy-$i.json" | tee "$OUT/storm-$proxy-$i.log"
    stop_gateway
  done
done
