#!/usr/bin/env bash
# Issue 17's stall: what the kernel holds for a node at 2 M deliveries a second, and
# whether deliveries stop meanwhile, with and without a bound on each socket's send buffer.
#
#   loadtest/kernel-queues.sh [ROUNDS]          (default: 1)
#
# Each round, for `--socket-send-buffer 0` (the kernel autotunes, up to wmem_max) and the
# default (64 KiB): a fresh release gateway (--shards 2, unpinned) and `loadtest fanout
# -s 2000 -t 1 -r 1000 --payload-bytes 60` for 20 s (2,000 subscribers, 2 M deliveries a
# second offered); every 0.5 s the sum of the gateway's sockets' send queues (`ss`) and
# the machine's TCP memory (/proc/net/sockstat, pages of 4 KiB). Prints the peaks, the
# longest run of seconds with no delivery, and the deliveries. Loopback only, bounded;
# needs a release build. Reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
OUT=${OUT:-/tmp/kernel-queues}
mkdir -p "$OUT"
. loadtest/lib.sh

# Every 0.5 s: "<send-q bytes of the gateway's port> <TCP mem pages>", until killed.
sample() {
  local port=$1
  while :; do
    q=$(ss -tnH state established "( sport = :$port )" | awk '{ s += $2 } END { print s + 0 }')
    m=$(awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat)
    echo "$q $m"
    sleep 0.5
  done
}

for round in $(seq "$ROUNDS"); do
  for sndbuf in 0 65536; do
    start_gateway "$OUT/$round-$sndbuf.gateway.log" --socket-send-buffer "$sndbuf"
    sample "${WS##*:}" >"$OUT/$round-$sndbuf.samples" &
    sampler=$!
    "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 2000 -t 1 -r 1000 \
      --payload-bytes 60 --duration 20s --source-addrs 127.0.0.1,127.0.0.2 \
      --gateway-pid "$GWPID" --json "$OUT/$round-$sndbuf.json" >"$OUT/$round-$sndbuf.log" 2>&1 || true
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    stop_gateway
    python3 - "$OUT/$round-$sndbuf" "$round" "$sndbuf" <<'PY'
import json, sys
base, rnd, sndbuf = sys.argv[1:]
r = json.load(open(base + ".json"))
rows = [tuple(map(int, l.split())) for l in open(base + ".samples") if len(l.split()) == 2]
sendq = max((q for q, _ in rows), default=0); mem = max((m for _, m in rows), default=0)
ticks = [t for t in r["timeline"] if t["deliveries_per_s"] is not None]
# The longest run of whole seconds with no delivery between two that had some.
longest = run = 0; begun = False
for t in ticks:
    if t["deliveries_per_s"] > 0:
        if begun: longest = max(longest, run)
        begun = True; run = 0
    elif begun: run += 1
f = r["fanout"]
print(f"{rnd} sndbuf {sndbuf:>6}: deliveries {f['deliveries']:,} of {f['expected_deliveries']:,} "
      f"({f['deliveries_per_s']:,.0f}/s), lost {f['losses']}; peak send queues {sendq/2**20:,.0f} MiB, "
      f"peak TCP memory {mem*4096/2**20:,.0f} MiB; longest stall {longest} s; "
      f"p50 {f['latency_us']['p50']/1000:.0f} ms p99 {f['latency_us']['p99']/1000:.0f} ms")
PY
  done
done
