#!/usr/bin/env bash
# Side-by-side gateway benchmark on this machine, in one run:
#   upstream      the small upstream itself (nginx answering a 5-byte body)
#   nginx         nginx as a plain reverse proxy in front of it
#   bare          a bare hyper proxy of Portcullis's transport shape and nothing else (the example
#                 crates/http/examples/bare_proxy.rs): what the transport costs on this machine, so
#                 the chain's own cost is the gap between it and `portcullis`
#   nginx+auth    nginx with limit_req and auth_request → Portcullis /v1/auth/check
#   portcullis    Portcullis proxying with the full chain (API key, RBAC, rate limit high
#                 enough not to reject, concurrency, quota, durable audit), audit.fsync off
#   portcullis+fsync   the same with audit.fsync = true
#   scaleout      the scale-out shape: three Portcullis instances of one deployment on one
#                 PostgreSQL (row-level security, audit acknowledged at the database commit) and one
#                 Redis (every limit decision a script round trip), the same chain and route.
#                 SCALEOUT_ACK=file acknowledges at each instance's own JSONL write instead
#                 (`audit.acknowledge = "file"`; PostgreSQL is then the query index)
#   scaleout1     one instance of that deployment loaded alone (the other two idle): its CPU per
#                 request against `portcullis`'s is the per-instance cost of the shape, without
#                 five processes fighting over two cores
# The same wrk load runs against each, variants interleaved, ROUNDS rounds, medians reported,
# with the ratio of each to nginx. Then one connection: added p50 latency over the upstream.
#
# The scale-out load is three wrk processes at once, one per instance, CONNS/3 connections each
# (their req/s summed, the worst p50/p99 of the three reported): wrk takes one URL, and a round-robin
# nginx in front would add its own hop and compete for the same cores as the instances. It is
# reported beside the others with its ratio to the embedded `portcullis` throughput. On one machine
# the three instances, PostgreSQL and Redis share the cores that one embedded instance has to itself,
# so that ratio is what the scale-out shape costs per core, not what three machines would serve.
# PostgreSQL: BENCH_PG_URL (a superuser URL; default the loopback server with trust auth when it
# answers, else a throwaway cluster); Redis: BENCH_REDIS_URL (default 127.0.0.1:6379 when it
# answers, else a throwaway server). The benchmark's database, roles and keys are removed at exit.
#
# Usage: bench/gateway.sh            (ROUNDS=3 DURATION=10s CONNS=64 by default)
#        ROUNDS=5 DURATION=20s CONNS=128 bench/gateway.sh
#        VARIANTS="nginx portcullis" C1=0 bench/gateway.sh   (a subset, no one-connection part)
#        VARIANTS="portcullis scaleout" C1=0 bench/gateway.sh
#        SCALEOUT_ACK=file VARIANTS="portcullis scaleout scaleout1" C1=0 bench/gateway.sh
# Besides throughput and latency it reports the CPU time the Portcullis process spent per
# request (user + system, from /proc): on a shared machine that moves far less than req/s.
# Needs: wrk, nginx (Debian packages; installed if missing and running as root), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}

for tool in wrk nginx; do
  if ! command -v "$tool" >/dev/null && ! [ -x "/usr/sbin/$tool" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    else
      echo "error: $tool is missing (apt-get install $tool)" >&2; exit 1
    fi
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building portcullis (release)…" >&2
cargo build --release -q -p portcullis
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/portcullis
BARE=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/bare_proxy

WORK=$(mktemp -d)
PIDS=()
drop_db() { :; }
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; drop_db; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; exit 1; }

UP=$(free_port); NG=$(free_port); NGA=$(free_port); PC=$(free_port); PCF=$(free_port); BP=$(free_port)
read -r -a VARIANTS <<<"${VARIANTS:-upstream nginx bare nginx+auth portcullis portcullis+fsync scaleout scaleout1}"
wants() { local v; for v in "${VARIANTS[@]}"; do [ "$v" = "$1" ] && return 0; done; return 1; }
if wants bare; then
  cargo build --release -q -p portcullis-http --example bare_proxy
  "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" > "$WORK/bare.log" 2>&1 &
  PIDS+=($!)
  echo $! > "$WORK/bare.pid"
fi

# --- Portcullis, fsync off and on -----------------------------------------------------------
start_portcullis() { # name port fsync
  local dir=$WORK/$1
  mkdir -p "$dir"
  cat > "$dir/portcullis.toml" <<TOML
listen = "127.0.0.1:$2"
data_dir = "$dir/data"
[log]
level = "warn"
[audit]
fsync = $3
[limits]
principal_per_minute = 10000000
[[routes]]
prefix = "/up"
upstream = "http://127.0.0.1:$UP"
action = "conversation.send"
TOML
  "$BIN" --config "$dir/portcullis.toml" serve > "$dir/stdout" 2> "$dir/stderr" &
  PIDS+=($!)
  echo $! > "$dir/pid"
  wait_port "$2"
  local tenant key
  tenant=$("$BIN" --config "$dir/portcullis.toml" --json tenant create bench --tier enterprise | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  "$BIN" --config "$dir/portcullis.toml" tenant limits "$tenant" --rate-per-minute 10000000 --requests-per-day 100000000000 --concurrency 100000 > /dev/null
  key=$("$BIN" --config "$dir/portcullis.toml" key create --tenant "$tenant" --role service --name bench)
  echo "$key" > "$dir/key"
}
start_portcullis pc "$PC" false
start_portcullis pcf "$PCF" true
KEY=$(cat "$WORK/pc/key"); KEYF=$(cat "$WORK/pcf/key")

# --- the scale-out shape: three instances on PostgreSQL + Redis ---------------------------------
SO_PORTS=()
if wants scaleout || wants scaleout1; then
  BENCH_PG_URL=${BENCH_PG_URL:-}
  if [ -z "$BENCH_PG_URL" ]; then
    if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
      BENCH_PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
    else
      PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
      [ -n "$PG_BIN" ] || { echo "error: scaleout needs PostgreSQL (apt-get install postgresql, or set BENCH_PG_URL)" >&2; exit 1; }
      PGP=$(free_port); mkdir -p "$WORK/pg"; RUN=()
      if [ "$(id -u)" -eq 0 ]; then chown postgres "$WORK/pg"; RUN=(runuser -u postgres --); fi
      "${RUN[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
      "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$PGP -c unix_socket_directories=$WORK/pg -c max_connections=200" start >/dev/null
      PG_STOP=("${RUN[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop)
      BENCH_PG_URL="postgres://postgres@127.0.0.1:$PGP/postgres"
    fi
  fi
  BENCH_REDIS_URL=${BENCH_REDIS_URL:-}
  if [ -z "$BENCH_REDIS_URL" ]; then
    if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
      BENCH_REDIS_URL="redis://127.0.0.1:6379"
    else
      RP=$(free_port)
      redis-server --bind 127.0.0.1 --port "$RP" --save "" --appendonly no --dir "$WORK" >/dev/null &
      PIDS+=($!)
      wait_port "$RP"
      BENCH_REDIS_URL="redis://127.0.0.1:$RP"
    fi
  fi
  DB="pcbench_$$"
  PW_OWN=$(openssl rand -hex 16); PW_APP=$(openssl rand -hex 16)
  psql "$BENCH_PG_URL" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE ROLE ${DB}_owner LOGIN PASSWORD '$PW_OWN';
CREATE ROLE ${DB}_app LOGIN PASSWORD '$PW_APP';
CREATE DATABASE $DB OWNER ${DB}_owner;
SQL
  PG_HOST=${BENCH_PG_URL#*://}; PG_HOST=${PG_HOST#*@}; PG_HOST=${PG_HOST%%/*}
  drop_db() {
    psql "$BENCH_PG_URL" -q >/dev/null 2>&1 <<SQL
DROP DATABASE IF EXISTS $DB WITH (FORCE);
DROP ROLE IF EXISTS ${DB}_app;
DROP ROLE IF EXISTS ${DB}_owner;
SQL
    if [ -n "${PG_STOP:-}" ]; then "${PG_STOP[@]}" >/dev/null 2>&1 || true; fi
  }
  so_env=(
    PORTCULLIS_DATABASE_URL="postgres://${DB}_app:$PW_APP@$PG_HOST/$DB"
    PORTCULLIS_KEY_PEPPER="$(openssl rand -hex 32)"
    PORTCULLIS_MASTER_KEY="$(openssl rand -hex 32)"
    PORTCULLIS_AUDIT_SIGNING_KEY="$(openssl rand -hex 32)"
    PORTCULLIS_REDIS_URL="$BENCH_REDIS_URL"
    PORTCULLIS_REDIS__KEY_PREFIX="portcullis-bench:$$"
  )
  env "${so_env[@]}" PORTCULLIS_MIGRATION_DATABASE_URL="postgres://${DB}_owner:$PW_OWN@$PG_HOST/$DB" "$BIN" migrate >/dev/null
  mkdir -p "$WORK/so"
  cat > "$WORK/so/portcullis.toml" <<TOML
data_dir = "$WORK/so/data"
[log]
level = "warn"
[limits]
principal_per_minute = 10000000
[audit]
acknowledge = "${SCALEOUT_ACK:-database}"
[[routes]]
prefix = "/up"
upstream = "http://127.0.0.1:$UP"
action = "conversation.send"
TOML
  for i in 1 2 3; do
    port=$(free_port)
    env "${so_env[@]}" PORTCULLIS_LISTEN="127.0.0.1:$port" "$BIN" --config "$WORK/so/portcullis.toml" serve \
      > "$WORK/so/stdout-$i" 2> "$WORK/so/stderr-$i" &
    PIDS+=($!)
    echo $! > "$WORK/so/pid-$i"
    wait_port "$port"
    SO_PORTS+=("$port")
  done
  so_cli() { env "${so_env[@]}" "$BIN" --config "$WORK/so/portcullis.toml" "$@"; }
  tenant=$(so_cli --json tenant create bench --tier enterprise | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  so_cli tenant limits "$tenant" --rate-per-minute 10000000 --requests-per-day 100000000000 --concurrency 100000 > /dev/null
  KEYS=$(so_cli key create --tenant "$tenant" --role service --name bench)
fi
sleep 1.5   # let the change feed carry the raised limits

# --- nginx: upstream, plain proxy, proxy with limit_req + auth_request ----------------------
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
error_log $WORK/nginx-error.log warn;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy; fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  upstream portcullis { server 127.0.0.1:$PC; keepalive 256; }
  limit_req_zone \$binary_remote_addr zone=bench:10m rate=1000000r/s;
  server { listen 127.0.0.1:$UP; location / { default_type text/plain; return 200 "hello"; } }
  server {
    listen 127.0.0.1:$NG;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://up; }
  }
  server {
    listen 127.0.0.1:$NGA;
    location / {
      limit_req zone=bench burst=1000000 nodelay;
      auth_request /_check;
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://up;
    }
    location = /_check {
      internal;
      proxy_pass http://portcullis/v1/auth/check;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri; proxy_set_header X-Original-Method \$request_method;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
}
NGINX
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' 2>>"$WORK/nginx-error.log" &
PIDS+=($!)
wait_port "$UP"; wait_port "$NG"; wait_port "$NGA"
if wants bare; then
  wait_port "$BP"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$BP/")" = 200 ] || { echo "bare proxy sanity check failed" >&2; exit 1; }
fi

# Sanity: every variant answers 200 before measuring.
for url in "http://127.0.0.1:$UP/" "http://127.0.0.1:$NG/" ; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] || { echo "sanity check failed: $url" >&2; exit 1; }
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEY" "http://127.0.0.1:$NGA/")" = 200 ] || { echo "nginx+auth sanity check failed" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEY" "http://127.0.0.1:$PC/up/")" = 200 ] || { echo "portcullis sanity check failed" >&2; cat "$WORK/pc/stderr" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEYF" "http://127.0.0.1:$PCF/up/")" = 200 ] || { echo "portcullis+fsync sanity check failed" >&2; exit 1; }
for port in "${SO_PORTS[@]}"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEYS" "http://127.0.0.1:$port/up/")" = 200 ] || { echo "scaleout sanity check failed on $port" >&2; cat "$WORK"/so/stderr-* >&2; exit 1; }
done

# --- measure --------------------------------------------------------------------------------
to_ms() { # wrk latency text (e.g. 812.00us, 1.20ms, 1.01s) → milliseconds
  python3 -c 'import re,sys; v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)$", v); f={"us":0.001,"ms":1,"s":1000}; print(float(m.group(1))*f[m.group(2)] if m else "nan")' "$1"
}
cpu_ticks() { # utime + stime of a process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
pid_of() { case $1 in portcullis) cat "$WORK/pc/pid";; portcullis+fsync) cat "$WORK/pcf/pid";; bare) cat "$WORK/bare.pid";; scaleout1) cat "$WORK/so/pid-1";; *) echo "";; esac; }
run_scaleout() { # conns duration: three wrk at once, one per instance
  local i p before=0 after=0 per=$(( ($1 + 2) / 3 )) loads=()
  for i in 1 2 3; do before=$((before + $(cpu_ticks "$(cat "$WORK/so/pid-$i")"))); done
  for i in 0 1 2; do
    wrk -t1 -c"$per" -d"$2" --latency -H "x-api-key: $KEYS" "http://127.0.0.1:${SO_PORTS[$i]}/up/" > "$WORK/so/wrk-$i" 2>&1 &
    loads+=($!)
  done
  for p in "${loads[@]}"; do wait "$p"; done
  for i in 1 2 3; do after=$((after + $(cpu_ticks "$(cat "$WORK/so/pid-$i")"))); done
  python3 - "$WORK/so" "$before" "$after" >> "$WORK/results" <<'PY'
import os, re, sys
d, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ms(v):
    m = re.match(r"([0-9.]+)(us|ms|s)$", v or "")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = total = errs = 0.0; p50 = p99 = 0.0
for i in range(3):
    out = open(f"{d}/wrk-{i}").read()
    rps += float(re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M).group(1))
    total += int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
    e = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs += int(e.group(1)) if e else 0
    p50 = max(p50, ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)))
    p99 = max(p99, ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)))
cpu = (after - before) / os.sysconf("SC_CLK_TCK") * 1e6 / total if total else float("nan")
print(f"scaleout {rps} {p50} {p99} {int(errs)} {cpu}")
PY
}
run() { # variant conns duration url [header]
  local out pid before=0 after=0
  pid=$(pid_of "$1")
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  if [ -n "${5:-}" ]; then
    out=$(wrk -t"$THREADS" -c"$2" -d"$3" --latency -H "$5" "$4" 2>&1)
  else
    out=$(wrk -t"$THREADS" -c"$2" -d"$3" --latency "$4" 2>&1)
  fi
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local rps p50 p99 errors total cpu_us=nan
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  if [ -n "$pid" ] && [ "${total:-0}" -gt 0 ]; then
    cpu_us=$(python3 -c "import os,sys; print((int(sys.argv[2])-int(sys.argv[1]))/os.sysconf('SC_CLK_TCK')*1e6/int(sys.argv[3]))" "$before" "$after" "$total")
  fi
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
  echo "$1 $rps $p50 $p99 ${errors:-0} $cpu_us" >> "$WORK/results"
}

url_of() { case $1 in
  upstream) echo "http://127.0.0.1:$UP/";; nginx) echo "http://127.0.0.1:$NG/";; bare) echo "http://127.0.0.1:$BP/";;
  nginx+auth) echo "http://127.0.0.1:$NGA/";; portcullis) echo "http://127.0.0.1:$PC/up/";;
  portcullis+fsync) echo "http://127.0.0.1:$PCF/up/";; scaleout1) echo "http://127.0.0.1:${SO_PORTS[0]}/up/";; esac; }
hdr_of() { case $1 in nginx+auth|portcullis) echo "x-api-key: $KEY";; portcullis+fsync) echo "x-api-key: $KEYF";; scaleout1) echo "x-api-key: $KEYS";; *) echo "";; esac; }

echo "load: wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, variants interleaved" >&2
for r in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    echo "  round $r: $v" >&2
    if [ "$v" = scaleout ]; then run_scaleout "$CONNS" "$DURATION"; continue; fi
    run "$v" "$CONNS" "$DURATION" "$(url_of "$v")" "$(hdr_of "$v")"
  done
done

# One connection: what Portcullis adds to the upstream's latency.
: > "$WORK/c1"
for r in $(seq 1 "$ROUNDS"); do
  [ "${C1:-1}" = 1 ] || break
  for v in upstream portcullis; do
    if [ "$v" = portcullis ]; then
      out=$(wrk -t1 -c1 -d5s --latency -H "x-api-key: $KEY" "$(url_of "$v")" 2>&1)
    else
      out=$(wrk -t1 -c1 -d5s --latency "$(url_of "$v")" 2>&1)
    fi
    echo "$v $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" >> "$WORK/c1"
  done
done

python3 - "$WORK/results" "$WORK/c1" "$CONNS" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for v, rps, p50, p99, errs, cpu in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(errs or 0), float(cpu)))
med = {v: (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs),
           statistics.median(x[2] for x in xs), sum(x[3] for x in xs), statistics.median(x[4] for x in xs))
       for v, xs in by.items()}
base = med["nginx"][0] if "nginx" in med else 0
print(f"\nGateway benchmark — wrk {sys.argv[3]} connections × {sys.argv[4]}, median of {sys.argv[5]} rounds")
print(f"{'variant':<18}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'× nginx':>10}{'non-2xx':>10}{'CPU µs/req':>12}")
for v in ["upstream", "nginx", "bare", "nginx+auth", "portcullis", "portcullis+fsync", "scaleout", "scaleout1"]:
    if v in med:
        rps, p50, p99, errs, cpu = med[v]
        ratio = f"{rps/base:>10.2f}" if base else f"{'-':>10}"
        cpu_text = f"{cpu:>12.1f}" if cpu == cpu else f"{'':>12}"
        print(f"{v:<18}{rps:>12.0f}{p50:>10.3f}{p99:>10.3f}{ratio}{errs:>10}{cpu_text}")
if "bare" in med and "portcullis" in med and med["bare"][0]:
    b, p = med["bare"], med["portcullis"]
    print(f"\nthe chain's own cost: portcullis serves {p[0]/b[0]:.2f}× the bare transport's throughput"
          + (f", {p[4]-b[4]:.1f} µs of CPU per request on top of its {b[4]:.1f}" if b[4] == b[4] and p[4] == p[4] else ""))
if "scaleout" in med and "portcullis" in med and med["portcullis"][0]:
    print(f"\nscaleout (3 instances, PostgreSQL + Redis, one machine): {med['scaleout'][0]/med['portcullis'][0]:.2f}× the embedded portcullis throughput")
for v in ("scaleout", "scaleout1"):
    if v in med and "portcullis" in med and med[v][4] == med[v][4] and med["portcullis"][4] == med["portcullis"][4]:
        print(f"{v}: per-instance CPU ratio (embedded CPU per request / the scale-out instance's) {med['portcullis'][4]/med[v][4]:.2f}")
c1 = {}
for l in open(sys.argv[2]):
    v, ms = l.split()
    c1.setdefault(v, []).append(float(ms))
if "upstream" in c1 and "portcullis" in c1:
    up, pc = statistics.median(c1["upstream"]), statistics.median(c1["portcullis"])
    print(f"\none connection: upstream p50 {up:.3f} ms, through portcullis {pc:.3f} ms, added {pc-up:.3f} ms")
PY
