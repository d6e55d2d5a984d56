#!/usr/bin/env bash
# Rate-limit checks per second against a local Redis from one process.
# Usage: bench/ratelimit-redis-load.sh [redis_url] [concurrency] [seconds] [rules]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p portcullis --features redis --example ratelimit_redis_load -- \
  "${1:-redis://127.0.0.1:6379}" "${2:-64}" "${3:-5}" "${4:-1}"
