"""Fixtures that run the local provider on a loopback port, in this process.

The provider is the real application served by uvicorn in a background
thread, so tests exercise real HTTP, real function processes and the real
state folder. `start_provider` and `RunningProvider.stop` let a test stop a
provider and start another on the same state folder.
"""

import http.client
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider.local import server

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0

# A function server for http mode: it listens on $PORT and describes each
# request in a JSON response. /status/CODE responds with status CODE,
# /sleep/SECONDS waits first, /gzip responds with a gzip-encoded body,
# /truncate exits in the middle of its response, and /crash appends the
# method and X-Call-Id to the file in $CALL_LOG and exits without a response.
HTTP_FUNCTION_SCRIPT = """
import gzip, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("?")[0].split("/")
        status, extra_headers = 200, {}

        if self.path.startswith("/status/"):
            status = int(parts[2])
        if self.path.startswith("/sleep/"):
            time.sleep(float(parts[2]))
        if self.path == "/crash":
            with open(os.environ["CALL_LOG"], "a") as call_log:
                call_log.write(self.command + " " + self.headers["X-Call-Id"] + "\\n")
            os._exit(9)
        if self.path == "/truncate":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"12345")
            self.wfile.flush()
            os._exit(3)

        if self.path == "/gzip":
            payload = gzip.compress(b"hello compressed")
            extra_headers["Content-Encoding"] = "gzip"
        else:
            payload = json.dumps({
                "pid": os.getpid(),
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "headers": dict(self.headers),
                "greeting": os.environ.get("GREETING", ""),
            }).encode()

        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Function", "echo")
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


print("echo server starting", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class RunningProvider:
    """A provider served in a background thread of the test process."""

    url: str
    settings: LocalProviderSettings
    server: server.ProviderServer
    thread: threading.Thread

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STOP_TIMEOUT_S)
        assert not self.thread.is_alive(), "the provider did not stop in time"


def start_provider(settings: LocalProviderSettings) -> RunningProvider:
    """Serve a new provider on a free loopback port and wait until it is ready."""
    app = server.create_app(settings)
    listener = server.bind_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    uvicorn_server = server.build_server(app)

    def serve() -> None:
        try:
            uvicorn_server.run(sockets=[listener])
        finally:
            listener.close()

    thread = threading.Thread(target=serve, name=f"provider-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not uvicorn_server.started:
        assert thread.is_alive(), "the provider exited during start"
        assert time.monotonic() < deadline, "the provider did not start in time"
        time.sleep(0.02)
    return RunningProvider(
        url=f"http://127.0.0.1:{port}",
        settings=settings,
        server=uvicorn_server,
        thread=thread,
    )


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float = 10.0, what: str = ""
) -> None:
    """Poll `condition` every 50 ms until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_context(record: logging.LogRecord) -> dict[str, Any]:
    """Return the `ctx` fields that faashub code attached to a log record."""
    context: dict[str, Any] = record.__dict__["ctx"]
    return context


def process_gone(pid: int) -> bool:
    """Return whether `pid` has exited (a zombie that awaits reaping counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # ProcessLookupError: reaped between the open and the read.
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request_raw(url: str, method: str, target: str) -> RawResponse:
    """Send `target` byte for byte, which httpx would normalise, and read the reply."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return RawResponse(response.status, response.headers, response.read())
    finally:
        connection.close()


def deploy(
    client: httpx.Client,
    service: str,
    env_process: str,
    *,
    method: str = "POST",
    **fields: Any,
) -> httpx.Response:
    """Send a FunctionDeployment and return the provider's response."""
    body = {"service": service, "envProcess": env_process, **fields}
    return client.request(method, "/system/functions", json=body)


def http_function_command(script_path: Path) -> str:
    """Return the envProcess that runs the echo server script."""
    return f"{sys.executable} {script_path}"


@pytest.fixture
def settings(tmp_path: Path) -> LocalProviderSettings:
    return LocalProviderSettings(
        state_dir=tmp_path / "state",
        exec_timeout_s=10.0,
        http_start_timeout_s=10.0,
    )


@pytest.fixture
def provider(settings: LocalProviderSettings) -> Iterator[RunningProvider]:
    running = start_provider(settings)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(provider: RunningProvider) -> Iterator[httpx.Client]:
    with provider.client() as http_client:
        yield http_client


@pytest.fixture
def echo_script(tmp_path: Path) -> Path:
    path = tmp_path / "echo_server.py"
    path.write_text(HTTP_FUNCTION_SCRIPT)
    return path


@pytest.fixture
def echo_command(echo_script: Path) -> str:
    return http_function_command(echo_script)
