#!/usr/bin/env bash
# Issue 17: does a MessagePack delivery cost the gateway more than a JSON one?
#
#   loadtest/encoding-cost.sh [ROUNDS] [RATE]        (defaults: 3 20)
#
# Each round, for json then msgpack (the order swapped every other round), a fresh release
# gateway (--shards 1) and `loadtest fanout -s 2000 -t 1 -r RATE --payload-bytes 60`
# (2,000 subscribers of one topic, ~60-byte events through the admin API: RATE 20 is
# 40,000 deliveries a second) for 10 s; prints deliveries per server CPU-second, split
# into user and system time, and p50/p99. Loopback only, bounded; needs a release build
# (cargo build --release -p coregate -p loadtest). Reports stay in $OUT. SERVER=floor runs
# the floor program (one plain write loop, the same frames) in the gateway's place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
RATE=${2:-20}
OUT=${OUT:-/tmp/encoding-cost}
mkdir -p "$OUT"
. loadtest/lib.sh

for round in $(seq "$ROUNDS"); do
  order="json msgpack"; [ $((round % 2)) -eq 0 ] && order="msgpack json"
  for encoding in $order; do
    SHARDS=1 start_server "$OUT/$round-$encoding.server.log"
    json="$OUT/$round-$encoding.json"
    read -r u0 s0 < <(cpu_of "$GWPID")
    "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 2000 -t 1 -r "$RATE" \
      --payload-bytes 60 --duration 10s --encoding "$encoding" --gateway-pid "$GWPID" \
      --json "$json" >"$OUT/$round-$encoding.log" 2>&1
    read -r u1 s1 < <(cpu_of "$GWPID")
    stop_gateway
    python3 - "$json" "$round" "$encoding" "$u0" "$s0" "$u1" "$s1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
u = float(sys.argv[6]) - float(sys.argv[4]); s = float(sys.argv[7]) - float(sys.argv[5])
f, g = r["fanout"], r["gateway"]
print(f"{sys.argv[2]} {sys.argv[3]:<8} deliveries/cpu-s {g['deliveries_per_cpu_s']:>9,.0f} "
      f"deliveries/s {f['deliveries_per_s']:>8,.0f} whole run: user {u:.2f}s system {s:.2f}s "
      f"p50 {f['latency_us']['p50']/1000:.2f} ms p99 {f['latency_us']['p99']/1000:.2f} ms")
PY
  done
done
