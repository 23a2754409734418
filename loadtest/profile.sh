#!/usr/bin/env bash
# Issue 17: where a delivery's CPU goes, kernel against the server's own code.
#
#   loadtest/profile.sh RATE [OUT_PREFIX]       (RATE 20 = 40k deliveries/s, 500 = 1M offered)
#
# A fresh release server and `loadtest fanout -s 2000 -t 1 -r RATE --payload-bytes 60` for
# 12 s; from the 5th second, `perf record -g` of the server for 6 s. Prints one table row:
# the samples' split by object (kernel, the server's own binary, libc), what the harness
# measured, and the server's user and system CPU over the whole run (the 2,000 handshakes
# included), and for coregate what its metrics saw inside the gateway: publish→write p50 /
# p99 (interpolated in the histogram's buckets, as Prometheus' histogram_quantile does),
# the router's inbox high water and events per frame. Needs perf and a release build (cargo build --release -p coregate -p loadtest);
# loopback only, bounded.
#
# SERVER=coregate (default: the gateway, --shards 1) or SERVER=floor (the floor program:
# one plain write loop, the same frames); ENCODING=json (default) or msgpack;
# SERVER_CPUS and HARNESS_CPUS (taskset lists, e.g. 0 and 1) pin the two sides; GW_ARGS
# are extra arguments for the server (e.g. GW_ARGS="--batch-delay 5ms"). PUBLISH=redis
# (coregate only) publishes through a redis-server of its own on the harness's CPUs, as
# a backend publishing to a node through Redis does, instead of through the admin API,
# whose thread shares the gateway's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:?usage: loadtest/profile.sh RATE [OUT_PREFIX]}
SERVER=${SERVER:-coregate}
ENCODING=${ENCODING:-json}
OUT=${2:-/tmp/profile-$SERVER-$ENCODING-$RATE}
. loadtest/lib.sh

read -r -a server_args <<<"${GW_ARGS:-}"
redis_pid=
if [ "${PUBLISH:-admin}" = redis ]; then
  [ "$SERVER" = coregate ] || { echo "PUBLISH=redis is for SERVER=coregate" >&2; exit 2; }
  redis_url=redis://127.0.0.1:$(free_port)
  ${HARNESS_CPUS:+taskset -c "$HARNESS_CPUS"} redis-server --port "${redis_url##*:}" \
    --save '' --appendonly no >"$OUT.redis.log" 2>&1 &
  redis_pid=$!
  trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do redis-cli -u "$redis_url" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -u "$redis_url" ping >/dev/null 2>&1 || { echo "redis-server did not start: $OUT.redis.log" >&2; exit 1; }
  server_args+=(--redis-url "$redis_url")
  publish_args=(--redis-url "$redis_url")
fi
SHARDS=1 start_server "$OUT.server.log" "${server_args[@]}"
[ -n "$redis_pid" ] || publish_args=(--admin "http://$AD")
read -r u0 s0 < <(cpu_of "$GWPID")
${HARNESS_CPUS:+taskset -c "$HARNESS_CPUS"} "$LT" fanout --url "ws://$WS/ws" "${publish_args[@]}" \
  --secret $S -s 2000 -t 1 -r "$RATE" --payload-bytes 60 --duration 12s --encoding "$ENCODING" \
  --gateway-pid "$GWPID" --json "$OUT.json" >"$OUT.log" 2>&1 &
harness=$!
sleep 5
perf record -F 999 -g -o "$OUT.perf" -p "$GWPID" -- sleep 6 >/dev/null 2>&1
wait "$harness" || true
read -r u1 s1 < <(cpu_of "$GWPID")
rm -f "$OUT.metrics"
[ "$SERVER" = coregate ] && curl -s "http://$AD/metrics" >"$OUT.metrics"
stop_gateway
perf report -i "$OUT.perf" --no-children --sort dso --stdio -g none 2>/dev/null >"$OUT.dso"
python3 - "$OUT" "$SERVER" "$ENCODING" "$RATE" "$u0" "$s0" "$u1" "$s1" <<'PY'
import json, re, sys
out, server, encoding, rate = sys.argv[1:5]
u0, s0, u1, s1 = map(float, sys.argv[5:9])
share = {"kernel": 0.0, "own": 0.0, "libc": 0.0}
for line in open(out + ".dso"):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
    if not m:
        continue
    pct, dso = float(m.group(1)), m.group(2)
    key = "kernel" if "kernel" in dso else "libc" if dso.startswith("libc") else "own" if dso == server else None
    if key:
        share[key] += pct


def inside_gateway(path):
    """publish→write p50/p99 (ms), inbox high water and events per frame from /metrics."""
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return "—"
    metric = {}
    buckets = []
    for line in lines:
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        m = re.match(r'coregate_publish_to_write_seconds_bucket\{le="([^"]+)"\}', name)
        if m:
            buckets.append((float(m.group(1)), float(value)))
        else:
            metric[name] = float(value)
    def quantile(q):
        total = buckets[-1][1]
        lower, below = 0.0, 0.0
        for upper, count in buckets:
            if count >= q * total:
                if upper == float("inf"):
                    return lower * 1000
                return (lower + (upper - lower) * (q * total - below) / max(count - below, 1)) * 1000
            lower, below = upper, count
    events = metric.get('coregate_messages_out_total{class="event"}', 0)
    frames = metric.get("coregate_frames_out_total", 0) or 1
    return (f"{quantile(0.5):.1f} / {quantile(0.99):.1f} ms, inbox ≤ "
            f"{metric.get('coregate_inbox_high_water_events', 0):.0f}, {events / frames:.1f} per frame")

r = json.load(open(out + ".json")); f, g = r["fanout"], r["gateway"]
per_cpu_s = g["deliveries_per_cpu_s"] or 0
us = 1e6 / per_cpu_s if per_cpu_s else float("nan")
print(f"| {server} | {encoding} | {rate} | {share['kernel']:.1f}% | {share['own']:.1f}% | {share['libc']:.1f}% "
      f"| {f['deliveries_per_s']:,.0f} | {f['losses']} | {per_cpu_s:,.0f} | {us:.2f} µs "
      f"(kernel {us * share['kernel'] / 100:.2f}, own {us * share['own'] / 100:.2f}) "
      f"| {f['latency_us']['p50']/1000:.1f} / {f['latency_us']['p99']/1000:.1f} ms "
      f"| {inside_gateway(out + '.metrics')} | {u1 - u0:.2f} / {s1 - s0:.2f} s |")
PY
