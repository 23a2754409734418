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
# Future suites install what they need here (e.g. Node.js and Chromium).

if "$install_only"; then
  exit 0
fi

# ---- Every suite ---------------------------------------------------------------------

log "suite: Rust (cargo test --workspace: unit, end-to-end and load-harness smoke tests)"
cargo test --workspace

log "suite: voice with aiortc (Python, real WebRTC peers over loopback UDP)"
cargo build -p coregate
COREGATE_BIN="$PWD/target/debug/coregate" python3 -m unittest discover -s tests/voice_aiortc -v

# Further suites go here, one block each, once they exist:
#   - the TypeScript client SDK (clients/js) against a real gateway and Chromium.

log "every suite passed"
