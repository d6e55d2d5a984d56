#!/usr/bin/env bash
# The whole test suite: starts the local Redis Cluster the Redis suites also
# run against, runs every test of every crate with every feature, and stops
# the cluster again. PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379)
# are expected to be running; see README.md. scripts/e2e-env.sh installs
# nginx, caddy and the Python venv the end-to-end tests run against;
# scripts/test-python.sh builds and tests the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/e2e-env.sh
scripts/redis-cluster.sh start
trap 'scripts/redis-cluster.sh stop' EXIT
export PORTCULLIS_REDIS_CLUSTER="${PORTCULLIS_REDIS_CLUSTER:-redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002}"

cargo test --workspace --all-features "$@"

# The Python package (crates/portcullis-py): builds the extension into its
# own venv and runs pytest against real FastAPI and Flask servers.
scripts/test-python.sh
