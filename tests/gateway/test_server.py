"""`gateway.server.run`: the process contract the `faashub up` supervisor uses."""

import gc
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from faashub import errors, gc_tuning
from gateway import server
from tests.conftest import LOOPBACK, free_port, stop_process

pytestmark = pytest.mark.timeout(30)

RUN_GATEWAY = """
import gc
import sys
from faashub import logs
from faashub.settings import GatewaySettings
from gateway import server

logs.configure(level="INFO")
server.run(GatewaySettings(port=int(sys.argv[1]), nats_url=sys.argv[2],
                           provider_url=sys.argv[3]))
print(f"run returned, gc frozen: {gc.get_freeze_count() > 0}", flush=True)
"""

RUN_GATEWAY_ON_TAKEN_PORT = """
import sys
from faashub import errors, logs
from faashub.settings import GatewaySettings
from gateway import server

logs.configure(level="INFO")
try:
    server.run(GatewaySettings(host="127.0.0.1", port=int(sys.argv[1]),
                               nats_url=sys.argv[2]))
except errors.HubStartError as exc:
    print(f"HubStartError: {exc}", flush=True)
"""
# A gateway whose port is taken exits once it has imported its modules, which
# takes a few seconds on a loaded machine.
TAKEN_PORT_EXIT_TIMEOUT_S = 20.0


def wait_for_health(url: str, *, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/healthz did not return 200 within {timeout_s} s")


@pytest.mark.parametrize(
    "stop_signal",
    [
        pytest.param(signal.SIGTERM, id="sigterm"),
        pytest.param(signal.SIGINT, id="sigint"),
    ],
)
def test_run_stops_on_signal(nats_url: str, stop_signal: signal.Signals) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RUN_GATEWAY,
            str(port),
            nats_url,
            f"http://{LOOPBACK}:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_health(f"http://{LOOPBACK}:{port}")
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        stop_process(process)

    assert process.returncode == 0, stderr.decode()
    assert stdout == b"run returned, gc frozen: True\n"
    assert b"gateway stopped" in stderr
    assert b"closed nats connection" in stderr


def test_run_port_in_use_raises(nats_url: str) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_GATEWAY_ON_TAKEN_PORT, str(port), nats_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            stdout, stderr = process.communicate(timeout=TAKEN_PORT_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(
                f"the gateway did not exit within {TAKEN_PORT_EXIT_TIMEOUT_S:g} s "
                f"although port {port} was taken; its log:\n{stderr.decode()}"
            )

    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith(
        f"HubStartError: Cannot listen on {LOOPBACK}:{port}: Address already in use."
    )
    # The app never started, so nothing connected to NATS.
    assert b"gateway started" not in stderr


def test_listen_port_in_use_names_address() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(errors.HubStartError, match=f"{LOOPBACK}:{port}"):
            server.listen(LOOPBACK, port)


def test_tune_gc_freezes_and_raises_gen0() -> None:
    threshold = gc.get_threshold()
    try:
        gc_tuning.tune_gc()
        frozen = gc.get_freeze_count()
        tuned = gc.get_threshold()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

    assert frozen > 0
    assert tuned == (gc_tuning.GEN0_THRESHOLD, *threshold[1:])
