#!/usr/bin/env bash
# bench/gateway.sh — the gateway against its peers, side by side, in one run.
#
# Method and peer configs are those of ../shared/peers/gateway (see its README):
# every server-side process (proxy and the nginx `return 200` upstream, and the
# private Redis / PostgreSQL of config (d)) pinned to core 0, `wrk -t1 -c32`
# pinned to core 1, a warm-up per config, medians of RUNS runs, CPU time of
# the server side per request, runs disturbed by other load discarded
# (the peer's bench/measure.py does the run and the accounting).
#
# Configs (CONFIGS="..." picks a subset):
#   upstream        nginx return 200 — the app alone
#   nginx-proxy     nginx plain reverse proxy (the peer's conf)
#   haproxy-rs256   HAProxy jwt_verify RS256 + stick table + httplog (the peer's conf)
#   pc-proxy        (a) Portcullis, proxy only (anonymous route, no audit)
#   pc-proxy-h2c    (a) with HTTP/2 to the upstream (protocol = "h2c"; nginx's
#                   plaintext `http2` listener on 18082, prior knowledge):
#                   what h2c costs per request against http1. Clients still
#                   speak HTTP/1.1 (wrk)
#   pc-rs256        (b) RS256 verified on every request + memory rate limit + audit to SQLite
#   pc-cached       (c) as (b) with the verified-token cache
#   pc-redis-pg     (d) as (b) with rate limits on Redis and storage + audit on PostgreSQL
#   pc-redis-pg-lease (d) with `lease = 64` on its rate rule: a replica takes up
#                   to 64 tokens per Redis call (docs/ratelimit.md, Leases)
#   hyper-floor     a bare hyper 1 / hyper-util proxy on the gateway's stack and settings
#                   (examples/hyper_floor.rs): what (a) would cost with none of our work
# Then, for pc-rs256: p99 added over the upstream at half its peak rate (hey -q),
# and resident memory with 1,000 idle keep-alive connections.
#
# Knobs: RUNS=3 DURATION=12 CONNS=32 WARMUP=3 CONFIGS=... PEERS=../shared/peers/gateway
#        PC_BIN=path/to/portcullis (bench that binary instead of building this tree)
#        AUDIT_EXTRA='batch_size = 100' (more [audit] keys for the audited configs)
# Output: bench/results/gateway-<timestamp>/ (table.md, raw.jsonl, extra.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers/gateway}"
RUNS=${RUNS:-3}; DURATION=${DURATION:-12}; CONNS=${CONNS:-32}; WARMUP=${WARMUP:-3}
CONFIGS=${CONFIGS:-"upstream nginx-proxy haproxy-rs256 hyper-floor pc-proxy pc-rs256 pc-cached pc-redis-pg pc-redis-pg-lease"}
W="$ROOT/bench/.work/gateway"; OUT="$ROOT/bench/results/gateway-$(date +%Y%m%d-%H%M%S)"
REDIS_PORT=16379; PG_PORT=15432; PC_PORT=18100; PC_OPS=18190; FLOOR_PORT=18110
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

[ -f "$PEERS/bench/measure.py" ] || { echo "peer method not found at $PEERS (set PEERS=)" >&2; exit 2; }

# --- tools ------------------------------------------------------------------
need=()
for pair in nginx:nginx haproxy:haproxy wrk:wrk hey:hey taskset:util-linux setpriv:util-linux openssl:openssl curl:curl redis-server:redis-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "need root to apt-get install ${need[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "${PC_BIN:-}" ]; then
  PC="$PC_BIN"    # a binary built elsewhere (e.g. the commit before a change)
else
  cargo build --release -q -p portcullis-gateway --manifest-path "$ROOT/Cargo.toml"
  PC="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
fi
FLOOR="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor"
case " $CONFIGS " in *" hyper-floor "*)
  cargo build --release -q -p portcullis-gateway --example hyper_floor --manifest-path "$ROOT/Cargo.toml" ;;
esac

rm -rf "$W"; mkdir -p "$W"/{run,logs,keys,conf,pids} "$OUT"
cp "$PEERS"/conf/nginx-upstream.conf "$PEERS"/conf/nginx-proxy.conf "$PEERS"/conf/haproxy-rs256.cfg "$W/conf/"
# The same upstream over h2c for pc-proxy-h2c: nginx (1.22: no `http2 on;`)
# speaks HTTP/2 with prior knowledge on a plaintext `listen ... http2`.
sed -i 's|^\( *\)listen 127.0.0.1:18080 backlog=4096;|&\n\1listen 127.0.0.1:18082 http2 backlog=4096;|' "$W/conf/nginx-upstream.conf"
grep -q 18082 "$W/conf/nginx-upstream.conf" || { echo "could not add the h2c listener to nginx-upstream.conf" >&2; exit 2; }

# --- keys and the token (claims as the peer's: iss lockwatch, aud lockwatch-api, type access)
"$PC" keys generate --alg RS256 --kid bench --out "$W/keys" >/dev/null
openssl pkey -in "$W/keys/bench.pem" -pubout -out "$W/keys/rs256_pub.pem" 2>/dev/null
"$PC" token issue --key "$W/keys/bench.pem" --sub user:bench --iss https://lockwatch.example \
  --aud lockwatch-api --ttl 4h >"$W/keys/pc.jwt"
head -c 32 /dev/urandom >"$W/keys/pepper"
# HAProxy checks iss=lockwatch and type=access as the peer does (issued access tokens carry type=access).
"$PC" token issue --key "$W/keys/bench.pem" --sub user:bench --iss lockwatch --aud lockwatch-api \
  --ttl 4h >"$W/keys/haproxy.jwt"

pc_config() {  # name -> writes $W/conf/<name>.toml
  local name=$1 storage="url = \"memory\"" audit="" limits="" route_limits="" creds='["jwt"]' cache=""
  local upstream='url = "http://127.0.0.1:18080"'
  case $name in
    pc-proxy) creds='["anonymous"]' ;;
    pc-proxy-h2c) creds='["anonymous"]'
      upstream='url = "http://127.0.0.1:18082"
protocol = "h2c"' ;;
    pc-rs256|pc-cached|pc-redis-pg|pc-redis-pg-lease)
      storage="url = \"sqlite://$W/run/$name-stores.db\"
pepper_file = \"$W/keys/pepper\""
      audit="[audit]
sqlite = \"$W/run/$name-audit.db\"
${AUDIT_EXTRA:-}"
      limits='[[guard.rate_limits]]
name = "per_ip"
algorithm = "gcra"
rate = 10000000
period = 10
key = ["ip"]'
      [ "$name" = pc-redis-pg-lease ] && limits="$limits
lease = 64"
      route_limits='rate_limits = ["per_ip"]' ;;
  esac
  # (b) and (d) check the signature on every request; (c) keeps the default cache.
  case $name in pc-rs256|pc-redis-pg|pc-redis-pg-lease) cache="token_cache_entries = 0" ;; esac
  if [ "$name" = pc-redis-pg ] || [ "$name" = pc-redis-pg-lease ]; then
    storage="url = \"postgres://postgres@127.0.0.1:$PG_PORT/portcullis_bench\"
pepper_file = \"$W/keys/pepper\"
redis = \"redis://127.0.0.1:$REDIS_PORT\""
    audit="[audit]
postgres = \"postgres://postgres@127.0.0.1:$PG_PORT/portcullis_bench\"
spool_dir = \"$W/run/pg.spool\""
  fi
  cat >"$W/conf/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$PC_PORT"
ops_listen = "127.0.0.1:$PC_OPS"

[storage]
$storage

[keys]
dir = "$W/keys"
issuer = "https://lockwatch.example"
audience = ["lockwatch-api"]
$cache

$audit

[log]
level = "warn"

[guard]
$limits

[[guard.routes]]
name = "all"
path = "/**"
credentials = $creds
$route_limits

[[upstreams]]
name = "app"
$upstream
routes = ["all"]
TOML
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { local i; for ((i = 0; i < 300; i++)); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
PINNED=(taskset -c 0)
start() {  # name
  local name=$1 pid port
  case $name in
    upstream|nginx-proxy)
      local conf=nginx-upstream; port=18080
      [ "$name" = nginx-proxy ] && { conf=nginx-proxy; port=18081; }
      mkdir -p "$W/run/$conf-tmp"
      ( cd "$W" && exec "${PINNED[@]}" nginx -p "$W/" -e "logs/$conf-error.log" -c "$W/conf/$conf.conf" ) >>"$W/logs/$conf.out" 2>&1 &
      pid=$! ;;
    haproxy-rs256)
      port=18083
      ( cd "$W" && exec "${PINNED[@]}" haproxy -db -f conf/haproxy-rs256.cfg ) >"$W/logs/haproxy.log" 2>&1 &
      pid=$! ;;
    redis)
      port=$REDIS_PORT
      ( cd "$W/run" && exec "${PINNED[@]}" redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no ) >>"$W/logs/redis.log" 2>&1 &
      pid=$! ;;
    postgres)
      port=$PG_PORT
      local PGD="$W/run/pgdata"
      rm -rf "$PGD"; mkdir -p "$PGD"; chown postgres: "$PGD"; chmod 700 "$PGD"
      setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/initdb" -D "$PGD" -U postgres --auth=trust -E UTF8 --no-instructions >>"$W/logs/initdb.log" 2>&1
      ( cd / && exec "${PINNED[@]}" setpriv --reuid=postgres --regid=postgres --init-groups \
          "$PGBIN/postgres" -D "$PGD" -c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories= ) >>"$W/logs/postgres.log" 2>&1 &
      pid=$!
      local i; for ((i = 0; i < 300; i++)); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PG_PORT && break; sleep 0.1; done
      psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -c "CREATE DATABASE portcullis_bench" ;;
    hyper-floor)
      port=$FLOOR_PORT
      ( exec "${PINNED[@]}" "$FLOOR" "127.0.0.1:$FLOOR_PORT" 127.0.0.1:18080 ) >"$W/logs/$name.log" 2>&1 &
      pid=$! ;;
    pc-*)
      port=$PC_PORT
      pc_config "$name"
      ( exec "${PINNED[@]}" "$PC" serve --config "$W/conf/$name.toml" ) >"$W/logs/$name.log" 2>&1 &
      pid=$! ;;
  esac
  echo "$pid" >"$W/pids/$name"
  wait_port "$port" || { cat "$W/logs/$name.log" 2>/dev/null | tail -5 >&2; return 1; }
}
stop() { local f="$W/pids/$1" pid; [ -f "$f" ] || return 0; pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
  local i; for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$f"; }
stop_all() { local f; for f in "$W"/pids/*; do [ -e "$f" ] && stop "$(basename "$f")"; done; return 0; }
trap stop_all EXIT
trap 'exit 130' INT TERM

servers() { case $1 in upstream) echo upstream;; pc-redis-pg|pc-redis-pg-lease) echo upstream redis postgres "$1";; *) echo upstream "$1";; esac; }
port_of() { case $1 in upstream) echo 18080;; nginx-proxy) echo 18081;; haproxy-rs256) echo 18083;; hyper-floor) echo $FLOOR_PORT;; *) echo $PC_PORT;; esac; }
token_of() { case $1 in haproxy-rs256) echo "$W/keys/haproxy.jwt";; *) echo "$W/keys/pc.jwt";; esac; }

{
  echo "date: $(date -u +%FT%TZ)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)"; echo "haproxy: $(haproxy -v | head -1)"; echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "portcullis: $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "settings: RUNS=$RUNS DURATION=${DURATION}s CONNS=$CONNS WARMUP=${WARMUP}s; servers on core 0, wrk on core 1"
} | tee "$OUT/versions.txt"

for cfg in $CONFIGS; do
  for s in $(servers "$cfg"); do start "$s"; done
  url="http://127.0.0.1:$(port_of "$cfg")/api/data"; tok=$(token_of "$cfg")
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$tok")" "$url")
  none=$(curl -s -o /dev/null -w '%{http_code}' "$url")
  echo "$cfg: valid=$code none=$none" | tee -a "$OUT/sanity.txt"
  if [ "$code" != 200 ]; then echo "!! $cfg failed its functional check; skipped" | tee -a "$OUT/sanity.txt"; stop_all; continue; fi
  procs=(); for s in $(servers "$cfg"); do procs+=(--proc "$s=$(cat "$W/pids/$s")"); done
  common=(--config "$cfg" --mode pinned --url "$url" --token-file "$tok" --conns "$CONNS" --threads 1
          --wrk-cpus 1 --lua "$PEERS/bench/report.lua" --out "$OUT/raw.jsonl" "${procs[@]}")
  python3 "$PEERS/bench/measure.py" "${common[@]}" --run 0 --duration "$WARMUP"
  for ((i = 1; i <= RUNS; i++)); do python3 "$PEERS/bench/measure.py" "${common[@]}" --run "$i" --duration "$DURATION"; done
  if [ "$cfg" = pc-rs256 ]; then
    # Latency added at half the peak rate: hey at a fixed rate, against the
    # upstream alone and through the gateway, pinned like wrk.
    peak=$(python3 - "$OUT/raw.jsonl" <<'PY'
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
r = [x for x in r if x.get("config") == "pc-rs256" and not x.get("discarded")]
print(int(statistics.median(x["rps"] for x in r)) if r else 0)
PY
)
    if [ "$peak" -gt 0 ]; then
      per=$(( peak / 2 / CONNS )); [ "$per" -ge 1 ] || per=1
      for target in upstream pc-rs256; do
        u="http://127.0.0.1:$(port_of "$target")/api/data"
        taskset -c 1 hey -z 10s -c "$CONNS" -q "$per" -H "Authorization: Bearer $(cat "$W/keys/pc.jwt")" "$u" >"$OUT/hey-$target.txt"
      done
      p99_up=$(awk '/99% in/{print $3}' "$OUT/hey-upstream.txt"); p99_pc=$(awk '/99% in/{print $3}' "$OUT/hey-pc-rs256.txt")
      echo "p99 at half peak ($((per * CONNS)) req/s): upstream ${p99_up}s, through pc-rs256 ${p99_pc}s, added $(python3 -c "print(f'{($p99_pc-$p99_up)*1000:.3f} ms')")" | tee -a "$OUT/extra.md"
    fi
    # Resident memory with 1,000 idle keep-alive connections.
    rss=$(python3 - "$PC_PORT" "$(cat "$W/pids/pc-rs256")" "$(cat "$W/keys/pc.jwt")" <<'PY'
import socket, sys, time
port, pid, tok = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) // 1024
before = rss()
socks = []
req = f"GET /api/data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n".encode()
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(req); s.recv(65536); socks.append(s)
time.sleep(1)
print(f"{before} MB before, {rss()} MB with {len(socks)} idle keep-alive connections")
PY
)
    echo "resident memory (pc-rs256): $rss" | tee -a "$OUT/extra.md"
  fi
  stop_all
done

python3 "$PEERS/bench/summarize.py" "$OUT" | tee "$OUT/table.md"
[ -f "$OUT/extra.md" ] && cat "$OUT/extra.md" >>"$OUT/table.md"
echo "results: $OUT/"
