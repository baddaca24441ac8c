"""`faashub.health.start_health_listener` on a real loopback port."""

import logging
import socket

import httpx
import pytest

from faashub import errors
from faashub.health import start_health_listener
from tests.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.timeout(20)


async def test_healthz_follows_state() -> None:
    state = "connecting"
    port = free_port()

    async def render_metrics() -> tuple[bytes, str]:
        return b"demo_up 1\n", "text/plain; version=0.0.4"

    runner = await start_health_listener(
        state=lambda: state, render_metrics=render_metrics, host=LOOPBACK, port=port
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
            waiting = await client.get("/healthz")
            state = "ready"
            ready = await client.get("/healthz")
            metrics = await client.get("/metrics")
    finally:
        await runner.cleanup()

    assert waiting.status_code == 503
    assert waiting.text == "connecting"
    assert ready.status_code == 200
    assert ready.text == "OK"
    assert metrics.status_code == 200
    assert metrics.text == "demo_up 1\n"
    assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4"


async def test_ready_logged_on_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.health_listener")
    caplog.set_level(logging.INFO, logger=log.name)
    port = free_port()

    async def render_metrics() -> tuple[bytes, str]:
        return b"", "text/plain"

    runner = await start_health_listener(
        state=lambda: "ready",
        render_metrics=render_metrics,
        host=LOOPBACK,
        port=port,
        log=log,
        log_context={"queue": "reports"},
    )
    await runner.cleanup()

    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.getMessage() == "health listener ready"
    assert record.__dict__["ctx"] == {
        "queue": "reports",
        "address": f"{LOOPBACK}:{port}",
    }


async def test_busy_port_raises_settings_error() -> None:
    async def render_metrics() -> tuple[bytes, str]:
        return b"", "text/plain"

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(errors.SettingsError, match="--health-port"):
            await start_health_listener(
                state=lambda: "ready",
                render_metrics=render_metrics,
                host=LOOPBACK,
                port=port,
            )
