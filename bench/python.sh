#!/usr/bin/env bash
# bench/python.sh — the Python package's middleware against the bare app,
# side by side, in one run.
#
# Method as ../shared/peers/gateway (see its README) for its fastapi-bare-1w:
# one uvicorn worker (uvloop, httptools, no access log) pinned to core 0,
# `wrk -t1 -c32` pinned to core 1, a warm-up per config, medians of RUNS
# runs, CPU time of the server per request, disturbed runs discarded (the
# peer's bench/measure.py does the run and the accounting).
#
# Configs (CONFIGS="..." picks a subset):
#   fastapi-bare        FastAPI `GET /api/data` -> {"ok": true}, nothing else
#   fastapi-pc-rs256    + portcullis.asgi.GuardMiddleware: RS256 verified on
#                       every request (token_cache_entries = 0), a memory rate
#                       limit, stores and audit on SQLite
#   fastapi-pc-cached   as fastapi-pc-rs256 with the verified-token cache
#
# Knobs: RUNS=3 DURATION=12 CONNS=32 WARMUP=3 CONFIGS=... PEERS=../shared/peers/gateway
# Output: bench/results/python-<timestamp>/ (table.md, raw.jsonl).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS:-$ROOT/../shared/peers/gateway}"
RUNS=${RUNS:-3}; DURATION=${DURATION:-12}; CONNS=${CONNS:-32}; WARMUP=${WARMUP:-3}
CONFIGS=${CONFIGS:-"fastapi-bare fastapi-pc-rs256 fastapi-pc-cached"}
W="$ROOT/bench/.work/python"; OUT="$ROOT/bench/results/python-$(date +%Y%m%d-%H%M%S)"
PORT=18095

[ -f "$PEERS/bench/measure.py" ] || { echo "peer method not found at $PEERS (set PEERS=)" >&2; exit 2; }
need=()
for pair in wrk:wrk taskset:util-linux curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "need root to apt-get install ${need[*]}" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

rm -rf "$W"; mkdir -p "$W"/{run,logs,keys,conf,wheels} "$OUT"
VENV="$ROOT/bench/.work/python-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/bench/python/requirements.txt" maturin==1.9.6
fi
# The release extension, as a user's `pip install` gets it.
"$VENV/bin/maturin" build --release -q -m "$ROOT/crates/portcullis-py/Cargo.toml" -o "$W/wheels" >/dev/null
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$W"/wheels/portcullis-*.whl
cargo build --release -q -p portcullis-gateway --manifest-path "$ROOT/Cargo.toml"
PC="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"

"$PC" keys generate --alg RS256 --kid bench --out "$W/keys" >/dev/null
"$PC" token issue --key "$W/keys/bench.pem" --sub user:bench --iss https://lockwatch.example \
  --aud lockwatch-api --ttl 4h >"$W/keys/pc.jwt"
head -c 32 /dev/urandom >"$W/keys/pepper"

pc_config() {  # name -> writes $W/conf/<name>.toml
  local name=$1 cache=""
  [ "$name" = fastapi-pc-rs256 ] && cache="token_cache_entries = 0"
  cat >"$W/conf/$name.toml" <<TOML
[storage]
url = "sqlite://$W/run/$name-stores.db"
pepper_file = "$W/keys/pepper"

[keys]
dir = "$W/keys"
issuer = "https://lockwatch.example"
audience = ["lockwatch-api"]
$cache

[audit]
sqlite = "$W/run/$name-audit.db"

[log]
level = "warn"

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
TOML
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { local i; for ((i = 0; i < 300; i++)); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
start() {  # name
  local name=$1 mode=bare
  case $name in fastapi-pc-*) mode=guard; pc_config "$name" ;; esac
  ( cd "$ROOT/bench/python" && PC_MODE=$mode PC_CONFIG="$W/conf/$name.toml" exec taskset -c 0 "$VENV/bin/uvicorn" app:app \
      --host 127.0.0.1 --port $PORT --workers 1 --loop uvloop --http httptools \
      --no-access-log --log-level warning ) >"$W/logs/$name.log" 2>&1 &
  echo $! >"$W/run/$name.pid"
  wait_port $PORT || { tail -5 "$W/logs/$name.log" >&2; return 1; }
  sleep 1
}
stop() { local f="$W/run/$1.pid" pid; [ -f "$f" ] || return 0; pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
  local i; for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$f"; }
current=""
trap '[ -n "$current" ] && stop "$current"' EXIT
trap 'exit 130' INT TERM

{
  echo "date: $(date -u +%FT%TZ)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "python: $("$VENV/bin/python" -V)"; echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "packages: $("$VENV/bin/pip" freeze | grep -iE '^(fastapi|starlette|uvicorn|uvloop|httptools|portcullis)' | tr '\n' ' ')"
  echo "portcullis: $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "settings: RUNS=$RUNS DURATION=${DURATION}s CONNS=$CONNS WARMUP=${WARMUP}s; uvicorn on core 0, wrk on core 1"
} | tee "$OUT/versions.txt"

url="http://127.0.0.1:$PORT/api/data"; tok="$W/keys/pc.jwt"
for cfg in $CONFIGS; do
  current=$cfg; start "$cfg"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$tok")" "$url")
  none=$(curl -s -o /dev/null -w '%{http_code}' "$url")
  echo "$cfg: valid=$code none=$none" | tee -a "$OUT/sanity.txt"
  common=(--config "$cfg" --mode pinned --url "$url" --token-file "$tok" --conns "$CONNS" --threads 1
          --wrk-cpus 1 --lua "$PEERS/bench/report.lua" --out "$OUT/raw.jsonl" --proc "$cfg=$(cat "$W/run/$cfg.pid")")
  python3 "$PEERS/bench/measure.py" "${common[@]}" --run 0 --duration "$WARMUP"
  for ((i = 1; i <= RUNS; i++)); do python3 "$PEERS/bench/measure.py" "${common[@]}" --run "$i" --duration "$DURATION"; done
  stop "$cfg"; current=""
  if [[ $cfg == fastapi-pc-* ]]; then
    # The audit queue is written out at shutdown: one event per request.
    n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from audit_events').fetchone()[0])" "$W/run/$cfg-audit.db" 2>/dev/null || echo "?")
    echo "$cfg: audit events written: $n" | tee -a "$OUT/sanity.txt"
  fi
done

python3 "$PEERS/bench/summarize.py" "$OUT" | tee "$OUT/table.md"
echo "results: $OUT/"
