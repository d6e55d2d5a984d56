"""The Flask app the tests run (werkzeug's threaded server): the
Portcullis extension, the token service blueprint, the same views."""

import os
import sys

from flask import Flask, g, request

from portcullis import Guard, claims
from portcullis.flask import Portcullis, require

app = Flask(__name__)
Portcullis(app, Guard.from_config(os.environ["PORTCULLIS_TEST_CONFIG"]))


def view() -> dict:
    who = g.principal
    return {
        "pid": os.getpid(),
        "path": request.path,
        "subject": who.subject if who else None,
        "roles": who.roles if who else None,
        "auth_method": who.auth_method if who else None,
        "sub_claim": claims(who).get("sub") if who else None,
        "request_id": g.request_id,
    }


@app.get("/public/hello")
def hello():
    return view()


@app.get("/docs/<doc>")
@require("docs.read")
def read_doc(doc):
    return view()


@app.put("/docs/<doc>")
@require("docs.write")
def write_doc(doc):
    return view()


@app.get("/dry/<path:rest>")
def dry(rest):
    return view()


@app.get("/limited/<path:rest>")
def limited(rest):
    return view()


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
