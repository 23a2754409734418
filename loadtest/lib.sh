# Shared by the loadtest/*.sh benchmark scripts: sourced, not run, from the repository's
# root. GW (the coregate binary), LT (the harness) and FLOOR (the floor program) keep what
# the script or the environment set, otherwise the release builds; S is the JWT secret
# both sides use.
GW=${GW:-target/release/coregate}
LT=${LT:-target/release/loadtest}
FLOOR=${FLOOR:-target/release/floor}
S=loadtest-secret-0123456789

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a release gateway (--shards ${SHARDS:-2}, no per-user limit unless
# MAX_CONNECTIONS_PER_USER sets one) with the extra arguments, logging to $1; sets GWPID,
# WS (ws address) and AD (admin address) once it listens.
start_gateway() {
  local log=$1; shift
  spawn_server "$log" "$GW" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --shards "${SHARDS:-2}" --jwt-secret "$S" \
    --max-connections-per-user "${MAX_CONNECTIONS_PER_USER:-0}" "$@"
}

# Runs the server command (the rest of the arguments) in the background, logging to $1,
# on the CPUs SERVER_CPUS lists (a taskset list) when it is set; sets GWPID, and WS and
# AD once the server printed `listening ws=.. admin=..`.
spawn_server() {
  local log=$1; shift
  ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$@" >"$log" 2>&1 &
  GWPID=$!
  for _ in $(seq 200); do grep -q '^listening' "$log" && break; sleep 0.05; done
  WS=$(sed -n 's/^listening ws=\([^ ]*\) admin=.*/\1/p' "$log")
  AD=$(sed -n 's/^listening ws=[^ ]* admin=\([^ ]*\).*/\1/p' "$log")
}

stop_gateway() { kill -TERM "$GWPID"; wait "$GWPID" 2>/dev/null || true; }

# Starts the server SERVER names, logging to $1, with the extra arguments: `coregate`
# (default; the gateway with --shards ${SHARDS:-2}) or `floor` (loadtest/src/bin/floor.rs:
# one plain write loop, the same frames). Either way sets GWPID, WS and AD; stop it with
# stop_gateway.
start_server() {
  case ${SERVER:-coregate} in
    coregate) start_gateway "$@" ;;
    floor) spawn_server "$1" "$FLOOR" "${@:2}" ;;
    *) echo "SERVER is coregate or floor, not $SERVER" >&2; return 2 ;;
  esac
}

# User and system CPU seconds (two numbers) of process $1 so far, its threads included.
cpu_of() { awk '{ printf "%.2f %.2f\n", $14 / 100, $15 / 100 }' "/proc/$1/stat"; }
