#!/usr/bin/env bash
# The one test command (README): installs what the tests need from Debian packages when it is
# missing, then checks formatting and lints, runs every test of the workspace, and runs the
# integration suite again in the scale-out shape (PostgreSQL, then PostgreSQL + Redis).
#
# Tests start the real `portcullis` binary on loopback ports chosen by the OS, each on its own
# temporary data dir, so runs never collide with a server already running on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Throwaway servers started below register how to stop them here; run on any exit.
CLEANUPS=()
cleanup() {
  local c
  for c in "${CLEANUPS[@]}"; do eval "$c" || true; done
}
trap cleanup EXIT

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
# chromium + node/npm: the operator UI is walked in headless Chromium by playwright-core (from
# npm, pinned in crates/portcullis/tests/browser/package-lock.json; it never downloads a browser).
apt_install chromium
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
(cd crates/portcullis/tests/browser && npm ci --no-audit --no-fund --loglevel=error)

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
    CLEANUPS+=("kill \"\$(cat $REDIS_DIR/redis.pid 2>/dev/null)\" 2>/dev/null; rm -rf $REDIS_DIR")
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.1; done
    export PORTCULLIS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  fi
fi

# The fault tests (crates/portcullis/tests/integration/scaleout.rs) start servers of their own
# that they stop, hang and restart — never the shared ones: they need the redis-server binary
# and PostgreSQL's initdb/pg_ctl (owned by the `postgres` user when run as root).
command -v redis-server >/dev/null || apt_install redis-server
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
[ -n "$(pg_bin)" ] || apt_install postgresql
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
fi

# PostgreSQL for the scale-out store's tests: the server on the standard loopback port when it
# answers there as `postgres` without a password (trust), otherwise a throwaway cluster made with
# initdb on a free port in a temp dir (stopped on exit). Tests get a superuser URL in
# PORTCULLIS_TEST_PG_URL and make their own uniquely named databases and roles from it, dropping
# them when done, so runs never collide and a shared server is never disturbed.
if [ -z "${PORTCULLIS_TEST_PG_URL:-}" ]; then
  if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v psql >/dev/null \
    && psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    export PORTCULLIS_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    PG_BIN=$(pg_bin)
    PG_DIR=$(mktemp -d)
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    # initdb refuses to run as root: the cluster belongs to an unprivileged user then.
    PG_RUN=()
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres "$PG_DIR"
      PG_RUN=(runuser -u postgres --)
    fi
    "${PG_RUN[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
    "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR -c max_connections=200 -c fsync=off" start >/dev/null
    CLEANUPS+=("${PG_RUN[*]} $PG_BIN/pg_ctl -D $PG_DIR/data -m immediate stop >/dev/null; rm -rf $PG_DIR")
    export PORTCULLIS_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# RUST_TEST_THREADS, not `-- --test-threads`: the benchmark binaries (divan, run once as smoke
# tests under `cargo test`) do not accept libtest's flags.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --workspace --all-targets --locked
# The integration suite again in the scale-out shape (the same tests, parametrised by the
# harness): every server on its own PostgreSQL database, first with in-process limits, then with
# its limits in Redis — the shape of a real multi-instance deployment.
PORTCULLIS_TEST_SHAPE=postgres RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" \
  cargo test -p portcullis --test integration --locked
PORTCULLIS_TEST_SHAPE=postgres PORTCULLIS_TEST_LIMITS=redis RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" \
  cargo test -p portcullis --test integration --locked
