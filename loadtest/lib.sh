# Shared by the loadtest/*.sh benchmark scripts: sourced, not run, from the repository's
# root. GW (the coregate binary) and LT (the harness) keep what the script or the
# environment set, otherwise the release builds; S is the JWT secret both sides use.
GW=${GW:-target/release/coregate}
LT=${LT:-target/release/loadtest}
S=loadtest-secret-0123456789

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a release gateway (--shards ${SHARDS:-2}, no per-user limit) with the extra arguments,
# logging to $1; sets GWPID, WS (ws address) and AD (admin address) once it listens.
start_gateway() {
  local log=$1; shift
  "$GW" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards "${SHARDS:-2}" --jwt-secret "$S" \
    --max-connections-per-user 0 "$@" >"$log" 2>&1 &
  GWPID=$!
  for _ in $(seq 200); do grep -q '^listening' "$log" && break; sleep 0.05; done
  WS=$(sed -n 's/^listening ws=\([^ ]*\) admin=.*/\1/p' "$log")
  AD=$(sed -n 's/^listening ws=[^ ]* admin=\([^ ]*\).*/\1/p' "$log")
}

stop_gateway() { kill -TERM "$GWPID"; wait "$GWPID" 2>/dev/null || true; }
