#!/usr/bin/env bash
# Issue 13's figures: what recovery costs when everyone reconnects at once, and what
# history costs on the publish path.
#
#   loadtest/history-storm.sh [N] [ROUNDS] [RATE]     (defaults: 5000 3 500)
#
# 1. Recovery: a fresh private redis-server and a fresh release gateway (--shards 2,
#    --redis-url, --history 'channel:=1000/1h'); `loadtest storm --recover -n N -t 50
#    --rounds ROUNDS --duration 20s -r RATE` (N connections over 50 topics; publications
#    through the admin API, so through FCALL coregate_publish, all along; ROUNDS times
#    everyone drops and resubscribes with `since`). Prints each round's recovery time,
#    exactly-once figures, and the Redis commands per recovering client
#    (INFO commandstats: FCALL calls, which are the history reads and the publications).
# 2. The publish path with and without history: `redis-benchmark` of FCALL
#    coregate_publish against PUBLISH (each fanned out to the gateway's subscription), and
#    `loadtest fanout` (1,000 subscribers, 2,000 publications/s through the admin API)
#    with --history on and off: gateway and Redis CPU.
# Loopback only, bounded in time; needs redis-server, redis-cli, redis-benchmark and a
# release build (cargo build --release -p coregate -p loadtest). Reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
ROUNDS=${2:-3}
RATE=${3:-500}
OUT=${OUT:-/tmp/history-storm}
mkdir -p "$OUT"

. loadtest/lib.sh
# Calls of one command in INFO commandstats.
calls() { redis-cli -p "$RPORT" INFO commandstats | tr -d '\r' |
  sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p" | head -1; }
metric() { curl -s "http://$AD/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

start_redis() {
  RPORT=$(free_port)
  redis-server --port "$RPORT" --save '' --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
  RPID=$!
  until redis-cli -p "$RPORT" PING >/dev/null 2>&1; do sleep 0.05; done
}
stop_redis() { redis-cli -p "$RPORT" SHUTDOWN NOSAVE >/dev/null 2>&1 || true; wait "$RPID" 2>/dev/null || true; }

# A gateway on this run's Redis, ready (`/ready` 200) before it returns.
start_redis_gateway() {
  local log=$1; shift
  start_gateway "$log" --redis-url "redis://127.0.0.1:$RPORT" "$@"
  until curl -sf "http://$AD/ready" >/dev/null; do sleep 0.05; done
}

echo "== recovery storm: $N connections, $ROUNDS rounds, $RATE publications/s"
start_redis
start_redis_gateway "$OUT/storm.gateway.log" --history 'channel:=1000/1h'
redis-cli -p "$RPORT" CONFIG RESETSTAT >/dev/null
"$LT" storm --recover --url "ws://$WS/ws" --admin "http://$AD" --secret $S -n "$N" -t 50 \
  --rounds "$ROUNDS" --duration 20s -r "$RATE" --source-addrs 127.0.0.1,127.0.0.2 \
  --gateway-pid "$GWPID" --json "$OUT/storm.json" | tee "$OUT/storm.log"
fcalls=$(calls fcall); published=$(python3 -c "import json; print(json.load(open('$OUT/storm.json'))['published'])")
requests=$(metric coregate_history_requests_total); reads=$(metric coregate_history_redis_reads_total)
echo "FCALLs: $fcalls ($published publications + $reads history reads); history requests from shards: $requests"
python3 -c "
reads, requests = float('$reads'), float('$requests')
print(f'history reads (coregate_history) per subscribing client: {reads / requests:.3f}'
      f' ({reads:.0f} reads for {requests:.0f} subscribes, fresh and recovering)')"
echo "Redis CPU: $(cpu_of "$RPID" | awk '{ printf "%.2f", $1 + $2 }') s"
stop_gateway
stop_redis

[ "${SKIP_PUBLISH_PATH:-}" = 1 ] && exit 0
echo "== publish path: redis-benchmark, FCALL coregate_publish against PUBLISH"
start_redis
start_redis_gateway "$OUT/bench.gateway.log" --history 'channel:=1000/1h'
# One subscriber, so that each publication is fanned out to the gateway as in production.
"$LT" idle --url "ws://$WS/ws" --secret $S -n 1 --duration 1s >/dev/null 2>&1 || true
PAYLOAD='{"op":"message_new","d":{"text":"hello there, this is a chat message of about sixty bytes"}}'
for i in 1 2; do
  redis-benchmark -p "$RPORT" -n 100000 -c 8 -P 16 -q FCALL coregate_publish 1 channel:1 "$PAYLOAD" \
    | tr '\r' '\n' | grep -i 'requests per second' | tail -1 | sed 's/^/FCALL coregate_publish: /'
  redis-benchmark -p "$RPORT" -n 100000 -c 8 -P 16 -q PUBLISH channel:1 "$PAYLOAD" \
    | tr '\r' '\n' | grep -i 'requests per second' | tail -1 | sed 's/^/PUBLISH:               /'
done
stop_gateway
stop_redis

for i in 1 2; do
  for history in on off; do
    start_redis
    extra=()
    [ "$history" = on ] && extra=(--history 'channel:=1000/1h')
    start_redis_gateway "$OUT/fanout-$history-$i.gateway.log" "${extra[@]}"
    echo "== fanout, history $history, run $i"
    "$LT" fanout --url "ws://$WS/ws" --admin "http://$AD" --secret $S -s 1000 -t 10 -r 2000 \
      --duration 10s --gateway-pid "$GWPID" --json "$OUT/fanout-$history-$i.json" \
      | grep -E 'deliveries|gateway CPU|loss|latency' | tee "$OUT/fanout-$history-$i.log"
    echo "Redis CPU: $(cpu_of "$RPID" | awk '{ printf "%.2f", $1 + $2 }') s"
    stop_gateway
    stop_redis
  done
done
