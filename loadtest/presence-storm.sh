#!/usr/bin/env bash
# Issue 12's storm figures: what presence costs when everyone reconnects at once.
#
#   loadtest/presence-storm.sh [N] [ROUNDS] [REPEATS]     (defaults: 10000 3 2)
#
# For presence on and off alternately (REPEATS times each), against a fresh release
# gateway (--shards 2) on a fresh private redis-server: `loadtest storm -n N --rounds
# ROUNDS` (everyone connects, then drops and reconnects at once ROUNDS times), then waits
# out the presence grace so that the final closes' `offline`s are announced too. Prints
# per run: the initial connect-and-ready rate, each round's reconnect p50/p99 and time until
# all were back, the Redis commands the gateway made (INFO commandstats, EVAL separately)
# per connection lifecycle (the commands inside scripts count in commandstats too), Redis's CPU
# time, and the presence announcements Redis carried (a PSUBSCRIBE
# to `presence:*` counts them), during the storm rounds and in all.
# Loopback only, bounded in time; needs redis-server and redis-cli, and a release build
# (cargo build --release -p coregate -p loadtest). The reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ROUNDS=${2:-3}
REPEATS=${3:-2}
LT=${LT:-target/release/loadtest}
GW=${GW:-target/release/coregate}
OUT=${OUT:-/tmp/presence-storm}
GRACE=5
S=loadtest-secret-0123456789
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# Sum of the `calls` of every command in INFO commandstats, and of EVAL alone.
calls() { redis-cli -p "$RPORT" INFO commandstats | tr -d '\r' | python3 -c '
import sys, re
total = eval_ = 0
for line in sys.stdin:
    m = re.match(r"cmdstat_(\w+(?:\|\w+)?):calls=(\d+)", line)
    if m:
        total += int(m.group(2))
        if m.group(1) in ("eval", "evalsha"): eval_ += int(m.group(2))
print(total, eval_)'; }

run() {
  local presence=$1 i=$2 tag="presence-$1-$2"
  RPORT=$(free_port)
  redis-server --port "$RPORT" --save '' --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
  local rpid=$!
  until redis-cli -p "$RPORT" PING >/dev/null 2>&1; do sleep 0.05; done
  # The announcement counter: every PUBLISH on a presence channel, with when it came.
  redis-cli -p "$RPORT" PSUBSCRIBE 'presence:*' 2>/dev/null | python3 -c '
import sys, time
for line in sys.stdin:
    if line == "pmessage\n":
        print(time.time(), flush=True)' >"$OUT/$tag.announcements" &
  local spid=$!
  local log="$OUT/$tag.gateway.log"
  "$GW" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 2 --jwt-secret "$S" \
    --redis-url "redis://127.0.0.1:$RPORT" --presence "$presence" \
    --presence-grace "${GRACE}s" --max-connections-per-user 0 >"$log" 2>&1 &
  local gwpid=$!
  for _ in $(seq 200); do grep -q '^listening' "$log" && break; sleep 0.05; done
  local ws
  ws=$(sed -n 's/^listening ws=\([^ ]*\) admin=.*/\1/p' "$log")
  redis-cli -p "$RPORT" CONFIG RESETSTAT >/dev/null
  local json="$OUT/$tag.json"
  "$LT" storm --url "ws://$ws/ws" --secret $S -n "$N" --rounds "$ROUNDS" --settle 2s \
    --max-per-process 5000 --source-addrs 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 \
    --gateway-pid "$gwpid" --json "$json" >"$OUT/$tag.loadtest.log" 2>&1
  local storm_end
  storm_end=$(python3 -c 'import time; print(time.time())')
  # The final closes' offlines: due after the grace, announced by each node's sweep at
  # up to 1,000 users a second.
  sleep $((GRACE + N / 1000 + 3))
  read -r total evals < <(calls)
  local redis_cpu
  redis_cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$rpid/stat")
  kill -TERM "$gwpid"; wait "$gwpid" 2>/dev/null || true
  kill "$spid" 2>/dev/null || true
  redis-cli -p "$RPORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  wait "$rpid" 2>/dev/null || true
  local lifecycles=$((N * (ROUNDS + 1)))
  local announced
  announced=$(wc -l <"$OUT/$tag.announcements")
  local before_end
  before_end=$(awk -v e="$storm_end" '$1 <= e' "$OUT/$tag.announcements" | wc -l)
  echo "presence=$presence run=$i n=$N rounds=$ROUNDS lifecycles=$lifecycles"
  python3 - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["connect"]
print(f"  first connect+ready: {c['connected']}/{c['requested']} in {c['phase_s']:.2f} s ({c['rate_per_s']:.0f}/s), p50 {c['p50_ms']:.1f} ms p99 {c['p99_ms']:.1f} ms")
for rd in r["storm"]["rounds"]:
    rate = rd["back"] / rd["all_back_s"] if rd["all_back_s"] else 0
    print(f"  storm round {rd['round']}: {rd['back']}/{rd['dropped']} back in {rd['all_back_s']:.2f} s ({rate:.0f}/s), reconnect p50 {rd['p50_ms']:.0f} ms p99 {rd['p99_ms']:.0f} ms, failed attempts {rd['failed_attempts']}")
g = r["gateway"]
print(f"  gateway CPU {g['cpu_s']:.2f} s over {g['window_s']:.1f} s")
PY
  echo "  redis: ${redis_cpu} s of CPU, $evals EVAL round trips, $total commands executed (script bodies included); per connection lifecycle $(python3 -c "print(round($evals/$lifecycles,2), 'EVAL,', round($total/$lifecycles,2), 'commands')")"
  echo "  presence announcements: $before_end up to the storm's end ($N first connects), $((announced - before_end)) after the final closes, $announced in all"
}

echo "# presence-storm: N=$N rounds=$ROUNDS, $(git rev-parse --short HEAD 2>/dev/null), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$REPEATS"); do
  if [ $((i % 2)) -eq 1 ]; then order="true false"; else order="false true"; fi
  for p in $order; do run "$p" "$i"; done
done
