"""Exceptions carrying Portcullis's stable error codes.

Every error a caller can hit is a :class:`PortcullisError` with ``code`` (the
stable code the gateway also answers with, e.g. ``"auth.token_expired"``),
``detail`` (a human-readable reason) and ``status`` (the HTTP status that
goes with it, or 0 where none applies).
"""

from __future__ import annotations

import json

__all__ = [
    "PortcullisError",
    "AuthError",
    "PermissionDenied",
    "RateLimited",
    "Banned",
    "BackendUnavailable",
    "ConfigError",
    "error_from_problem",
]


class PortcullisError(Exception):
    """Base class: ``code``, ``detail`` and ``status`` of the refusal."""

    def __init__(self, code: str, detail: str = "", status: int = 0) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.status = status


class AuthError(PortcullisError):
    """Authentication failed (``auth.*``): missing, bad, expired or revoked credentials."""


class PermissionDenied(PortcullisError):
    """The caller is authenticated but not allowed (``authz.denied``)."""


class RateLimited(PortcullisError):
    """A rate limit refused the call (``rate_limit.exceeded``)."""


class Banned(PortcullisError):
    """The caller's IP or subject is banned (``anomaly.banned``)."""


class BackendUnavailable(PortcullisError):
    """A store or Redis could not answer in time (``backend.unavailable``)."""


class ConfigError(PortcullisError):
    """The configuration is invalid or a backend it names cannot be opened (``config.invalid``)."""


_BY_AREA = {
    "auth": AuthError,
    "authz": PermissionDenied,
    "rate_limit": RateLimited,
    "anomaly": Banned,
    "backend": BackendUnavailable,
    "config": ConfigError,
}


def error_for(code: str, detail: str = "", status: int = 0) -> PortcullisError:
    """The exception class that goes with ``code``'s area, instantiated."""
    cls = _BY_AREA.get(code.split(".", 1)[0], PortcullisError)
    return cls(code, detail, status)


def error_from_problem(status: int, body: bytes) -> PortcullisError:
    """The exception for an RFC 9457 problem body answered with ``status``."""
    try:
        problem = json.loads(body)
        code = str(problem.get("code") or "request.failed")
        detail = str(problem.get("detail") or "")
    except (ValueError, AttributeError):
        code, detail = "request.failed", body[:200].decode("utf-8", "replace")
    return error_for(code, detail, status)
