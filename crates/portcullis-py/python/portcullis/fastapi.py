"""FastAPI helpers over :class:`portcullis.asgi.GuardMiddleware`.

::

    from fastapi import Depends, FastAPI
    from portcullis import Guard
    from portcullis.asgi import GuardMiddleware
    from portcullis.fastapi import principal, require, token_router

    guard = Guard.from_config("portcullis.toml")
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    app.include_router(token_router(guard))          # /auth/login, /auth/refresh, …

    @app.put("/docs/{id}")
    async def put_doc(id: str, who=Depends(require("docs.write"))):
        return {"by": who.subject}

``require`` refuses with 403 ``authz.denied`` (problem+json, the missing
permission named) through the middleware; ``principal`` gives the caller
or 401 when the route let an anonymous request through.
"""

from __future__ import annotations

from typing import Callable, Optional

from fastapi import APIRouter, Request, Response

from . import Guard, Principal
from .errors import AuthError, PermissionDenied

__all__ = ["principal", "optional_principal", "require", "require_role", "token_router"]


def optional_principal(request: Request) -> Optional[Principal]:
    """The caller, or ``None`` on an anonymous request."""
    return getattr(request.state, "principal", None)


def principal(request: Request) -> Principal:
    """The caller; 401 ``auth.missing_credentials`` when anonymous."""
    who = getattr(request.state, "principal", None)
    if who is None:
        raise AuthError("auth.missing_credentials", "this endpoint needs a credential", 401)
    return who


def require(*permissions: str) -> Callable[[Request], Principal]:
    """A dependency: the caller, holding every one of ``permissions``
    (wildcards and role permissions count, as in the route rules); else 403."""

    def dependency(request: Request) -> Principal:
        who = principal(request)
        for permission in permissions:
            if not who.has_permission(permission):
                raise PermissionDenied("authz.denied", f"missing permission `{permission}`", 403)
        return who

    return dependency


def require_role(role: str) -> Callable[[Request], Principal]:
    """A dependency: the caller, holding ``role``; else 403."""

    def dependency(request: Request) -> Principal:
        who = principal(request)
        if not who.has_role(role):
            raise PermissionDenied("authz.denied", f"missing role `{role}`", 403)
        return who

    return dependency


def token_router(guard: Guard) -> APIRouter:
    """The token service mounted at its prefix (``/auth`` by default): login,
    refresh, logout, logout-all, sessions, API keys, JWKS and OpenID
    discovery, answered by the engine itself (the gateway's own handlers)."""
    prefix = guard.token_prefix
    if prefix is None:
        raise ValueError("the token service is disabled (token_service.enabled = false)")
    engine = guard._engine
    router = APIRouter()

    async def token_service(request: Request) -> Response:
        target = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string")
        if query:
            target = target + b"?" + query
        body = await request.body()
        client = request.client.host if request.client else None
        status, headers, answer = await engine.service(
            request.method, target, list(request.scope["headers"]), body, client
        )
        response = Response(content=answer, status_code=status)
        response.raw_headers = [
            *(h for h in headers if h[0] != b"content-length"),
            (b"content-length", str(len(answer)).encode()),
        ]
        return response

    methods = ["GET", "HEAD", "POST", "DELETE"]
    router.add_api_route(prefix + "/{rest:path}", token_service, methods=methods, include_in_schema=False)
    return router
