#!/usr/bin/env bash
# Issue 17: coregate against the floor program, side by side in one sitting.
#
#   loadtest/against-floor.sh [ROUNDS] [RATES]      (defaults: 2 "20 500")
#
# For each round, publication rate (20 = 40k deliveries/s, 500 = 1M offered) and encoding,
# runs loadtest/profile.sh once with the gateway and once with the floor program (the
# order swapped every other round) and prints the rows as one markdown table. SERVER_CPUS
# and HARNESS_CPUS pass through (pinned runs). Profiles and reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
RATES=${2:-20 500}
OUT=${OUT:-/tmp/against-floor}
mkdir -p "$OUT"

echo "| server | encoding | publications/s | kernel | own code | libc | delivered/s | lost | per server CPU-s | CPU per delivery | p50 / p99 (harness) | inside the gateway: publish→write p50 / p99, inbox high water, events per frame | whole run user / system |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  servers="coregate floor"; [ $((round % 2)) -eq 0 ] && servers="floor coregate"
  for rate in $RATES; do
    for encoding in json msgpack; do
      for server in $servers; do
        SERVER=$server ENCODING=$encoding loadtest/profile.sh "$rate" "$OUT/$round-$server-$encoding-$rate"
      done
    done
  done
done
