#!/usr/bin/env bash
# Issue 14's figures: what voice rooms cost the SFU.
#
#   loadtest/voice-sfu.sh [REPEATS]      (default: 2)
#
# Against a fresh release gateway (--shards 2) per run:
# 1. one room of 10 participants, each sending 50 Opus packets a second (so the SFU
#    forwards 10 × 9 × 50 = 4,500 packets a second), for 20 s: packets forwarded per
#    SFU CPU-second (the gateway's `voice` thread), then every participant leaves and
#    joins again twice: join → first packet heard, p50/p99;
# 2. 50 rooms of 10 silent participants (500 connected sessions): the gateway's RSS per
#    participant.
# Loopback only, bounded in time; needs a release build
# (cargo build --release -p coregate -p loadtest). The reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-2}
OUT=${OUT:-/tmp/voice-sfu}
mkdir -p "$OUT"

. loadtest/lib.sh

for i in $(seq "$REPEATS"); do
  start_gateway "$OUT/forward-$i.gateway.log"
  echo "== a room of 10 talking, run $i"
  "$LT" voice --url "ws://$WS/ws" --secret $S --rooms 1 -p 10 --stagger 200ms \
    --duration 20s --rejoins 2 --gateway-pid "$GWPID" --json "$OUT/forward-$i.json" \
    | tee "$OUT/forward-$i.log"
  stop_gateway

  start_gateway "$OUT/memory-$i.gateway.log"
  echo "== 50 rooms of 10 silent, run $i"
  "$LT" voice --url "ws://$WS/ws" --secret $S --rooms 50 -p 10 --stagger 10ms \
    --duration 2s --rejoins 0 --silent --gateway-pid "$GWPID" --json "$OUT/memory-$i.json" \
    | tee "$OUT/memory-$i.log"
  stop_gateway
done
