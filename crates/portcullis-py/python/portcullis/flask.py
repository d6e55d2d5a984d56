"""Flask extension: the guard before every request, the principal in ``g``.

::

    from flask import Flask, g
    from portcullis import Guard
    from portcullis.flask import Portcullis, require

    app = Flask(__name__)
    Portcullis(app, Guard.from_config("portcullis.toml"))

    @app.put("/docs/<id>")
    @require("docs.write")
    def put_doc(id):
        return {"by": g.principal.subject}

Every request is decided before its view runs (``before_request``):

- refused: the view is not called; the answer is the gateway's own (status,
  problem+json body with the stable ``code``, ``WWW-Authenticate``,
  ``Retry-After``, ``RateLimit`` headers);
- allowed: ``g.principal`` is the :class:`portcullis.Principal` (``None`` on
  anonymous routes), ``g.request_id`` the request id, and the ``RateLimit``
  / ``X-Request-Id`` headers are added to the response;
- exactly one audit event per request, with the status answered.

The GIL is released while the engine waits on I/O, so other threads of a
threaded server keep running. The token service (``/auth/login``, …) is
registered as a blueprint unless ``token_service=False``; its paths are not
guarded, as on the gateway.
"""

from __future__ import annotations

import atexit
import functools
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import quote

from flask import Blueprint, Flask, Response, g, request

from . import Guard
from .asgi import problem_body
from .errors import AuthError, PermissionDenied, PortcullisError

__all__ = ["Portcullis", "require", "require_role", "token_blueprint"]

F = TypeVar("F", bound=Callable[..., Any])

_EXTENSION_KEY = "portcullis"


def _environ_headers(environ: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            if not value:
                continue
            name = key.replace("_", "-").lower()
        else:
            continue
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return headers


def _target(environ: dict[str, Any]) -> bytes:
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        return raw.encode("latin-1")
    path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/:@!$&'()*+,;=-._~")
    query = environ.get("QUERY_STRING")
    return (path + ("?" + query if query else "")).encode("latin-1")


def _problem(status: int, code: str, detail: str) -> Response:
    request_id = getattr(g, "request_id", None)
    response = Response(problem_body(status, code, detail, request_id), status=status)
    response.headers["Content-Type"] = "application/problem+json"
    response.headers["Cache-Control"] = "no-store"
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


def _raw_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    """A response with exactly the engine's headers (Flask sets the length)."""
    response = Response(body, status=status)
    del response.headers["Content-Type"]
    for name, value in headers:
        if name != b"content-length":
            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
    return response


class Portcullis:
    """The Flask extension. ``guard`` is an open :class:`~portcullis.Guard` or
    the path of a configuration file to open."""

    def __init__(self, app: Optional[Flask] = None, guard: Any = None, *, token_service: bool = True) -> None:
        self.guard: Optional[Guard] = None
        self.token_service = token_service
        if app is not None:
            self.init_app(app, guard)

    def init_app(self, app: Flask, guard: Any = None) -> None:
        if guard is None:
            guard = app.config.get("PORTCULLIS_CONFIG")
            if guard is None:
                raise ValueError("pass a Guard or set app.config['PORTCULLIS_CONFIG'] to a configuration file")
        self.guard = guard if isinstance(guard, Guard) else Guard.from_config(guard)
        atexit.register(self.guard.close)
        app.extensions[_EXTENSION_KEY] = self
        prefix = self.guard.token_prefix
        skip = prefix if (self.token_service and prefix) else None
        engine = self.guard._engine

        def before() -> Optional[Response]:
            environ = request.environ
            path = environ.get("PATH_INFO", "")
            if skip is not None and (path == skip or path.startswith(skip + "/")):
                return None
            decision = engine.decide_sync(
                environ["REQUEST_METHOD"], _target(environ), _environ_headers(environ), environ.get("REMOTE_ADDR")
            )
            g._portcullis_decision = decision
            g.request_id = decision.request_id
            if not decision.allowed:
                g.principal = None
                return _raw_response(decision.status, decision.headers, decision.body)
            g.principal = decision.principal
            return None

        def after(response: Response) -> Response:
            decision = g.pop("_portcullis_decision", None)
            if decision is not None:
                if decision.allowed:
                    for name, value in decision.headers:
                        if name == b"x-request-id":
                            response.headers["X-Request-Id"] = value.decode("latin-1")
                        else:
                            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
                decision.finish(response.status_code)
            return response

        def teardown(_exc: Optional[BaseException]) -> None:
            # A view that raised past every handler: the event still gets recorded.
            decision = g.pop("_portcullis_decision", None)
            if decision is not None:
                decision.finish(500)

        def handle(e: PortcullisError) -> Response:
            return _problem(e.status or 403, e.code, e.detail)

        app.before_request(before)
        app.after_request(after)
        app.teardown_request(teardown)
        app.register_error_handler(PortcullisError, handle)
        if skip is not None:
            app.register_blueprint(token_blueprint(self.guard))


def _principal() -> Any:
    who = getattr(g, "principal", None)
    if who is None:
        raise AuthError("auth.missing_credentials", "this endpoint needs a credential", 401)
    return who


def require(*permissions: str) -> Callable[[F], F]:
    """A view decorator: the caller must hold every one of ``permissions``
    (wildcards and role permissions count); else 403 ``authz.denied``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            who = _principal()
            for permission in permissions:
                if not who.has_permission(permission):
                    raise PermissionDenied("authz.denied", f"missing permission `{permission}`", 403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def require_role(role: str) -> Callable[[F], F]:
    """A view decorator: the caller must hold ``role``; else 403."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not _principal().has_role(role):
                raise PermissionDenied("authz.denied", f"missing role `{role}`", 403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def token_blueprint(guard: Guard) -> Blueprint:
    """The token service at its prefix (``/auth`` by default), answered by
    the engine itself: login, refresh, logout, sessions, API keys, JWKS."""
    prefix = guard.token_prefix
    if prefix is None:
        raise ValueError("the token service is disabled (token_service.enabled = false)")
    engine = guard._engine
    blueprint = Blueprint("portcullis_token_service", __name__, url_prefix=prefix)

    @blueprint.route("/<path:rest>", methods=["GET", "HEAD", "POST", "DELETE"])
    def token_service(rest: str) -> Response:
        environ = request.environ
        status, headers, answer = engine.service_sync(
            environ["REQUEST_METHOD"],
            _target(environ),
            _environ_headers(environ),
            request.get_data(cache=False),
            environ.get("REMOTE_ADDR"),
        )
        return _raw_response(status, headers, answer)

    return blueprint
