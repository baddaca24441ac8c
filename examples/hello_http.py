"""A function in http mode: a long-running server on the port in $PORT.

Deploy it with:

    faashub deploy --name hello --env mode=http \
        --fprocess "python3 examples/hello_http.py"
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HelloHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        name = body.decode(errors="replace").strip() or "world"
        reply = json.dumps({"greeting": f"Hello, {name}!", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    ThreadingHTTPServer(
        ("127.0.0.1", int(os.environ["PORT"])), HelloHandler
    ).serve_forever()
