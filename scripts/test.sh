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

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# RUST_TEST_THREADS, not `-- --test-threads`: the benchmark binaries (divan, run once as smoke
# tests under `cargo test`) do not accept libtest's flags.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --workspace --all-targets --locked
