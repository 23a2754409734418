#!/usr/bin/env bash
# Issue 17: where a delivery's CPU goes, kernel against coregate's own code.
#
#   loadtest/profile.sh RATE [OUT_PREFIX]       (RATE 20 = 40k deliveries/s, 500 = 1M offered)
#
# A fresh release gateway (--shards 1) and `loadtest fanout -s 2000 -t 1 -r RATE
# --payload-bytes 60` for 12 s; from the 5th second, `perf record -g` of the gateway for
# 6 s. Prints the samples' split by object (kernel, coregate, libc) and the harness's
# figures. Needs perf and a release build; loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:?usage: loadtest/profile.sh RATE [OUT_PREFIX]}
OUT=${2:-/tmp/profile-$RATE}
. loadtest/lib.sh
SHARDS=1 start_gateway "$OUT.gateway.log"
"$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 2000 -t 1 -r "$RATE" \
  --payload-bytes 60 --duration 12s --gateway-pid "$GWPID" --json "$OUT.json" >"$OUT.log" 2>&1 &
harness=$!
sleep 5
perf record -F 999 -g -o "$OUT.perf" -p "$GWPID" -- sleep 6 >/dev/null 2>&1
wait "$harness" || true
stop_gateway
perf report -i "$OUT.perf" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -5
python3 - "$OUT.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); f, g = r["fanout"], r["gateway"]
print(f"deliveries/s {f['deliveries_per_s']:,.0f}, per gateway CPU-second {g['deliveries_per_cpu_s'] or 0:,.0f}, "
      f"p50 {f['latency_us']['p50']/1000:.1f} ms, p99 {f['latency_us']['p99']/1000:.1f} ms, lost {f['losses']}")
PY
