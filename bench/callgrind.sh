#!/usr/bin/env bash
# bench/callgrind.sh — instructions per request, gateway against the bare
# hyper proxy, counted by valgrind (callgrind): the same binary and inputs
# give the same count whatever else the machine is doing, so a change to the
# request path shows as a change in this number even on a busy machine,
# where wall-clock benches (bench/gateway.sh) cannot tell 5 % apart.
#
# For each target it starts nginx's `return 200` upstream, the target under
# `valgrind --tool=callgrind` (instrumentation off until the warm-up is
# done), sends WARM requests, zeroes the counters, sends N requests (hey, 4
# connections, keep-alive), dumps, and prints instructions per request and
# the top functions (inclusive) of the measured part.
#
# Targets (TARGETS="..."):
#   hyper-floor   examples/hyper_floor.rs (build: cargo build --release --example hyper_floor -p portcullis-gateway)
#   pc-proxy      (a) portcullis, anonymous route, no audit (bench/gateway.sh's pc-proxy)
#   pc-rs256      (b) RS256 on every request, memory rate limit, SQLite audit
#
# Knobs: N=2000 WARM=300 TARGETS="hyper-floor pc-proxy" PC_BIN=... FLOOR_BIN=... TOP=25
# Output: bench/results/callgrind-<timestamp>/ (summary.md, <target>.out, <target>.top.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N=${N:-2000}; WARM=${WARM:-300}; TOP=${TOP:-25}
TARGETS=${TARGETS:-"hyper-floor pc-proxy"}
W="$ROOT/bench/.work/callgrind"; OUT="$ROOT/bench/results/callgrind-$(date +%Y%m%d-%H%M%S)"
rm -rf "$W"; mkdir -p "$W/keys" "$W/run" "$W/logs" "$OUT"
UP_PORT=18580; PORT=18500; OPS=18590
PC=${PC_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis}
FLOOR=${FLOOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor}
for t in valgrind hey nginx; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || {
    [ "$(id -u)" = 0 ] || { echo "need root to install $t" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind hey nginx >/dev/null; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { local i; for ((i = 0; i < 600; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

cat >"$W/nginx.conf" <<NGINX
daemon off; worker_processes 1; pid $W/run/nginx.pid; error_log $W/logs/nginx-error.log;
events {}
http { access_log off; client_body_temp_path $W/run; proxy_temp_path $W/run;
  fastcgi_temp_path $W/run; uwsgi_temp_path $W/run; scgi_temp_path $W/run;
  server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000;
    location / { return 200 "ok\n"; } } }
NGINX
nginx -p "$W/" -c "$W/nginx.conf" >"$W/logs/nginx.out" 2>&1 &
pids+=($!)
wait_port $UP_PORT

"$PC" keys generate --alg RS256 --kid bench --out "$W/keys" >/dev/null
"$PC" token issue --key "$W/keys/bench.pem" --sub user:bench --iss https://bench.example \
  --aud bench-api --ttl 1h >"$W/token"
head -c 32 /dev/urandom >"$W/keys/pepper"

pc_config() {  # name -> $W/<name>.toml
  local name=$1 creds='["anonymous"]' extra="" limits="" route_limits=""
  if [ "$name" = pc-rs256 ]; then
    creds='["jwt"]'
    extra="token_cache_entries = 0"
    limits='[[guard.rate_limits]]
name = "per_ip"
algorithm = "gcra"
rate = 10000000
period = 10
key = ["ip"]'
    route_limits='rate_limits = ["per_ip"]'
  fi
  cat >"$W/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
ops_listen = "127.0.0.1:$OPS"

[storage]
url = "sqlite://$W/run/$name-stores.db"
pepper_file = "$W/keys/pepper"

[keys]
dir = "$W/keys"
issuer = "https://bench.example"
audience = ["bench-api"]
$extra

$( [ "$name" = pc-rs256 ] && printf '[audit]\nsqlite = "%s"\n' "$W/run/$name-audit.db" )

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
url = "http://127.0.0.1:$UP_PORT"
routes = ["all"]
TOML
}

{
  echo "date: $(date -u +%FT%TZ)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "portcullis: $(git -C "$ROOT" rev-parse --short HEAD) ($PC)"; echo "valgrind: $(valgrind --version)"
  echo "requests: N=$N after WARM=$WARM, hey -c 4, keep-alive"
  echo
  echo "| target | instructions per request |"
  echo "|---|---:|"
} >"$OUT/summary.md"

for target in $TARGETS; do
  out="$W/$target.callgrind"
  vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" --dump-instr=no)
  case $target in
    hyper-floor) "${vg[@]}" "$FLOOR" "127.0.0.1:$PORT" "127.0.0.1:$UP_PORT" >"$W/logs/$target.log" 2>&1 & ;;
    pc-*) pc_config "$target"; "${vg[@]}" "$PC" serve --config "$W/$target.toml" >"$W/logs/$target.log" 2>&1 & ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  pid=$!; pids+=($pid)
  wait_port $PORT
  auth=(); [ "$target" = pc-rs256 ] && auth=(-H "Authorization: Bearer $(cat "$W/token")")
  hey -n "$WARM" -c 4 "${auth[@]}" "http://127.0.0.1:$PORT/api/data" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null 2>&1
  hey -n "$N" -c 4 "${auth[@]}" "http://127.0.0.1:$PORT/api/data" >"$W/logs/$target.hey"
  grep -q "\[200\].*$N responses" "$W/logs/$target.hey" || { echo "!! $target: not $N answers of 200" >&2; cat "$W/logs/$target.hey" >&2; }
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  # The explicit dump (`<out>.1`) is the measured part; `<out>` itself is
  # written at exit and holds only what ran after it.
  dump=$(ls -t "$out".[0-9]* | head -1)
  cp "$dump" "$OUT/$target.out"
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')
  per=$(( total / N ))
  echo "| $target | $per |" >>"$OUT/summary.md"
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n "1,$((TOP + 25))p" >"$OUT/$target.top.txt"
  echo "$target: $per instructions per request"
done
cat "$OUT/summary.md"
echo "top functions: $OUT/<target>.top.txt"
