"""The FastAPI app the tests run under uvicorn: GuardMiddleware in front,
the token service mounted, handlers that show what the guard handed on."""

import os

from fastapi import Depends, FastAPI, Request

from portcullis import Guard, claims
from portcullis.asgi import GuardMiddleware
from portcullis.fastapi import optional_principal, require, token_router

guard = Guard.from_config(os.environ["PORTCULLIS_TEST_CONFIG"])
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)
app.include_router(token_router(guard))


def view(request: Request, who) -> dict:
    return {
        "pid": os.getpid(),
        "path": request.url.path,
        "subject": who.subject if who else None,
        "roles": who.roles if who else None,
        "auth_method": who.auth_method if who else None,
        "sub_claim": claims(who).get("sub") if who else None,
        "request_id": request.state.request_id,
    }


@app.get("/public/hello")
async def hello(request: Request, who=Depends(optional_principal)):
    return view(request, who)


@app.get("/docs/{doc}")
async def read_doc(doc: str, request: Request, who=Depends(require("docs.read"))):
    return view(request, who)


@app.put("/docs/{doc}")
async def write_doc(doc: str, request: Request, who=Depends(require("docs.write"))):
    return view(request, who)


@app.get("/dry/{rest:path}")
async def dry(rest: str, request: Request, who=Depends(optional_principal)):
    return view(request, who)


@app.get("/limited/{rest:path}")
async def limited(rest: str, request: Request, who=Depends(optional_principal)):
    return view(request, who)
