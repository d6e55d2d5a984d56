"""Fixtures: a key directory and configuration per test session, real app
servers (uvicorn for FastAPI, werkzeug for Flask) on free ports, and a
Guard of the test process's own on the same stores and Redis (it creates
users and bans, as an operator's tooling would)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from portcullis import Guard

APPS = Path(__file__).parent / "apps"
REDIS = "redis://127.0.0.1:6379"

# Per caller on /docs/**; per IP on /limited/**.
DOCS_LIMIT = 50
LIMITED_LIMIT = 3


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def need_redis() -> None:
    if redis_reachable():
        return
    if os.environ.get("PORTCULLIS_REQUIRE_BACKENDS"):
        pytest.fail("Redis on 127.0.0.1:6379 is unreachable and PORTCULLIS_REQUIRE_BACKENDS is set")
    pytest.skip("Redis on 127.0.0.1:6379 is unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_keys(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / "k1.pem"
    path.write_bytes(pem)
    return path


def config_text(work: Path, *, redis_prefix: str | None, storage: str | None = None) -> str:
    storage = storage or f"sqlite://{work / 'stores.db'}"
    redis = f'redis = "{REDIS}"\nredis_prefix = "{redis_prefix}"\n' if redis_prefix else ""
    return f"""
[storage]
url = "{storage}"
pepper_file = "{work / 'pepper'}"
{redis}
[keys]
dir = "{work / 'keys'}"
issuer = "https://issuer.test"
audience = ["py-api"]

[audit]
sqlite = "{work / 'audit.db'}"

[log]
level = "error"

[guard]
default = "deny"

[[guard.roles]]
name = "reader"
permissions = ["docs.read"]

[[guard.rate_limits]]
name = "per_caller"
algorithm = "sliding_log"
limit = {DOCS_LIMIT}
period = 60
key = ["subject"]

[[guard.rate_limits]]
name = "per_ip"
algorithm = "sliding_log"
limit = {LIMITED_LIMIT}
period = 600
key = ["ip"]

[[guard.routes]]
name = "public"
path = "/public/**"
credentials = ["anonymous"]

[[guard.routes]]
name = "docs"
path = "/docs/**"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["docs.read"] }}
rate_limits = ["per_caller"]

[[guard.routes]]
name = "admin"
path = "/admin/**"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["admin.all"] }}

[[guard.routes]]
name = "dry"
path = "/dry/**"
credentials = ["jwt", "api_key"]
require = {{ permissions_all = ["admin.all"] }}
mode = "dry_run"

[[guard.routes]]
name = "limited"
path = "/limited/**"
credentials = ["anonymous"]
rate_limits = ["per_ip"]
"""


def drop_redis_keys(prefix: str) -> None:
    """Deletes this run's keys (every key under the run's unique prefix)."""
    keys = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "--scan", "--pattern", f"{prefix}*"],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "del", *keys[i : i + 500]],
                       capture_output=True, check=False)


class Setup:
    """One configuration on disk and the test process's own Guard on it."""

    redis_prefix: str | None = None

    def close(self) -> None:
        self.guard.close()
        if self.redis_prefix:
            drop_redis_keys(self.redis_prefix)

    def __init__(self, work: Path, text: str) -> None:
        self.work = work
        self.config = work / "portcullis.toml"
        self.config.write_text(text)
        self.guard = Guard.from_config(self.config)
        self.audit_db = work / "audit.db"

    def user(self, roles=("reader",), password: str = "correct horse battery") -> tuple[str, str, str]:
        """A new user: (id, username, password)."""
        name = "u" + uuid.uuid4().hex[:12]
        user_id = self.guard.create_user(name, password, roles=list(roles))
        return user_id, name, password

    def audit_rows(self, request_ids: list[str], *, settle: float = 10.0) -> dict[str, list[tuple]]:
        """The audit events of ``request_ids`` once every one has one (or
        ``settle`` seconds passed): request id -> rows of (decision, code, status)."""
        deadline = time.monotonic() + settle
        while True:
            rows: dict[str, list[tuple]] = {rid: [] for rid in request_ids}
            if self.audit_db.exists():
                db = sqlite3.connect(self.audit_db)
                try:
                    marks = ",".join("?" for _ in request_ids)
                    for rid, decision, code, status in db.execute(
                        f"SELECT request_id, decision, code, status FROM audit_events WHERE request_id IN ({marks})",
                        request_ids,
                    ):
                        rows[rid].append((decision, code, status))
                except sqlite3.OperationalError:
                    pass
                finally:
                    db.close()
            if all(rows.values()) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def make_setup(tmp: Path, *, redis: bool) -> Setup:
    work = tmp
    write_keys(work / "keys")
    (work / "pepper").write_bytes(os.urandom(32))
    prefix = f"pc-py-{uuid.uuid4().hex[:10]}" if redis else None
    setup = Setup(work, config_text(work, redis_prefix=prefix))
    setup.redis_prefix = prefix
    return setup


class Server:
    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv} exited: {log.read_text()[-3000:]}")
            try:
                httpx.get(self.base + "/public/hello", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{argv} did not start: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_app(kind: str, setup: Setup, *, workers: int = 1) -> Server:
    port = free_port()
    env = {**os.environ, "PORTCULLIS_TEST_CONFIG": str(setup.config), "PYTHONPATH": str(APPS)}
    log = setup.work / f"{kind}-{port}.log"
    if kind == "fastapi":
        argv = [
            sys.executable, "-m", "uvicorn", "fastapi_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
        ]
    else:
        argv = [sys.executable, str(APPS / "flask_app.py"), str(port)]
    return Server(argv, port, env, log)


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def served(request, tmp_path_factory):
    """(kind, setup, server): each app on its own stores, audit log and Redis prefix."""
    need_redis()
    setup = make_setup(tmp_path_factory.mktemp(request.param), redis=True)
    server = start_app(request.param, setup)
    yield request.param, setup, server
    server.stop()
    setup.close()
