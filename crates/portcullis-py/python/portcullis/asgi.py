"""ASGI middleware for FastAPI / Starlette (and any ASGI app).

::

    from portcullis import Guard
    from portcullis.asgi import GuardMiddleware

    app.add_middleware(GuardMiddleware, guard=Guard.from_config("portcullis.toml"))

Every HTTP request and WebSocket handshake is decided by the guard before
the app sees it:

- refused: the app is not called; the answer is the gateway's own (status,
  ``application/problem+json`` body with the stable ``code``,
  ``WWW-Authenticate``, ``Retry-After``, ``RateLimit`` headers). A refused
  WebSocket handshake is closed before it is accepted (the server answers
  403).
- allowed: ``request.state.principal`` is the :class:`portcullis.Principal`
  (``None`` on anonymous routes) and ``request.state.request_id`` the
  request id; the ``RateLimit`` / ``X-Request-Id`` headers are added to the
  app's response.
- exactly one audit event is recorded per request, with the status the app
  answered, once its response has been sent.

Paths under the token service's prefix (``/auth`` by default) pass through
unguarded, for :func:`portcullis.fastapi.token_router` to answer, as the
gateway answers them before its guard.

A :class:`portcullis.PortcullisError` raised by the app before it starts its
response (``principal.require`` in :mod:`portcullis.fastapi` raises
``PermissionDenied``) is answered as a problem+json with its status and code.

The decision is taken without a thread per request: on the memory backends
and a verified-token cache hit it is ready at once; otherwise the engine's
own runtime finishes it and the event loop awaits it.
"""

from __future__ import annotations

import atexit
import json
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Union

from . import Guard, _native
from .errors import PortcullisError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_Decision = _native.Decision


def problem_body(status: int, code: str, detail: str, request_id: Optional[str]) -> bytes:
    """An RFC 9457 body in the gateway's shape."""
    from http import HTTPStatus

    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()


class GuardMiddleware:
    """Runs the :class:`portcullis.Guard` in front of an ASGI app.

    ``guard`` is an open :class:`~portcullis.Guard` or the path of a
    configuration file to open.
    """

    def __init__(self, app: ASGIApp, guard: Union[Guard, str]) -> None:
        self.app = app
        self.guard = guard if isinstance(guard, Guard) else Guard.from_config(guard)
        self._decide = self.guard._engine.decide
        prefix = self.guard.token_prefix
        self._token_prefix = prefix
        self._token_prefix_slash = prefix + "/" if prefix else None
        atexit.register(self.guard.close)

    def _is_token_service(self, path: str) -> bool:
        prefix = self._token_prefix
        return prefix is not None and (path == prefix or path.startswith(self._token_prefix_slash))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self._is_token_service(path):
            await self.app(scope, receive, send)
            return

        target = scope.get("raw_path") or path.encode("utf-8")
        query = scope.get("query_string")
        if query:
            target = target + b"?" + query
        headers = scope["headers"]
        if headers.__class__ is not list or (headers and headers[0].__class__ is not tuple):
            headers = [tuple(h) for h in headers]
        client = scope.get("client")
        method = scope["method"] if kind == "http" else "GET"
        decision = self._decide(method, target, headers, client[0] if client else None)
        if decision.__class__ is not _Decision:
            decision = await decision

        if not decision.allowed:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                decision.finish(403)
                return
            await send({"type": "http.response.start", "status": decision.status, "headers": decision.headers})
            await send({"type": "http.response.body", "body": decision.body})
            decision.finish(decision.status)
            return

        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["principal"] = decision.principal
        state["request_id"] = decision.request_id
        extra = decision.headers
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            # Adds the guard's headers to the response head; notes the status.
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            elif message["type"] == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except PortcullisError as e:
            if started or kind != "http":
                raise
            status = e.status or 403
            await _send_problem(send, status, e, decision.request_id)
        finally:
            decision.finish(status)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.guard.close()
            await send(message)

        return lifespan_send


async def _send_problem(send: Send, status: int, e: PortcullisError, request_id: str) -> None:
    """Answers an app's ``PortcullisError`` as the gateway would."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"cache-control", b"no-store"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": problem_body(status, e.code, e.detail, request_id)})
