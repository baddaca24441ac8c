"""Print every async result that faashub posts to this server.

Run it, then pass http://127.0.0.1:9000/ as X-Callback-Url:

    python3 examples/callback_receiver.py 9000

The queue-worker can post many callbacks at once, so each connection gets its
own thread, and the server listens with a backlog of 1024 instead of
http.server's default of 5.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHOWN_HEADERS = (
    "X-Call-Id",
    "X-Function-Name",
    "X-Function-Status",
    "X-Duration-Seconds",
)


class CallbackHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        summary = " ".join(f"{name}={self.headers.get(name)}" for name in SHOWN_HEADERS)
        print(f"{summary} body={body[:200]!r}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class CallbackServer(ThreadingHTTPServer):
    request_queue_size = 1024


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    CallbackServer(("127.0.0.1", port), CallbackHandler).serve_forever()
