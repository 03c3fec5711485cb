#!/usr/bin/env bash
# The one test command (README): installs what the tests need from Debian packages when it is
# missing, then checks formatting and lints and runs every test of the workspace.
#
# Tests start the real `portcullis` binary on loopback ports chosen by the OS, each on its own
# temporary data dir, so runs never collide with a server already running on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
# openssl: the JWT tests generate RSA and Ed25519 key pairs with it.
# nginx: the auth_request integration test runs the configuration of docs/nginx.md.
# prometheus: its promtool checks the /metrics output.
apt_install openssl nginx prometheus

# Redis for the limiter's conformance tests: the server on the standard loopback port when one
# answers there, otherwise a throwaway one on a free port in a temp dir (stopped on exit). Each
# test run uses its own key prefix, so a shared server is never disturbed.
if [ -z "${PORTCULLIS_TEST_REDIS_URL:-}" ]; then
  if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    export PORTCULLIS_TEST_REDIS_URL="redis://127.0.0.1:6379"
  else
    command -v redis-server >/dev/null || apt_install redis-server
    REDIS_DIR=$(mktemp -d)
    REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$REDIS_DIR" --daemonize yes \
      --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
    trap 'kill "$(cat "$REDIS_DIR/redis.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$REDIS_DIR"' EXIT
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.1; done
    export PORTCULLIS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# RUST_TEST_THREADS, not `-- --test-threads`: the benchmark binaries (divan, run once as smoke
# tests under `cargo test`) do not accept libtest's flags.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --workspace --all-targets --locked
