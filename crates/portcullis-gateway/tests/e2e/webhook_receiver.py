"""A webhook receiver for tests/webhooks.rs: verifies every delivery with the
`standardwebhooks` package (PyPI), the library a receiver would use, and
reports what it got.

    python webhook_receiver.py HOST PORT SECRET FAIL_FIRST

POST /hook: 500 for the first FAIL_FIRST posts (a receiver that is down),
then verifies the signature: 204 and recorded when valid, 400 otherwise.
GET /deliveries: {"posts": n, "verified": [event data...], "rejected": n}.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOST, PORT, SECRET, FAIL_FIRST = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
LOCK = threading.Lock()
STATE = {"posts": 0, "verified": [], "rejected": 0}
HOOK = Webhook(SECRET)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/deliveries":
            self._send(200 if self.path == "/" else 404, b"ok")
            return
        with LOCK:
            body = json.dumps(STATE).encode()
        self._send(200, body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        payload = self.rfile.read(length)
        with LOCK:
            STATE["posts"] += 1
            fail = STATE["posts"] <= FAIL_FIRST
        if fail:
            self._send(500)
            return
        try:
            event = HOOK.verify(payload, dict(self.headers.items()))
        except WebhookVerificationError:
            with LOCK:
                STATE["rejected"] += 1
            self._send(400)
            return
        with LOCK:
            STATE["verified"].append(event)
        self._send(204)


ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
