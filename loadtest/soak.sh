#!/usr/bin/env bash
# The soak of issue 18: `loadtest chat` with churn at a steady rate against one fresh
# gateway for a long time, the gateway's RSS read once a minute:
#
#   DURATION=60m loadtest/soak.sh
#
# It starts a release gateway (--shards 2, loopback, port 0), runs
#   loadtest chat -n 3000 --large-channels 2 --small-channels 200 -r 300
#                 --churn-fraction 0.2 --typing-fraction 0.2
# (20% of users churn: swap a channel or reconnect every ~5 s; 20% send typing bursts),
# samples the gateway's VmRSS at minute 0, 1, 2, ... into $OUT/rss.csv, stops the gateway
# (only the pid it started), and prints the figures: RSS each minute, its spread after the
# warm-up as ± % of its mean (the issue asks for ±5%), stable users' losses, deliveries/s,
# latency and reconnects. The harness also samples RSS each second into soak.json's
# timeline and draws it as the plot's third panel (soak.svg).
#
# Environment: DURATION (60m), WARMUP_MIN (5), OUT (/tmp/soak), GW and LT (the release
# binaries under ${CARGO_TARGET_DIR:-target}), USERS (3000), RATE (300). The gateway inherits
# the environment: MIMALLOC_ALLOW_THP=0 runs it without transparent huge pages (BENCHMARKS.md,
# "Soak", says why that matters for its RSS).
# Loopback only; bounded: the harness runs under `timeout` (DURATION + 5 minutes).
set -euo pipefail
TARGET=${CARGO_TARGET_DIR:-target}
GW=${GW:-$TARGET/release/coregate}
LT=${LT:-$TARGET/release/loadtest}
DURATION=${DURATION:-60m}
WARMUP_MIN=${WARMUP_MIN:-5}
OUT=${OUT:-/tmp/soak}
USERS=${USERS:-3000}
RATE=${RATE:-300}
S=loadtest-secret-0123456789
mkdir -p "$OUT"
rm -f "$OUT/rss.csv" "$OUT/soak.json" "$OUT/soak.svg"

# DURATION in seconds (s, m, h suffixes, as humantime reads them).
case $DURATION in
  *h) DUR_S=$(( ${DURATION%h} * 3600 )) ;;
  *m) DUR_S=$(( ${DURATION%m} * 60 )) ;;
  *s) DUR_S=${DURATION%s} ;;
  *) echo "soak: DURATION must be like 90s, 60m or 1h" >&2; exit 2 ;;
esac
# Tokens outlive the run (connect phase and drain included) by an hour.
TTL_S=$(( DUR_S + 3600 ))

GWPID=
SAMPLER=
cleanup() {
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
  if [ -n "$GWPID" ] && kill -0 "$GWPID" 2>/dev/null; then
    kill -TERM "$GWPID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$GWPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GWPID" 2>/dev/null || true
    wait "$GWPID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

rss_of() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status" 2>/dev/null || true; }

# The gateway: its stdout carries `listening ws=HOST:PORT admin=HOST:PORT`.
"$GW" serve --shards 2 --jwt-secret "$S" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
  >"$OUT/gateway.out" 2>"$OUT/gateway.log" &
GWPID=$!
for _ in $(seq 200); do
  grep -qs '^listening ' "$OUT/gateway.out" && break
  kill -0 "$GWPID" 2>/dev/null || break
  sleep 0.05
done
WS=$(sed -n 's/^listening ws=\([^ ]*\) admin=.*/\1/p' "$OUT/gateway.out")
AD=$(sed -n 's/^listening ws=[^ ]* admin=\([^ ]*\).*/\1/p' "$OUT/gateway.out")
if [ -z "$WS" ] || [ -z "$AD" ]; then
  echo "soak: the gateway did not say where it listens; its log:" >&2
  cat "$OUT/gateway.out" "$OUT/gateway.log" >&2
  exit 1
fi
echo "soak: gateway pid $GWPID ($("$GW" --version 2>/dev/null || echo "$GW")), ws=$WS admin=$AD;" \
  "chat for $DURATION, $USERS users, $RATE publications/s; output in $OUT"

# RSS once a minute, on a fixed schedule from the start (no drift), until stopped.
(
  start=$(date +%s)
  echo "minute,rss_bytes" >"$OUT/rss.csv"
  m=0
  while kill -0 "$GWPID" 2>/dev/null; do
    rss=$(rss_of "$GWPID")
    [ -n "$rss" ] && echo "$m,$rss" >>"$OUT/rss.csv"
    m=$((m + 1))
    wait_s=$(( start + 60 * m - $(date +%s) ))
    if [ "$wait_s" -gt 0 ]; then sleep "$wait_s"; fi
  done
) &
SAMPLER=$!

set +e
timeout --kill-after=30s $((DUR_S + 300)) "$LT" chat \
  --url "ws://$WS/ws" --admin "http://$AD" --secret "$S" --token-ttl "${TTL_S}s" \
  -n "$USERS" --large-channels 2 --small-channels 200 -r "$RATE" \
  --churn-fraction 0.2 --typing-fraction 0.2 --duration "$DURATION" \
  --source-addrs 127.0.0.1,127.0.0.2 --gateway-pid "$GWPID" \
  --json "$OUT/soak.json" --plot "$OUT/soak.svg" \
  >"$OUT/summary.txt" 2>"$OUT/loadtest.log"
LT_RC=$?
set -e
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
# Memory given back once every client has gone.
sleep 5
RSS_AFTER=$(rss_of "$GWPID")
cleanup
GWPID=

cat "$OUT/summary.txt"
[ "$LT_RC" -eq 0 ] || echo "soak: loadtest exited $LT_RC (see $OUT/loadtest.log)"
# Exit 3 when RSS is not flat within ±5% or stable users lost messages.
RC=0
python3 - "$OUT" "$WARMUP_MIN" "${RSS_AFTER:-}" <<'EOF' || RC=$?
import csv, json, sys
out, warmup, after = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mib = lambda b: b / 1048576
rows = [(int(r["minute"]), int(r["rss_bytes"])) for r in csv.DictReader(open(f"{out}/rss.csv"))]
print("== soak figures")
print("RSS each minute (MiB): " + " ".join(f"{m}:{mib(b):.1f}" for m, b in rows))
steady = [b for m, b in rows if m >= warmup]
verdict_rss = None
if len(steady) >= 2:
    mean = sum(steady) / len(steady)
    lo, hi = min(steady), max(steady)
    dev = max(hi - mean, mean - lo) / mean * 100
    # Least-squares slope over the steady minutes, MiB per hour.
    xs = [m for m, _ in rows if m >= warmup]
    xm = sum(xs) / len(xs)
    slope = sum((x - xm) * (y - mean) for x, y in zip(xs, steady)) / max(sum((x - xm) ** 2 for x in xs), 1e-9)
    verdict_rss = dev <= 5.0
    print(f"after the {warmup}-minute warm-up ({len(steady)} samples): mean {mib(mean):.1f} MiB, "
          f"min {mib(lo):.1f} ({(lo - mean) / mean * 100:+.2f}%), max {mib(hi):.1f} ({(hi - mean) / mean * 100:+.2f}%), "
          f"trend {mib(slope) * 60:+.2f} MiB/h -> within ±{dev:.2f}%: {'FLAT (within ±5%)' if verdict_rss else 'NOT FLAT (beyond ±5%)'}")
else:
    print(f"too few samples after the {warmup}-minute warm-up to judge flatness")
if after:
    print(f"RSS 5 s after the clients left: {mib(int(after)):.1f} MiB")
try:
    r = json.load(open(f"{out}/soak.json"))
except (OSError, ValueError) as e:
    print(f"no soak.json: {e}")
    sys.exit(1)
# The harness's per-second samples: tells a brief spike from a lasting shift.
secs = sorted(t["gateway_rss_bytes"] for t in r["timeline"]
              if t.get("gateway_rss_bytes") and t["t_s"] >= warmup * 60)
if secs:
    med = secs[len(secs) // 2]
    off = sum(1 for b in secs if abs(b - med) > 0.05 * med)
    print(f"per second after the warm-up ({len(secs)} samples): median {mib(med):.1f} MiB, "
          f"min {mib(secs[0]):.1f}, p99 {mib(secs[int(0.99 * (len(secs) - 1))]):.1f}, max {mib(secs[-1]):.1f}; "
          f"{off} s ({off / len(secs) * 100:.1f}%) beyond ±5% of the median")
c, f = r["chat"], r["fanout"]
lost = c["stable_expected"] - c["stable_received"]
print(f"stable users {c['stable_users']}: received {c['stable_received']} of {c['stable_expected']} expected "
      f"-> lost {lost} ({'no loss' if lost <= 0 else 'LOSS'}); losses {f['losses']} duplicates {f['duplicates']} reordered {f['reordered']}")
l = f["latency_us"]
print(f"publications {f['publications']} ({f['publish_rate']:.1f}/s), errors {f['publish_errors'] or 'none'}; "
      f"deliveries {f['deliveries']} = {f['deliveries_per_s']:.0f}/s; latency ms p50 {l['p50'] / 1000:.2f} "
      f"p99 {l['p99'] / 1000:.2f} p99.9 {l['p999'] / 1000:.2f} max {l['max'] / 1000:.2f}")
print(f"churn: {c['reconnects']} reconnects, {c['resubscribes']} resubscribes, errors {c['churn_errors'] or 'none'}; "
      f"typing {c['typing_sent']} sent / {c['typing_received']} received; server errors {c['server_errors']}")
print(f"connect errors {r['connect']['errors'] or 'none'}; connection ends {r['ends']}")
g = r.get("gateway") or {}
if g.get("cpu_utilization") is not None:
    print(f"gateway CPU {g['cpu_s']:.0f}s over {g['window_s']:.0f}s ({g['cpu_utilization'] * 100:.0f}% of one core); harness CPU {r.get('harness_cpu_s') or 0:.0f}s")
sys.exit(0 if verdict_rss is not False and lost <= 0 else 3)
EOF
if [ "$RC" -eq 0 ] && [ "$LT_RC" -ne 0 ]; then RC=$LT_RC; fi
exit "$RC"
