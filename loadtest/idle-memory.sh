#!/usr/bin/env bash
# Issue 17's memory figure: gateway RSS per idle authenticated connection, one shard.
#
#   loadtest/idle-memory.sh [N ...]          (default: 5000 15000)
#
# For each N and each encoding (ENCODINGS, default "json msgpack"), a fresh release gateway (--shards 1) and
# `loadtest idle -n N` (over 4 source addresses, at most 5,000 connections per harness
# process): RSS before the first connection and after the last is ready (+SETTLE, 3s by default), divided
# by N. Extra gateway arguments come from GW_ARGS, extra harness arguments from LT_ARGS
# (e.g. LT_ARGS="--connect-concurrency 20" to open them slowly); the gateway has no
# per-user maximum unless MAX_CONNECTIONS_PER_USER sets one (10 is the gateway's default,
# whose per-user counts cost memory too); the gateway inherits the
# environment (MIMALLOC_* options). Loopback only, bounded; needs a release build
# (cargo build --release -p coregate -p loadtest). Reports stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/idle-memory}
mkdir -p "$OUT"
. loadtest/lib.sh

read -r -a gw_args <<<"${GW_ARGS:-}"
read -r -a lt_args <<<"${LT_ARGS:-}"
for n in "${@:-5000 15000}"; do
  for encoding in ${ENCODINGS:-json msgpack}; do
    SHARDS=1 start_gateway "$OUT/$n-$encoding.gateway.log" "${gw_args[@]}"
    "$LT" idle --url "ws://$WS/ws" --secret $S -n "$n" --encoding "$encoding" \
      --max-per-process 5000 --source-addrs 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 \
      --settle "${SETTLE:-3s}" --duration 2s --gateway-pid "$GWPID" --json "$OUT/$n-$encoding.json" \
      "${lt_args[@]}" >"$OUT/$n-$encoding.log" 2>&1
    stop_gateway
    python3 - "$OUT/$n-$encoding.json" "$n" "$encoding" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2])
g, c = r["gateway"], r["connect"]
before, after = g["rss_before_bytes"], g["rss_after_bytes"]
anon = g.get("anon_bytes_per_connection")
print(f"{n:>6} {sys.argv[3]:<8} {c['connected']} connected at {c['rate_per_s']:>6.0f}/s  "
      f"RSS {before/2**20:.1f} -> {after/2**20:.1f} MiB  per connection {(after-before)/n:,.0f} B"
      + (f"  (anonymous {anon:,.0f} B)" if anon is not None else ""))
PY
  done
done
