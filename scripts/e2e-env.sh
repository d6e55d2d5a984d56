#!/usr/bin/env bash
# Installs what the end-to-end tests run against, when missing: Debian's
# nginx and caddy (binaries only; their system services are not started),
# the openssl CLI (test certificates),
# curl (the `portcullis demo` test runs the printed curl lines),
# Debian's chromium (the console's browser test drives it headless through
# Playwright; Playwright's own browser download is never used),
# and a Python venv at .venv-e2e/ with the Flask / FastAPI apps' packages
# and grpcio (the gRPC end-to-end test's server and client).
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
# The TLS tests make their self-signed certificates with the openssl CLI.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "e2e-env: need root to install ${missing[*]} (apt-get)" >&2
        exit 1
    fi
    # Keep the packages' services from starting (they would take port 80).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
fi

venv=.venv-e2e
stamp="$venv/.requirements"
want="$(cat scripts/e2e-requirements.txt)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/e2e-requirements.txt
    printf '%s' "$want" >"$stamp"
fi
