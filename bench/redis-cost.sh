#!/usr/bin/env bash
# bench/redis-cost.sh — what one gateway request costs Redis, per command.
#
# Starts a private redis-server (port 16479, nothing saved), nginx's
# `return 200` upstream and `portcullis serve` with the rate limiter on that
# Redis (one GCRA rule per IP, as config (d) of bench/gateway.sh, and the
# default anomaly detectors riding on the limiter's call), sends N requests
# with a valid token (hey, 16 connections), then prints Redis's own CPU per
# request (used_cpu_user + used_cpu_sys over the run) and its command
# statistics (calls and µs per call, the script's inner commands included).
# Redis CPU is counted by Redis itself, so the figure does not depend on how
# busy the machine is nor on how the gateway was built.
#
# Knobs: N=20000 PC_BIN=path/to/portcullis (default: target/release, else target/debug)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N=${N:-20000}
W="$ROOT/bench/.work/redis-cost"; rm -rf "$W"; mkdir -p "$W/keys" "$W/run" "$W/logs"
REDIS_PORT=16479; UP_PORT=18480; PC_PORT=18400; PC_OPS=18490
PC=${PC_BIN:-}
if [ -z "$PC" ]; then
  for p in "$ROOT/target/release/portcullis" "$ROOT/target/debug/portcullis"; do [ -x "$p" ] && { PC=$p; break; }; done
fi
[ -x "${PC:-}" ] || { echo "build portcullis first (or set PC_BIN)" >&2; exit 1; }
for t in hey nginx redis-server redis-cli; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || {
    [ "$(id -u)" = 0 ] || { echo "need root to install $t" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey nginx redis-server redis-tools >/dev/null; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { local i; for ((i = 0; i < 300; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no >"$W/logs/redis.log" 2>&1 &
pids+=($!)
cat >"$W/nginx.conf" <<NGINX
daemon off; worker_processes 1; pid $W/run/nginx.pid; error_log $W/logs/nginx-error.log;
events {}
http { access_log off; client_body_temp_path $W/run; proxy_temp_path $W/run;
  fastcgi_temp_path $W/run; uwsgi_temp_path $W/run; scgi_temp_path $W/run;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } } }
NGINX
nginx -p "$W/" -c "$W/nginx.conf" >"$W/logs/nginx.out" 2>&1 &
pids+=($!)

"$PC" keys generate --alg RS256 --kid bench --out "$W/keys" >/dev/null
"$PC" token issue --key "$W/keys/bench.pem" --sub user:bench --iss https://bench.example \
  --aud bench-api --ttl 1h >"$W/token"
head -c 32 /dev/urandom >"$W/keys/pepper"
cat >"$W/portcullis.toml" <<TOML
[server]
listen = "127.0.0.1:$PC_PORT"
ops_listen = "127.0.0.1:$PC_OPS"

[storage]
url = "sqlite://$W/run/stores.db"
pepper_file = "$W/keys/pepper"
redis = "redis://127.0.0.1:$REDIS_PORT"

[keys]
dir = "$W/keys"
issuer = "https://bench.example"
audience = ["bench-api"]

[log]
level = "warn"

[guard]
[[guard.rate_limits]]
name = "per_ip"
algorithm = "gcra"
rate = 10000000
period = 10
key = ["ip"]

[[guard.routes]]
name = "all"
path = "/**"
credentials = ["jwt"]
rate_limits = ["per_ip"]

[[upstreams]]
name = "app"
url = "http://127.0.0.1:$UP_PORT"
routes = ["all"]
TOML
wait_port $REDIS_PORT; wait_port $UP_PORT
"$PC" serve --config "$W/portcullis.toml" >"$W/logs/portcullis.log" 2>&1 &
pids+=($!)
wait_port $PC_PORT
url="http://127.0.0.1:$PC_PORT/api/data"
auth="Authorization: Bearer $(cat "$W/token")"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "$url")
[ "$code" = 200 ] || { echo "gateway answered $code" >&2; tail -5 "$W/logs/portcullis.log" >&2; exit 1; }
# Warm up, then count from a clean slate.
hey -n 2000 -c 16 -H "$auth" "$url" >/dev/null
rc() { redis-cli -p $REDIS_PORT "$@"; }
cpu() { rc INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'; }
rc CONFIG RESETSTAT >/dev/null
before=$(cpu)
hey -n "$N" -c 16 -H "$auth" "$url" >"$W/hey.txt"
after=$(cpu)
ok=$(grep -Eo '\[200\][[:space:]]+[0-9]+' "$W/hey.txt" | awk '{print $2}')
echo "portcullis: $PC ($(git -C "$ROOT" rev-parse --short HEAD))"
echo "requests: $N sent, ${ok:-0} answered 200"
awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN {printf "Redis CPU per request: %.1f µs\n", (a - b) * 1e6 / n}'
echo "command statistics (calls, µs per call):"
rc INFO commandstats | tr -d '\r' | grep '^cmdstat_' |
  sed -E 's/^cmdstat_([^:]+):calls=([0-9]+),usec=([0-9]+),usec_per_call=([0-9.]+).*/\1 \2 \4/' |
  awk -v n="$N" '{printf "  %-20s %8d calls (%.2f per request) %7.2f µs\n", $1, $2, $2 / n, $3}' | sort -k2 -nr
