"""A function in http mode: a long-running server on the port in $PORT.

Deploy it with:

    faashub deploy --name hello --env mode=http \
        --fprocess "python3 examples/hello_http.py"

The gateway keeps up to 1024 connections open to a function at once, so the
server listens with a backlog of that size and serves each connection in its
own thread. http.server's default backlog of 5 makes the kernel reset or drop
new connections when more than a few calls arrive together.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HelloHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps a connection open for the next call, as the gateway and
    # the provider expect; every response has a Content-Length.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
        body = self.read_body()
        name = body.decode(errors="replace").strip() or "world"
        reply = json.dumps({"greeting": f"Hello, {name}!", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST

    def read_body(self) -> bytes:
        """Read the whole request body, sent with a Content-Length or chunked.

        The body must be read to its end even when it is not needed, because
        the next request on the connection starts after it.
        """
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the line break after the chunk
        # Skip the trailer fields up to the empty line that ends the body.
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def log_message(self, format: str, *args: object) -> None:
        return


class HelloServer(ThreadingHTTPServer):
    # The listen backlog. Linux caps it at net.core.somaxconn (4096 by default
    # since Linux 5.4).
    request_queue_size = 1024


if __name__ == "__main__":
    HelloServer(("127.0.0.1", int(os.environ["PORT"])), HelloHandler).serve_forever()
