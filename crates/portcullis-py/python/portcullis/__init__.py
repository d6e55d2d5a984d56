"""Portcullis for Python: the gateway's Guard as in-process middleware.

The decisions, error codes, audit events and Redis / PostgreSQL state are
exactly the gateway's: this package runs the same Rust engine, opened from
the same configuration file as ``portcullis serve``.

- :class:`Guard` — open it once per process (``Guard.from_config(path)`` or
  ``Guard.builder()``), then hand it to a middleware.
- :mod:`portcullis.asgi` — ``GuardMiddleware`` for FastAPI / Starlette.
- :mod:`portcullis.fastapi` — ``require("docs.write")``, ``token_router(guard)``.
- :mod:`portcullis.flask` — ``Portcullis(app, guard)`` and ``@require(...)``.
- :mod:`portcullis.errors` — exceptions carrying the stable codes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from . import _native
from .errors import (
    AuthError,
    BackendUnavailable,
    Banned,
    ConfigError,
    PermissionDenied,
    PortcullisError,
    RateLimited,
    error_from_problem,
)

Decision = _native.Decision
Principal = _native.Principal

# A Guard opened before fork() refuses to run in the child (its engine's
# threads did not survive the fork); the extension learns of forks here.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_native._forked)

__all__ = [
    "Guard",
    "GuardBuilder",
    "Decision",
    "Principal",
    "PortcullisError",
    "AuthError",
    "PermissionDenied",
    "RateLimited",
    "Banned",
    "BackendUnavailable",
    "ConfigError",
    "claims",
]

Headers = Union[Mapping[str, str], Iterable[tuple[Union[str, bytes], Union[str, bytes]]]]


def claims(principal: Principal) -> dict[str, Any]:
    """Every verified claim of ``principal`` as a dict (empty for API keys)."""
    return json.loads(principal.claims_json or "{}")


def _header_list(headers: Optional[Headers]) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        if isinstance(name, str):
            name = name.lower().encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        out.append((name, value))
    return out


class Guard:
    """One configuration's engine: guard, stores, keys, token service, audit.

    Open it once per process, after any ``fork()`` (gunicorn's ``--preload``
    forks after import: open it in a ``post_fork`` hook or lazily). Every
    method is safe to call from any thread.
    """

    def __init__(self, engine: "_native.Engine") -> None:
        self._engine = engine

    # -- opening -------------------------------------------------------

    @classmethod
    def from_config(cls, path: Union[str, "os.PathLike[str]"]) -> "Guard":
        """Opens the configuration file ``path`` (the gateway's format, with
        the ``PORTCULLIS_…`` environment overrides). ``[[upstreams]]`` are not
        needed: the application serves every route.

        Raises :class:`ConfigError` naming the file, line and key of each
        problem, or the backend that could not be reached.
        """
        return cls(_native.Engine.open(os.fspath(path)))

    @classmethod
    def from_toml(cls, text: str, path: str = "portcullis.toml") -> "Guard":
        """Opens configuration ``text``; ``path`` names it in errors."""
        return cls(_native.Engine.open_text(path, text))

    @classmethod
    def builder(cls) -> "GuardBuilder":
        """A programmatic builder for the common cases (see :class:`GuardBuilder`)."""
        return GuardBuilder()

    @property
    def token_prefix(self) -> Optional[str]:
        """Path prefix of the token service (``/auth`` by default), or ``None``."""
        return self._engine.token_prefix

    # -- deciding ------------------------------------------------------

    def check(
        self,
        method: str,
        target: str,
        headers: Optional[Headers] = None,
        client: Optional[str] = None,
    ) -> Decision:
        """Decides one request outside any framework (blocking; the GIL is
        released while the engine waits on I/O). ``target`` is the path with
        its query string; ``client`` the peer's IP address.

        Call ``decision.finish(status)`` once the response is known (else the
        audit event is recorded without a status when the decision is freed).
        """
        return self._engine.decide_sync(
            method, target.encode("latin-1"), _header_list(headers), client
        )

    # -- the token service ---------------------------------------------

    def _service(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: Optional[str] = None,
        client_ip: Optional[str] = None,
    ) -> Any:
        prefix = self.token_prefix
        if prefix is None:
            raise ConfigError("config.invalid", "the token service is disabled (token_service.enabled = false)")
        headers = [(b"accept", b"application/json")]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            headers.append((b"content-type", b"application/json"))
        if token is not None:
            headers.append((b"authorization", b"Bearer " + token.encode("latin-1")))
        status, _headers, answer = self._engine.service_sync(
            method, (prefix + path).encode("latin-1"), headers, payload, client_ip
        )
        if status >= 400:
            raise error_from_problem(status, answer)
        return json.loads(answer) if answer else None

    def login(
        self,
        username: str,
        password: str,
        *,
        remember_me: bool = False,
        client_ip: Optional[str] = None,
    ) -> dict[str, Any]:
        """Logs in: ``{"access_token", "token_type", "expires_in", "refresh_token", …}``.

        Attempts are limited per account and per IP; failures feed the
        ``auth_failures`` / ``distinct_accounts`` detectors. A wrong password
        raises :class:`AuthError` (``auth.invalid_credentials``).
        """
        body = {"username": username, "password": password, "remember_me": remember_me}
        return self._service("POST", "/login", body, client_ip=client_ip)

    def refresh(self, refresh_token: str, *, client_ip: Optional[str] = None) -> dict[str, Any]:
        """Rotates a refresh token. Reusing a rotated one revokes its whole
        family and raises :class:`AuthError` (``auth.refresh_reused``)."""
        return self._service("POST", "/refresh", {"refresh_token": refresh_token}, client_ip=client_ip)

    def logout(self, access_token: str, refresh_token: Optional[str] = None) -> None:
        """Ends the access token's session (and the refresh token's family)."""
        body = {"refresh_token": refresh_token} if refresh_token else None
        self._service("POST", "/logout", body, token=access_token)

    def logout_all(self, access_token: str) -> None:
        """Ends every session of the access token's user."""
        self._service("POST", "/logout-all", None, token=access_token)

    def reset_password(self, token: str, password: str, *, client_ip: Optional[str] = None) -> None:
        """Sets a password with a one-time reset token (an invitation or a
        reset link from the admin API). An invalid, expired or spent token
        raises :class:`AuthError` (``auth.invalid_credentials``)."""
        self._service("POST", "/password/reset", {"token": token, "password": password}, client_ip=client_ip)

    def sessions(self, access_token: str) -> list[dict[str, Any]]:
        """The caller's sessions."""
        return self._service("GET", "/sessions", None, token=access_token)["sessions"]

    def revoke_session(self, access_token: str, session_id: str) -> None:
        """Revokes one of the caller's sessions."""
        self._service("DELETE", f"/sessions/{session_id}", None, token=access_token)

    def create_api_key(
        self,
        access_token: str,
        name: str,
        *,
        permissions: Optional[Sequence[str]] = None,
        expires_in: Optional[int] = None,
    ) -> dict[str, Any]:
        """Creates an API key of the caller's: the answer holds the key itself
        (``"key"``), shown this once."""
        body: dict[str, Any] = {"name": name}
        if permissions is not None:
            body["permissions"] = list(permissions)
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self._service("POST", "/api-keys", body, token=access_token)

    def list_api_keys(self, access_token: str) -> list[dict[str, Any]]:
        """The caller's API keys (never the keys themselves)."""
        return self._service("GET", "/api-keys", None, token=access_token)["api_keys"]

    def revoke_api_key(self, access_token: str, key_id: str) -> None:
        """Revokes one of the caller's API keys."""
        self._service("DELETE", f"/api-keys/{key_id}", None, token=access_token)

    # -- operations ----------------------------------------------------

    def create_user(
        self,
        username: str,
        password: Optional[str] = None,
        *,
        password_hash: Optional[str] = None,
        roles: Sequence[str] = (),
        permissions: Sequence[str] = (),
        tenant: Optional[str] = None,
    ) -> str:
        """Creates a user in the stores and returns its id. ``password`` is
        hashed with argon2id; ``password_hash`` imports an existing argon2id
        or bcrypt hash instead."""
        return self._engine.create_user(
            username,
            password,
            password_hash=password_hash,
            roles=list(roles),
            permissions=list(permissions),
            tenant=tenant,
        )

    def ban(self, target: str, seconds: float, reason: str = "manual") -> None:
        """Bans ``ip:<address>`` or ``subject:<id>`` for ``seconds`` (on Redis
        when configured, so every process and gateway replica honours it)."""
        self._engine.ban(target, seconds, reason)

    def lift_ban(self, target: str) -> bool:
        """Lifts a ban; whether one was active."""
        return self._engine.lift_ban(target)

    def close(self) -> None:
        """Writes out the audit queue. Call it at shutdown (the middlewares
        do on ASGI lifespan shutdown and at interpreter exit)."""
        self._engine.close()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


class GuardBuilder:
    """Builds the common configurations in code. It writes the same TOML a
    configuration file holds (``to_toml()`` shows it), so every key, default
    and validation error is the file's::

        guard = (
            Guard.builder()
            .keys("keys/", issuer="https://api.example.com", audience=["api"])
            .storage("sqlite://portcullis.db", pepper_file="pepper")
            .audit_sqlite("audit.db")
            .role("editor", permissions=["docs.read", "docs.write"])
            .rate_limit("per_caller", limit=100, period=60, key=["subject"])
            .route("public", "/public/**", credentials=["anonymous"])
            .route("docs", "/docs/**", permissions_all=["docs.read"], rate_limits=["per_caller"])
            .build()
        )
    """

    def __init__(self) -> None:
        self._sections: dict[str, dict[str, Any]] = {}
        self._arrays: list[tuple[str, dict[str, Any]]] = []

    def _set(self, section: str, **values: Any) -> "GuardBuilder":
        table = self._sections.setdefault(section, {})
        table.update({k: v for k, v in values.items() if v is not None})
        return self

    def keys(
        self, dir: str, *, issuer: str, audience: Sequence[str] = (), active_kid: Optional[str] = None
    ) -> "GuardBuilder":
        """``[keys]``: the key directory, the issuer and audience of tokens."""
        return self._set("keys", dir=dir, issuer=issuer, audience=list(audience), active_kid=active_kid)

    def storage(
        self,
        url: str = "memory",
        *,
        pepper_file: Optional[str] = None,
        redis: Optional[str] = None,
        redis_cluster: Optional[Sequence[str]] = None,
        redis_prefix: Optional[str] = None,
    ) -> "GuardBuilder":
        """``[storage]``: ``memory``, ``sqlite://PATH`` or ``postgres://…``, and Redis for shared hot state."""
        cluster = list(redis_cluster) if redis_cluster else None
        return self._set(
            "storage", url=url, pepper_file=pepper_file, redis=redis, redis_cluster=cluster, redis_prefix=redis_prefix
        )

    def audit_sqlite(self, path: str) -> "GuardBuilder":
        """``[audit] sqlite``: one audit event per request into this SQLite file."""
        return self._set("audit", sqlite=path)

    def audit_postgres(self, url: str, *, spool_dir: str) -> "GuardBuilder":
        """``[audit] postgres``: the audit log in PostgreSQL, spooled while it is down."""
        return self._set("audit", postgres=url, spool_dir=spool_dir)

    def default(self, effect: str) -> "GuardBuilder":
        """``guard.default``: ``deny`` (the default) or ``allow`` for unmatched requests."""
        return self._set("guard", default=effect)

    def trusted_proxies(self, *cidrs: str) -> "GuardBuilder":
        """``guard.client_ip.trusted_proxies``: whose ``X-Forwarded-For`` / ``X-Request-Id`` are believed."""
        return self._set("guard.client_ip", trusted_proxies=list(cidrs))

    def token_service(self, enabled: bool = True, *, prefix: Optional[str] = None) -> "GuardBuilder":
        """``[token_service]``: login, refresh, logout, sessions, API keys, JWKS."""
        return self._set("token_service", enabled=enabled, prefix=prefix)

    def role(self, name: str, *, permissions: Sequence[str] = (), includes: Sequence[str] = ()) -> "GuardBuilder":
        """``[[guard.roles]]``."""
        entry: dict[str, Any] = {"name": name, "permissions": list(permissions)}
        if includes:
            entry["includes"] = list(includes)
        self._arrays.append(("guard.roles", entry))
        return self

    def rate_limit(
        self,
        name: str,
        *,
        limit: int,
        period: int,
        key: Sequence[str] = ("ip",),
        algorithm: str = "gcra",
        **more: Any,
    ) -> "GuardBuilder":
        """``[[guard.rate_limits]]`` (``more``: ``burst``, ``on_backend_error``, …)."""
        entry = {"name": name, "algorithm": algorithm, "limit": limit, "period": period, "key": list(key), **more}
        self._arrays.append(("guard.rate_limits", entry))
        return self

    def route(
        self,
        name: str,
        path: str,
        *,
        methods: Optional[Sequence[str]] = None,
        credentials: Sequence[str] = ("jwt", "api_key"),
        permissions_all: Sequence[str] = (),
        roles_any: Sequence[str] = (),
        rate_limits: Sequence[str] = (),
        mode: Optional[str] = None,
        **more: Any,
    ) -> "GuardBuilder":
        """``[[guard.routes]]``: most specific match wins; ``mode="dry_run"``
        decides and audits but never refuses."""
        entry: dict[str, Any] = {"name": name, "path": path, "credentials": list(credentials)}
        if methods:
            entry["methods"] = list(methods)
        require: dict[str, Any] = {}
        if permissions_all:
            require["permissions_all"] = list(permissions_all)
        if roles_any:
            require["roles_any"] = list(roles_any)
        if require:
            entry["require"] = require
        if rate_limits:
            entry["rate_limits"] = list(rate_limits)
        if mode:
            entry["mode"] = mode
        entry.update(more)
        self._arrays.append(("guard.routes", entry))
        return self

    def to_toml(self) -> str:
        """The configuration file this builder stands for."""
        lines: list[str] = []
        for section, table in self._sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in table.items())
            lines.append("")
        for section, entry in self._arrays:
            lines.append(f"[[{section}]]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in entry.items())
            lines.append("")
        return "\n".join(lines)

    def build(self) -> Guard:
        """Opens the guard (raises :class:`ConfigError` naming the key at fault)."""
        return Guard.from_toml(self.to_toml(), "<GuardBuilder>")
