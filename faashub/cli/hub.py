"""`faashub up`: the whole hub on one machine, as one process tree.

The hub process starts, in this order: an embedded nats-server with
JetStream (unless `--nats-url` names one), the local provider, the gateway
and the queue-workers. Each component runs as its own child process with the
same code that runs one component per pod on Kubernetes, and each starts only
once the one before it passes its health check, so a worker never pulls a
call before the gateway it invokes through is listening. The hub prints the
gateway URL once every component is healthy.

A component that exits on its own is restarted after a short wait; one that
exits more than MAX_RESTARTS times within RESTART_WINDOW_S stops the hub,
since restarting it again would only hide the fault. Each component keeps its
port across restarts, so the others reach it again without being told.

On Ctrl-C or SIGTERM it stops the children in the reverse order: the workers
first, which finish their calls in flight through the gateway, then the
gateway, the provider and NATS last. Every
child also gets PR_SET_PDEATHSIG, so a hub killed with SIGKILL still takes
its children with it. A lock file in the state folder keeps a second hub off
the same data.
"""

import ctypes
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from faashub import constants, embedded_nats, errors
from faashub.queued_call import is_valid_token
from faashub.settings import HubSettings

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "hub.lock"
STOP_GRACE_S = 15.0
HEALTH_POLL_INTERVAL_S = 0.1
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass
class Child:
    """One component process of the hub, and how to start it again."""

    name: str
    launch: Callable[[], "subprocess.Popen[bytes]"]
    process: "subprocess.Popen[bytes]"
    health_url: str | None = None
    stop_grace_s: float = STOP_GRACE_S
    restarts: deque[float] = field(default_factory=deque)
    """Monotonic times of the recent restarts."""


@dataclass
class Hub:
    """The running components, in start order."""

    children: list[Child] = field(default_factory=list)
    stop_requested: int = 0


def run(settings: HubSettings) -> int:
    """Start the hub, wait for a stop signal or a crash, and stop everything."""
    state_dir = settings.state_dir.expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_state_dir(state_dir)
    if not _is_loopback(settings.host):
        logger.warning(
            "the gateway listens on %s, so anyone who reaches that address can "
            "deploy functions, which run commands as this user; listen on "
            "127.0.0.1 unless this network is trusted",
            settings.host,
        )
    hub = Hub()
    previous_handlers = _install_signal_handlers(hub)
    try:
        gateway_port = _check_gateway_port(settings.host, settings.port)
        _start_components(hub, settings, state_dir=state_dir, gateway_port=gateway_port)
        url = f"http://{_client_host(settings.host)}:{gateway_port}"
        print(f"faashub is up: gateway {url}", flush=True)
        logger.info("hub started with state in %s", state_dir)
        return _supervise(hub)
    finally:
        _stop_all(hub)
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
        lock.close()


def _lock_state_dir(state_dir: Path) -> IO[str]:
    lock_path = state_dir / LOCK_FILE_NAME
    lock = lock_path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise errors.HubStartError(
            f"Another faashub hub (pid {holder}) is using the state directory "
            f"{state_dir}. Stop it, or pass --state-dir to use another folder."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _check_gateway_port(host: str, port: int) -> int:
    """Fail at once if the gateway's port is taken; return the port to use."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # Same option as uvicorn, so a port in TIME_WAIT is not reported as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise errors.HubStartError(
                f"Cannot listen on {host}:{port} ({exc.strerror}). Stop what uses "
                "that port, or pass --port (or --host) to pick another."
            ) from exc
        bound_port: int = probe.getsockname()[1]
        return bound_port


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _start_components(
    hub: Hub, settings: HubSettings, *, state_dir: Path, gateway_port: int
) -> None:
    internal_host = "127.0.0.1"
    log_dir = state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    common = ["--log-level", settings.log_level, "--log-format", settings.log_format]

    nats_url = settings.nats_url
    if not nats_url:
        nats_port = _free_port()

        def launch_nats() -> "subprocess.Popen[bytes]":
            return embedded_nats.start(
                host=internal_host,
                port=nats_port,
                store_dir=state_dir / "nats",
                log_path=log_dir / "nats.log",
                timeout_s=settings.start_timeout_s,
                preexec_fn=_die_with_parent,
            )

        hub.children.append(Child("nats-server", launch_nats, launch_nats()))
        nats_url = f"nats://{internal_host}:{nats_port}"
        logger.info("embedded nats-server listens on %s", nats_url)

    provider_port = _free_port()
    provider_url = f"http://{internal_host}:{provider_port}"
    _start_child(
        hub,
        "provider",
        [
            "provider",
            "local",
            "--host",
            internal_host,
            "--port",
            str(provider_port),
            "--state-dir",
            str(state_dir),
            "--exec-timeout-s",
            str(settings.exec_timeout_s),
            *common,
        ],
        health_url=f"{provider_url}/healthz",
        start_timeout_s=settings.start_timeout_s,
    )
    gateway_url = f"http://{_client_host(settings.host)}:{gateway_port}"
    _start_child(
        hub,
        "gateway",
        [
            "gateway",
            "--host",
            settings.host,
            "--port",
            str(gateway_port),
            "--provider-url",
            provider_url,
            "--nats-url",
            nats_url,
            "--upstream-timeout-s",
            str(settings.upstream_timeout_s),
            *common,
        ],
        health_url=f"{gateway_url}/healthz",
        start_timeout_s=settings.start_timeout_s,
    )
    queues = [constants.DEFAULT_QUEUE, *_named_queues(settings.queues)]
    for queue in queues:
        worker_health_port = _free_port()
        name = (
            "queue-worker"
            if queue == constants.DEFAULT_QUEUE
            else f"queue-worker-{queue}"
        )
        _start_child(
            hub,
            name,
            [
                "queue-worker",
                "--queue",
                queue,
                "--gateway-url",
                gateway_url,
                "--nats-url",
                nats_url,
                "--health-host",
                internal_host,
                "--health-port",
                str(worker_health_port),
                "--upstream-timeout-s",
                str(settings.upstream_timeout_s),
                "--max-inflight",
                str(settings.max_inflight),
                *common,
            ],
            health_url=f"http://{internal_host}:{worker_health_port}/healthz",
            start_timeout_s=settings.start_timeout_s,
            # The worker drains calls in flight before it exits.
            stop_grace_s=45.0,
        )
    if settings.kafka_brokers or settings.kafka_dev_broker:
        _start_kafka_connector(
            hub, settings, gateway_url=gateway_url, common=common, host=internal_host
        )


def _start_kafka_connector(
    hub: Hub, settings: HubSettings, *, gateway_url: str, common: list[str], host: str
) -> None:
    health_port = _free_port()
    broker = (
        ["--dev-broker"]
        if settings.kafka_dev_broker
        else ["--brokers", settings.kafka_brokers]
    )
    _start_child(
        hub,
        "kafka-connector",
        [
            "connector",
            "kafka",
            "--gateway-url",
            gateway_url,
            *broker,
            "--health-host",
            host,
            "--health-port",
            str(health_port),
            *common,
        ],
        # The connector returns 503 until it reaches the brokers, which it
        # retries on its own; that must not fail the hub's start.
        health_url=None,
        start_timeout_s=settings.start_timeout_s,
        stop_grace_s=20.0,
    )


def _named_queues(text: str) -> list[str]:
    queues = [queue.strip() for queue in text.split(",") if queue.strip()]
    for queue in queues:
        if not is_valid_token(queue):
            raise errors.SettingsError(
                f"Invalid queue name {queue!r} in --queues: use letters, digits, "
                "'-' and '_'."
            )
    return [
        queue for queue in dict.fromkeys(queues) if queue != constants.DEFAULT_QUEUE
    ]


def _start_child(
    hub: Hub,
    name: str,
    arguments: list[str],
    *,
    health_url: str | None,
    start_timeout_s: float,
    stop_grace_s: float = STOP_GRACE_S,
) -> None:
    if hub.stop_requested:
        raise errors.HubStartError("The hub was asked to stop while starting.")

    def launch() -> "subprocess.Popen[bytes]":
        return subprocess.Popen(
            [sys.executable, "-m", "faashub", *arguments],
            stdin=subprocess.DEVNULL,
            # Own session: Ctrl-C reaches only the hub, which stops them in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    process = launch()
    child = Child(
        name, launch, process, health_url=health_url, stop_grace_s=stop_grace_s
    )
    hub.children.append(child)
    logger.info("started %s (pid %d)", name, process.pid)
    _wait_until_healthy(hub, child, timeout_s=start_timeout_s)


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the hub process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        # Not Linux: the children are still stopped by a normal hub exit.
        pass


def _wait_until_healthy(hub: Hub, child: Child, *, timeout_s: float) -> None:
    if child.health_url is None:
        return
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    with httpx.Client(timeout=1.0) as client:
        while True:
            if hub.stop_requested:
                raise errors.HubStartError("The hub was asked to stop while starting.")
            code = child.process.poll()
            if code is not None:
                raise errors.HubStartError(
                    f"The {child.name} exited with code {code} while starting; "
                    "its log is above."
                )
            try:
                response = client.get(child.health_url)
                if response.status_code == 200:
                    logger.info("%s is healthy", child.name)
                    return
                last_problem = f"HTTP {response.status_code}: {response.text.strip()}"
            except httpx.TransportError as exc:
                last_problem = exc.__class__.__name__
            if time.monotonic() > deadline:
                raise errors.HubStartError(
                    f"The {child.name} did not become healthy within {timeout_s:g} s "
                    f"(last check: {last_problem}). Raise --start-timeout-s if this "
                    "machine is slow."
                )
            time.sleep(HEALTH_POLL_INTERVAL_S)


def _install_signal_handlers(hub: Hub) -> dict[int, Callable[..., object] | int | None]:
    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        hub.stop_requested = signal_number

    previous: dict[int, Callable[..., object] | int | None] = {}
    for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signal_number] = signal.signal(signal_number, request_stop)
    return previous


def _supervise(hub: Hub) -> int:
    """Restart crashed components until a stop signal (exit 0) or a crash loop (1)."""
    while not hub.stop_requested:
        for child in hub.children:
            code = child.process.poll()
            if code is not None and not _restart(hub, child, code):
                return 1
        time.sleep(0.2)
    logger.info("stopping the hub (signal %d)", hub.stop_requested)
    return 0


def _restart(hub: Hub, child: Child, code: int) -> bool:
    """Start a component that exited again, unless it is crashing in a loop."""
    now = time.monotonic()
    while child.restarts and now - child.restarts[0] > RESTART_WINDOW_S:
        child.restarts.popleft()
    if len(child.restarts) >= MAX_RESTARTS:
        logger.error(
            "%s exited with code %s, its %d. exit within %g s; stopping the hub",
            child.name,
            code,
            len(child.restarts) + 1,
            RESTART_WINDOW_S,
        )
        return False
    logger.warning(
        "%s exited with code %s; restarting it in %g s",
        child.name,
        code,
        RESTART_DELAY_S,
    )
    deadline = now + RESTART_DELAY_S
    while time.monotonic() < deadline:
        if hub.stop_requested:
            return True
        time.sleep(0.05)
    child.restarts.append(time.monotonic())
    try:
        child.process = child.launch()
    except errors.HubStartError as exc:
        logger.error("%s could not be restarted: %s", child.name, exc)
        return False
    logger.info("restarted %s (pid %d)", child.name, child.process.pid)
    return True


def _stop_all(hub: Hub) -> None:
    for child in reversed(hub.children):
        _stop_child(child)
    hub.children.clear()


def _stop_child(child: Child) -> None:
    process = child.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=child.stop_grace_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s did not stop within %g s; killing it",
                child.name,
                child.stop_grace_s,
            )
            process.kill()
            process.wait()
    logger.info("stopped %s", child.name)
