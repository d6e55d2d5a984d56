"""An upstream that verifies the Portcullis gateway's internal identity token
with PyJWT against the gateway's published JWKS, instead of trusting headers.

Run (see docs/guides/internal-token-pyjwt.md):

    PORTCULLIS_JWKS_URL=http://127.0.0.1:8080/.well-known/portcullis/jwks.json \
    PORTCULLIS_ISSUER=https://api.example.com/internal \
    PORTCULLIS_AUDIENCE=orders \
    python internal_token_app.py 127.0.0.1 8000

Every request must carry a valid token in X-Portcullis-Identity; the app
answers with the verified caller, or 401.
"""

import os
import sys

import jwt
from flask import Flask, jsonify, request

JWKS_URL = os.environ["PORTCULLIS_JWKS_URL"]
ISSUER = os.environ["PORTCULLIS_ISSUER"]
AUDIENCE = os.environ["PORTCULLIS_AUDIENCE"]
HEADER = os.environ.get("PORTCULLIS_HEADER", "X-Portcullis-Identity")

# Fetches the JWKS once, caches the keys, refetches on an unknown kid.
jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=True, lifespan=300, timeout=5)

app = Flask(__name__)


class Refused(Exception):
    pass


def verified_caller():
    """The verified claims of the request's internal token, or Refused."""
    token = request.headers.get(HEADER)
    if not token:
        raise Refused(f"missing {HEADER}")
    try:
        header = jwt.get_unverified_header(token)
        # RFC 9068: only the gateway's access-token type, never another JWT of its key.
        if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise Refused("not an at+jwt token")
        key = jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["ES256", "ES384", "EdDSA", "RS256", "PS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as e:
        raise Refused(str(e)) from e


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def whoami(path):
    try:
        claims = verified_caller()
    except Refused as e:
        return jsonify({"error": "unauthorized", "detail": str(e)}), 401
    return jsonify(
        {
            "path": "/" + path,
            "subject": claims["sub"],
            "roles": claims.get("roles", []),
            "permissions": claims.get("permissions", []),
            "tenant": claims.get("tenant"),
            "session": claims.get("sid"),
            "auth_method": claims.get("auth_method"),
            "request_id": claims.get("request_id"),
            "request_id_header": request.headers.get("X-Request-Id"),
        }
    )


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    app.run(host=host, port=port)
