#!/usr/bin/env bash
# Runs the same gateway scenarios against two builds of coregate, alternating them, in one
# sitting, so that a change is judged against its parent on the same machine and load:
#
#   loadtest/compare-builds.sh OLD_COREGATE NEW_COREGATE [ROUNDS]
#
# Each round runs, for each build, on a fresh gateway (--shards 2):
#   idle15k   loadtest idle -n 15000            -> bytes per connection (RSS delta / n)
#   fanout0   fanout -s 5000 -t 1 -r 200        -> deliveries per gateway CPU-second
#   fanout20  the same with --batch-delay 20ms  -> deliveries per gateway CPU-second
#   p99       fanout -s 2000 -t 10 -r 200       -> publish->receive p99 (us)
#   sparse    fanout -s 5000 -t 5000 -r 2500    -> deliveries per gateway CPU-second when each
#             subscriber gets one event every 2 s: a connection parks after a whole quiet
#             round (1-2 s), so many deliveries pay an unpark and a park (SPARSE_RATE
#             changes the interval: 1667 is every 3 s)
# (SCENARIOS="idle15k p99" runs a subset) and prints one line per run; the JSON reports stay in $OUT (default /tmp/compare-builds).
# The harness is this checkout's target/release/loadtest. Loopback only, bounded in time.
set -euo pipefail
OLD=${1:?old coregate binary}
NEW=${2:?new coregate binary}
ROUNDS=${3:-2}
LT=${LT:-target/release/loadtest}
OUT=${OUT:-/tmp/compare-builds}
S=loadtest-secret-0123456789
mkdir -p "$OUT"

# Starts a gateway; sets WS, AD and GWPID.
start_gateway() {
  local bin=$1; shift
  local log="$OUT/gateway.log"
  "$bin" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 2 --jwt-secret "$S" "$@" \
    >"$log" 2>&1 &
  GWPID=$!
  for _ in $(seq 100); do
    if grep -q '^listening' "$log"; then break; fi
    sleep 0.05
  done
  WS=$(sed -n 's/^listening ws=\([^ ]*\) admin=.*/\1/p' "$log")
  AD=$(sed -n 's/^listening ws=[^ ]* admin=\(.*\)/\1/p' "$log")
}

stop_gateway() {
  kill -TERM "$GWPID" 2>/dev/null || true
  wait "$GWPID" 2>/dev/null || true
}

field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# A fan-out report's figures, as the result lines print them.
throughput() {
  echo "deliveries/cpu-s $(field "$1" "round(r['gateway']['deliveries_per_cpu_s'])") deliveries/s $(field "$1" "round(r['fanout']['deliveries_per_s'])")"
}
latency() {
  echo "p50 $(field "$1" "r['fanout']['latency_us']['p50']") p99 $(field "$1" "r['fanout']['latency_us']['p99']")"
}

run() {
  local name=$1 build=$2 bin=$3; shift 3
  local json="$OUT/$name-$build-$round.json"
  case $name in
    idle15k)
      start_gateway "$bin"
      "$LT" idle --url "ws://$WS/ws" --secret $S -n 15000 --max-per-process 5000 \
        --source-addrs 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --settle 3s --duration 5s \
        --gateway-pid "$GWPID" --json "$json" >"$OUT/loadtest.log" 2>&1
      echo "$round $build idle15k bytes/conn $(field "$json" "round(r['gateway']['bytes_per_connection'])")"
      ;;
    fanout0 | fanout20)
      local delay=0ms; [ "$name" = fanout20 ] && delay=20ms
      start_gateway "$bin" --batch-delay $delay
      "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 5000 -t 1 -r 200 \
        --payload-bytes 100 --duration 10s --source-addrs 127.0.0.1,127.0.0.2 \
        --gateway-pid "$GWPID" --json "$json" >"$OUT/loadtest.log" 2>&1
      echo "$round $build $name $(throughput "$json")"
      ;;
    sparse)
      start_gateway "$bin"
      "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 5000 -t 5000 \
        -r "${SPARSE_RATE:-2500}" --payload-bytes 100 --duration 20s \
        --source-addrs 127.0.0.1,127.0.0.2 --gateway-pid "$GWPID" --json "$json" >"$OUT/loadtest.log" 2>&1
      echo "$round $build sparse $(throughput "$json") latency_us $(latency "$json")"
      ;;
    p99)
      start_gateway "$bin"
      "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 2000 -t 10 -r 200 \
        --payload-bytes 100 --duration 10s --gateway-pid "$GWPID" --json "$json" >"$OUT/loadtest.log" 2>&1
      echo "$round $build p99 latency_us $(latency "$json")"
      ;;
  esac
  stop_gateway
}

for round in $(seq "$ROUNDS"); do
  for name in ${SCENARIOS:-idle15k fanout0 fanout20 p99}; do
    # Alternate which build goes first, so that neither always runs on a warmer machine.
    if [ $((round % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for build in $order; do
      if [ "$build" = old ]; then run "$name" old "$OLD"; else run "$name" new "$NEW"; fi
    done
  done
done
