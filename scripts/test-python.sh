#!/usr/bin/env bash
# The Python package's suite: builds the extension (maturin) into a venv
# this script creates (.venv-py/), then runs pytest against real FastAPI
# (uvicorn) and Flask servers. Redis (127.0.0.1:6379) is expected, as for
# the Rust suites; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-py
stamp="$venv/.requirements"
want="$(cat scripts/python-requirements.txt)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/python-requirements.txt
    printf '%s' "$want" >"$stamp"
fi

# Build and install the extension into the venv (debug profile: it shares
# the dependencies the Rust suites just built).
VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" \
    "$venv/bin/maturin" develop --quiet -m crates/portcullis-py/Cargo.toml >/dev/null

cd crates/portcullis-py
exec "../../$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
