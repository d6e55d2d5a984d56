"""The Flask app of the gateway's end-to-end tests.

    python flask_app.py PORT

Serves on 127.0.0.1:PORT with werkzeug's threaded server:

- every path (GET, POST, ...): the method, the path with its query and the
  request headers as the app sees them (WSGI environ, names lowercased) as JSON;
- POST /upload: reads the body as a stream in 64 KiB pieces and answers
  {"bytes": n, "sha256": hex, "chunked": bool};
- GET /ws: a WebSocket that echoes each message (flask-sock), prefixed with
  the subject header the app received.
"""

import hashlib
import sys

from flask import Flask, jsonify, request
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


def seen_headers():
    return {name.lower(): value for name, value in request.headers.items()}


@app.post("/upload")
def upload():
    digest = hashlib.sha256()
    total = 0
    while True:
        piece = request.stream.read(65536)
        if not piece:
            break
        total += len(piece)
        digest.update(piece)
    return jsonify(
        bytes=total,
        sha256=digest.hexdigest(),
        chunked="chunked" in request.headers.get("Transfer-Encoding", "").lower(),
    )


@sock.route("/ws")
def ws(socket):
    subject = request.headers.get("X-User", "")
    while True:
        message = socket.receive()
        if message is None:
            break
        socket.send(f"{subject}:{message}")


@app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE"])
@app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
def echo(path):
    return jsonify(
        method=request.method,
        path=request.full_path.rstrip("?"),
        headers=seen_headers(),
    )


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
