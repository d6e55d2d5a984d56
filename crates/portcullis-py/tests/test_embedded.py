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
