"""Upstreams of the boundary (differential) suite: each reports the request
as that server and framework read it, so a test can compare it with what
the gateway's guard decided on.

    python boundary_apps.py wsgiref PORT     # stdlib wsgiref.simple_server
    python boundary_apps.py starlette PORT   # Starlette under uvicorn

Every request, any method and path, is answered 200 with JSON:
{"server", "method", "path", "query", "host", "headers"} where `path` is
the decoded path the framework routes on, `host` the Host it read, and
`headers` the request headers as the app sees them (names lower case with
`-`; for WSGI, rebuilt from the HTTP_* environ keys, which is where
`X_Foo` and `X-Foo` become one).
"""

import json
import sys


def wsgi_app(environ, start_response):
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].lower().replace("_", "-")] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.lower().replace("_", "-")] = environ[key]
    body = json.dumps(
        {
            "server": "wsgiref",
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "host": environ.get("HTTP_HOST", ""),
            "headers": headers,
        }
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def run_wsgiref(port):
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Threaded(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    make_server("127.0.0.1", port, wsgi_app, server_class=Threaded, handler_class=Quiet).serve_forever()


def run_starlette(port):
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request):
        headers = {}
        for name, value in request.headers.items():
            headers[name.lower()] = value
        return JSONResponse(
            {
                "server": "starlette",
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "host": request.headers.get("host", ""),
                "headers": headers,
            }
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(routes=[Route("/{rest:path}", echo, methods=methods)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    {"wsgiref": run_wsgiref, "starlette": run_starlette}[kind](port)
