#!/usr/bin/env bash
# Issue 18's campaign: Redis killed (SIGKILL) and restarted under two gateway nodes, ROUNDS
# times in a row, each round measuring per node the time from Redis answering again to the
# first delivery after the outage (straight from Redis, and published through node 0's
# POST /publish), and to /ready answering 200. It is tests/redis_outage.rs with more
# rounds; every round must resume within 2 s on both nodes.
#
#   loadtest/redis-outage.sh [ROUNDS] [CARGO_TEST_ARGS...]     (ROUNDS defaults to 20)
#
# Prints one line per round and the p50/p90/max per node, with the load average before and
# after; the figures, and the whole output (gateway warnings included), stay in $OUT
# (default /tmp/redis-outage). Needs redis-server; starts its own on a free port.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
shift || true
OUT=${OUT:-/tmp/redis-outage}
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
figures="$OUT/$stamp.txt"
full="$OUT/$stamp.log"
{
  echo "# redis-outage: $ROUNDS rounds, $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPUs"
  echo "# load before: $(cat /proc/loadavg)"
} | tee "$figures"
COREGATE_OUTAGE_ROUNDS=$ROUNDS cargo test -p coregate --test redis_outage "$@" -- --nocapture \
  >"$full" 2>&1
status=$?
grep -E '^(round |node |[0-9]+ rounds|test result)|panicked|did not resume' "$full" | tee -a "$figures"
echo "# load after: $(cat /proc/loadavg)" | tee -a "$figures"
echo "# figures in $figures, whole output in $full"
exit $status
