"""A FastAPI app that trusts the identity headers Portcullis sets.

It never sees a token: the gateway (or nginx / Caddy asking the gateway)
authenticates the caller, removes any identity headers the client sent,
and writes the caller's identity into them.
"""

from fastapi import FastAPI, Header

app = FastAPI()


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/whoami")
def whoami(
    x_portcullis_subject: str | None = Header(default=None),
    x_portcullis_roles: str | None = Header(default=None),
    x_portcullis_permissions: str | None = Header(default=None),
    x_portcullis_auth_method: str | None = Header(default=None),
):
    return {
        "subject": x_portcullis_subject,
        "roles": x_portcullis_roles,
        "permissions": x_portcullis_permissions,
        "auth_method": x_portcullis_auth_method,
    }


@app.get("/reports")
def reports():
    return {"reports": ["q3-revenue"]}
