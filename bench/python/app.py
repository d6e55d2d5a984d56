"""The FastAPI app of bench/python.sh, the peer's `fastapi-bare` route
(`GET /api/data` -> {"ok": true}); PC_MODE=guard puts
portcullis.asgi.GuardMiddleware in front of it (PC_CONFIG names the file)."""

import os

from fastapi import FastAPI

app = FastAPI()

if os.environ.get("PC_MODE") == "guard":
    from portcullis import Guard
    from portcullis.asgi import GuardMiddleware

    app.add_middleware(GuardMiddleware, guard=Guard.from_config(os.environ["PC_CONFIG"]))


@app.get("/api/data")
async def data():
    return {"ok": True}
