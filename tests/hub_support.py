"""Helpers that run `faashub up` and the CLI as a user would, in subprocesses."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.conftest import LOOPBACK, free_port

HUB_START_TIMEOUT_S = 60.0


@dataclass
class RunningHub:
    url: str
    port: int
    state_dir: Path
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None
    auth: httpx.BasicAuth | None = None
    """The hub's generated gateway credentials; None when it runs with --no-auth."""

    def nats_url(self) -> str:
        """Return the URL of the hub's embedded NATS server, from its log."""
        for line in self.output:
            found = re.search(r"embedded nats-server listens on (nats://\S+)", line)
            if found:
                return found.group(1)
        raise AssertionError(
            "the hub did not log its NATS URL:\n" + "".join(self.output)
        )

    def nats_token(self) -> str:
        """Return the token that the hub's embedded NATS server requires."""
        return (self.state_dir / "credentials" / "nats-token").read_text().strip()


# State folders of the running hubs by gateway URL, so that `faashub()` lets
# the CLI find a hub's credentials as it would in the default state folder.
_HUB_STATE_DIRS: dict[str, Path] = {}


def faashub(
    *arguments: str, gateway: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run one `faashub` user command against `gateway`."""
    env = dict(os.environ)
    state_dir = _HUB_STATE_DIRS.get(gateway.rstrip("/"))
    if state_dir is not None:
        env["FAASHUB_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "faashub", *arguments, "--gateway", gateway],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def run_up(
    state_dir: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `faashub up` on a free port with `arguments`, for a start that must fail."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "faashub",
            "up",
            "--port",
            str(free_port()),
            "--state-dir",
            str(state_dir),
            *arguments,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def start_hub(
    state_dir: Path,
    port: int | None = None,
    *,
    extra_args: Sequence[str] = (),
    auth: bool = True,
) -> RunningHub:
    """Start `faashub up` and wait for the line that announces the gateway URL.

    With `auth` (the hub's default) the gateway requires the credentials that
    the hub generates, and `hub.auth` contains them for direct requests to
    /system; without it the hub runs with --no-auth.
    """
    port = port or free_port()
    if not auth:
        extra_args = [*extra_args, "--no-auth"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faashub",
            "up",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    hub = RunningHub(f"http://{LOOPBACK}:{port}", port, state_dir, process)
    assert process.stdout is not None
    deadline = time.monotonic() + HUB_START_TIMEOUT_S
    for line in process.stdout:
        hub.output.append(line)
        if line.startswith("faashub is up"):
            break
        if time.monotonic() > deadline:
            break
    else:
        process.wait(timeout=10)
        process.stdout.close()
        raise AssertionError(
            "faashub up exited before it was up:\n" + "".join(hub.output)
        )
    if not hub.output[-1].startswith("faashub is up"):
        stop_hub(hub)
        raise AssertionError("faashub up did not come up:\n" + "".join(hub.output))
    if auth:
        folder = state_dir / "credentials"
        hub.auth = httpx.BasicAuth(
            (folder / "basic-auth-user").read_text(),
            (folder / "basic-auth-password").read_text(),
        )
    _HUB_STATE_DIRS[hub.url] = state_dir
    # Keep draining the output so a full pipe never blocks the hub.
    hub.drain = threading.Thread(target=_drain, args=(hub,), daemon=True)
    hub.drain.start()
    return hub


def _drain(hub: RunningHub) -> None:
    assert hub.process.stdout is not None
    for line in hub.process.stdout:
        hub.output.append(line)


def stop_hub(hub: RunningHub, sig: int = signal.SIGTERM) -> int:
    _HUB_STATE_DIRS.pop(hub.url, None)
    if hub.process.poll() is None:
        hub.process.send_signal(sig)
        try:
            hub.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hub.process.kill()
            hub.process.wait()
    if hub.drain is not None:
        hub.drain.join(timeout=10)
    if hub.process.stdout is not None:
        hub.process.stdout.close()
    return hub.process.returncode


@contextmanager
def running_hub(
    state_dir: Path,
    port: int | None = None,
    *,
    extra_args: Sequence[str] = (),
    auth: bool = True,
) -> Iterator[RunningHub]:
    hub = start_hub(state_dir, port, extra_args=extra_args, auth=auth)
    try:
        yield hub
    finally:
        stop_hub(hub)


def descendants(pid: int) -> set[int]:
    """Return the PIDs of every living process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent PID is the second field after the parenthesised command.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ReceivedCallback:
    headers: httpx.Headers
    """Case-insensitive, as HTTP header names are."""
    body: bytes


class CallbackReceiver:
    """A small HTTP server that records every POST it receives."""

    def __init__(self) -> None:
        self.received: list[ReceivedCallback] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        ReceivedCallback(httpx.Headers(self.headers.items()), body)
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/callback"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "CallbackReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[ReceivedCallback]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        with self._lock:
            raise AssertionError(
                f"expected {count} callbacks within {timeout_s} s, "
                f"got {len(self.received)}"
            )


HTTP_FUNCTION_SOURCE = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        reply = json.dumps({
            "method": self.command, "path": self.path,
            "body": body.decode(), "pid": os.getpid(),
        }).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Echo", "yes")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_GET = do_POST = do_PUT = _answer
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def write_http_function(folder: Path) -> Path:
    script = folder / "echo_server.py"
    script.write_text(HTTP_FUNCTION_SOURCE)
    return script


def parse_json(data: bytes) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(data)
    return parsed
