#!/usr/bin/env bash
# Runs every test of the project, on a fresh machine, from any directory:
#   ./test.sh                 install what is missing, then run every suite
#   ./test.sh --install-only  install what is missing, run nothing (.ci/run, before its lints)
# README.md's "Test it" names this command; CI runs it through .ci/run, after the lints.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { echo "test.sh: $*" >&2; }

install_only=false
case "${1:-}" in
  "") ;;
  --install-only) install_only=true ;;
  *) log "unknown argument \`$1\` (usage: ./test.sh [--install-only])"; exit 2 ;;
esac

# ---- What a fresh machine lacks ------------------------------------------------------

# sudo only when not root; without a terminal (CI) it must not wait for a password.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif [ -t 0 ]; then
    sudo "$@"
  else
    sudo -n "$@"
  fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get here: install $* with this system's package manager, then rerun"
    exit 1
  fi
  log "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is missing: install the Rust toolchain (https://rustup.rs), then rerun"
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 ||
    log "could not add the rustfmt and clippy components (offline?); continuing"
fi
# The end-to-end tests (tests/, loadtest's smoke tests) start private redis-servers.
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
# The voice tests with aiortc (an independent WebRTC stack) need Python 3.10+ and pip.
if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3 python3-pip
fi
if ! python3 -c 'import aiortc, websockets' >/dev/null 2>&1; then
  log "installing aiortc and websockets with pip"
  python3 -m pip install --quiet aiortc websockets ||
    python3 -m pip install --quiet --break-system-packages aiortc websockets
fi
# The client SDK (clients/js): Node.js with npm, its packages, and Chromium for its browser test.
if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install npm # NodeSource's nodejs brings npm; Debian's does not
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  log "Node.js $(node --version) is too old for clients/js (it needs 20 or later): install a newer one, then rerun"
  exit 1
fi
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM_BIN:-}" ]; then
  apt_install chromium
fi
if [ ! -d clients/js/node_modules ] || [ clients/js/package-lock.json -nt clients/js/node_modules/.package-lock.json ]; then
  log "installing clients/js's packages (npm ci)"
  (cd clients/js && npm ci --no-audit --no-fund)
fi

if "$install_only"; then
  exit 0
fi

# ---- Every suite ---------------------------------------------------------------------

log "suite: Rust (cargo test --workspace: unit, end-to-end and load-harness smoke tests)"
cargo test --workspace

log "suite: voice with aiortc (Python, real WebRTC peers over loopback UDP)"
cargo build -p coregate
COREGATE_BIN="$PWD/target/debug/coregate" python3 -m unittest discover -s tests/voice_aiortc -v

# The TypeScript client SDK against this build's gateway, real redis-servers and Chromium.
log "suite: client SDK (clients/js: build, types, unit, end-to-end, browser)"
cargo build -p coregate
export COREGATE_BIN="$PWD/target/debug/coregate"
(
  cd clients/js
  npm run build
  npm run typecheck
  npm run test:unit
  npm run test:e2e
  npm run test:browser
)

log "every suite passed"
