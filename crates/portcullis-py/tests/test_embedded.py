"""The engine in-process on the embedded default (memory stores, audit to
SQLite, no Redis): the builder, the programmatic token service, errors as
exceptions with the stable codes."""

from __future__ import annotations

import os

import pytest

import portcullis
from portcullis import AuthError, ConfigError, Guard, PermissionDenied, claims

from conftest import write_keys


@pytest.fixture()
def guard(tmp_path):
    write_keys(tmp_path / "keys")
    g = (
        Guard.builder()
        .keys(str(tmp_path / "keys"), issuer="https://issuer.test", audience=["py-api"])
        .storage("memory")
        .audit_sqlite(str(tmp_path / "audit.db"))
        .role("reader", permissions=["docs.read"])
        .rate_limit("per_caller", limit=2, period=60, key=["subject"], algorithm="sliding_log")
        .route("public", "/public/**", credentials=["anonymous"])
        .route("docs", "/docs/**", permissions_all=["docs.read"], rate_limits=["per_caller"])
        .build()
    )
    yield g
    g.close()


def test_login_check_refresh_logout_in_process(guard):
    user_id = guard.create_user("alice", "correct horse battery", roles=["reader"])
    tokens = guard.login("alice", "correct horse battery")
    assert tokens["token_type"].lower() == "bearer"
    d = guard.check("GET", "/docs/1", {"Authorization": "Bearer " + tokens["access_token"]}, "127.0.0.1")
    assert d.allowed, (d.code, d.detail)
    assert d.principal.subject == user_id
    assert claims(d.principal)["sub"] == user_id
    assert d.principal.has_permission("docs.read") and not d.principal.has_permission("docs.write")
    assert d.principal.has_role("reader")
    names = [n for n, _ in d.headers]
    assert b"ratelimit" in names and b"x-request-id" in names
    d.finish(200)

    renewed = guard.refresh(tokens["refresh_token"])
    with pytest.raises(AuthError) as reused:
        guard.refresh(tokens["refresh_token"])
    assert reused.value.code == "auth.refresh_reused"
    assert reused.value.status == 401

    d = guard.check("GET", "/docs/1", {"Authorization": "Bearer " + renewed["access_token"]}, "127.0.0.1")
    assert not d.allowed and d.code == "auth.session_revoked"


def test_refusals_carry_the_gateway_response(guard):
    d = guard.check("GET", "/docs/1", {}, "127.0.0.1")
    assert not d.allowed
    assert (d.status, d.code) == (401, "auth.missing_credentials")
    headers = dict(d.headers)
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"www-authenticate"].startswith(b"Bearer realm=")
    assert b'"code":"auth.missing_credentials"' in d.body


def test_rate_limit_is_per_subject(guard):
    guard.create_user("bob", "correct horse battery", roles=["reader"])
    auth = {"Authorization": "Bearer " + guard.login("bob", "correct horse battery")["access_token"]}
    codes = [guard.check("GET", "/docs/1", auth, "127.0.0.1").code for _ in range(3)]
    assert codes == [None, None, "rate_limit.exceeded"]


def test_a_spent_or_forged_reset_token_raises(guard):
    with pytest.raises(AuthError) as e:
        guard.reset_password("pcr_bm9ib2R5.1.AAAA", "a new password")
    assert e.value.code == "auth.invalid_credentials"


def test_wrong_password_raises_with_the_stable_code(guard):
    guard.create_user("carol", "correct horse battery")
    with pytest.raises(AuthError) as e:
        guard.login("carol", "wrong password!")
    assert e.value.code == "auth.invalid_credentials"
    assert isinstance(e.value, portcullis.PortcullisError)


def test_api_keys_programmatically(guard):
    guard.create_user("dave", "correct horse battery", roles=["reader"])
    access = guard.login("dave", "correct horse battery")["access_token"]
    created = guard.create_api_key(access, "script")
    assert created["key"].startswith("pck_")
    assert [k["id"] for k in guard.list_api_keys(access)] == [created["id"]]
    d = guard.check("GET", "/docs/1", {"Authorization": "Bearer " + created["key"]}, "127.0.0.1")
    assert d.allowed and d.principal.auth_method == "api_key"
    guard.revoke_api_key(access, created["id"])
    with pytest.raises(PermissionDenied):
        guard.create_api_key(access, "too much", permissions=["admin.all"])


def test_a_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[keys]\ndir = "/nonexistent"\nissuer = "https://i.test"\n\n[guard]\ndefualt = "deny"\n')
    with pytest.raises(ConfigError) as e:
        Guard.from_config(bad)
    assert "defualt" in str(e.value) and "default" in str(e.value)


def test_a_guard_from_before_fork_refuses_in_the_child(guard):
    pid = os.fork()
    if pid == 0:
        try:
            guard.check("GET", "/public/x", {}, "127.0.0.1")
            os._exit(1)
        except RuntimeError as e:
            os._exit(0 if "fork" in str(e) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_malformed_input_is_a_value_error_not_a_crash(guard):
    with pytest.raises(ValueError):
        guard.check("GET", "/public/x", [(b"bad header\n", b"v")], "127.0.0.1")
    with pytest.raises(ValueError):
        guard.check("GET", "/public/x", [(b"x", b"a\nb")], "127.0.0.1")
    with pytest.raises(ValueError):
        guard.check("G ET", "/public/x", {}, "127.0.0.1")


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class _Receiver:
    """A webhook receiver on a thread: verifies each delivery's Standard
    Webhooks signature by hand (HMAC-SHA256 over ``id.timestamp.body``) and
    keeps the verified bodies."""

    def __init__(self) -> None:
        import base64
        import hashlib
        import hmac
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
        self.verified: list[dict] = []
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                signed = f"{self.headers['webhook-id']}.{self.headers['webhook-timestamp']}.".encode() + body
                expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                given = [s.removeprefix("v1,") for s in self.headers.get("webhook-signature", "").split(" ")]
                if any(hmac.compare_digest(expected, g) for g in given):
                    receiver.verified.append(json.loads(body))
                    self.send_response(204)
                else:
                    receiver.rejected += 1
                    self.send_response(400)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict]:
        import time

        deadline = time.monotonic() + timeout
        while len(self.verified) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.verified)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_alert_and_report_security_events_in_process(tmp_path):
    """The package sends the gateway's webhooks too: a burst of requests
    checked in process posts one signed alert, and a refresh token used
    twice posts the security event the webhook opted into."""
    receiver = _Receiver()
    write_keys(tmp_path / "keys")
    (tmp_path / "webhook.secret").write_text(WEBHOOK_SECRET + "\n")
    text = (
        Guard.builder()
        .keys(str(tmp_path / "keys"), issuer="https://issuer.test", audience=["py-api"])
        .storage("memory")
        .route("public", "/public/**", credentials=["anonymous"])
        .to_toml()
    ) + f"""
[[anomaly.detectors]]
kind = "burst"
threshold = 3
window = 60
actions = ["alert"]

[[anomaly.webhooks]]
url = "http://127.0.0.1:{receiver.port}/hook"
secret_file = "{tmp_path / 'webhook.secret'}"
detectors = ["burst"]
events = ["token.reuse_detected"]
"""
    guard = Guard.from_toml(text)
    try:
        for _ in range(6):
            d = guard.check("GET", "/public/x", {}, "203.0.113.9")
            assert d.allowed, (d.code, d.detail)
            d.finish(200)
        got = receiver.wait_for(1)
        assert [e["type"] for e in got] == ["anomaly.detected"], got
        assert got[0]["data"]["detector"] == "burst"
        assert got[0]["data"]["key"] == "ip:203.0.113.9"

        user_id = guard.create_user("alice", "correct horse battery")
        tokens = guard.login("alice", "correct horse battery")
        guard.refresh(tokens["refresh_token"])
        with pytest.raises(AuthError):
            guard.refresh(tokens["refresh_token"])
        got = receiver.wait_for(2)
        assert [e["type"] for e in got] == ["anomaly.detected", "security.token.reuse_detected"], got
        assert got[1]["data"]["subject"] == user_id
        assert receiver.rejected == 0
    finally:
        guard.close()
        receiver.close()
