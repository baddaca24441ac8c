"""The SQS connector's final outcomes and setting errors, against moto.

Covers the attempt count of the final line, the last delivery that a
redrive policy allows, a dead-letter queue that does not exist, the region
in a missing queue's error, and an HTML error page from the endpoint.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.conftest import LOOPBACK, free_port
from tests.connectors.conftest import FakeGateway, unique, wait_until
from tests.connectors.sqs.conftest import (
    create_queue,
    queue_counts,
    queue_name,
    receive_all,
    running_connector,
    send_messages,
    sqs_client,
    sqs_settings,
)

ERROR_PAGE = (
    "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>"
    + "The server encountered an internal error. " * 40
    + "</p>\n"
)


def final_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.getMessage() == "function invocation failed"
    ]


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.getMessage().startswith("invocation failed, retrying")
    ]


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "connectors.core.outage" and record.levelno == logging.WARNING
    ]


@contextlib.asynccontextmanager
async def failing_endpoint() -> AsyncIterator[str]:
    """Run an HTTP server that responds to every request with an HTML 500 page."""

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text=ERROR_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(40)
async def test_final_line_counts_every_attempt(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_queue(sqs_endpoint, "counted")
    gateway.deploy("failing", queue_name(url))
    gateway.respond("failing", status=500)
    config = sqs_settings(sqs_endpoint, gateway.url, [url], retry_attempts=3)

    caplog.set_level(logging.WARNING)
    async with running_connector(config):
        await send_messages(sqs_endpoint, url, [b"doomed"])
        await wait_until(
            lambda: bool(final_failures(caplog)),
            timeout_s=20,
            description="the final failure line",
        )
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)

    [line] = final_failures(caplog)
    assert line.ctx["attempts"] == 3  # type: ignore[attr-defined]
    assert line.ctx["receive_count"] == 3  # type: ignore[attr-defined]
    assert len(gateway.received("failing")) == 3


@pytest.mark.timeout(40)
async def test_redrive_limit_ends_the_attempts(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    dead = await create_queue(sqs_endpoint, "capped-dlq")
    url = await create_queue(
        sqs_endpoint, "capped", redrive_to=dead, max_receive_count=2
    )
    gateway.deploy("stubborn", queue_name(url))
    gateway.respond("stubborn", status=500)
    config = sqs_settings(sqs_endpoint, gateway.url, [url], retry_attempts=5)

    caplog.set_level(logging.WARNING)
    async with running_connector(config) as running:
        await send_messages(sqs_endpoint, url, [b"capped"])
        [moved] = await receive_all(sqs_endpoint, dead, count=1)
        metrics = running.connector.metrics.render().decode()

    assert moved["Body"] == "capped"
    assert len(gateway.received("stubborn")) == 2
    [line] = final_failures(caplog)
    assert line.ctx["attempts"] == 2  # type: ignore[attr-defined]
    assert len(retry_lines(caplog)) == 1
    for expected in (
        'faashub_connector_failed_total{connector="sqs",'
        'function="stubborn.openfaas-fn"} 1.0',
        # Attempts after the first: only the second delivery.
        'faashub_connector_retried_total{connector="sqs",'
        'function="stubborn.openfaas-fn"} 1.0',
    ):
        assert expected in metrics, metrics


@pytest.mark.timeout(40)
async def test_missing_dead_letter_queue_holds_polling(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_queue(sqs_endpoint, "guarded")
    dead_name = unique("absent-dlq")
    gateway.deploy("guarded", queue_name(url))
    config = sqs_settings(sqs_endpoint, gateway.url, [url], dead_letter_queue=dead_name)

    caplog.set_level(logging.WARNING)
    async with running_connector(config, wait_ready=False) as running:
        await wait_until(
            lambda: "does not exist" in running.source.state,
            description="the missing dead-letter queue in the state",
        )
        state = running.source.state
        assert dead_name in state
        assert "--dead-letter-queue (FAASHUB_DEAD_LETTER_QUEUE)" in state
        assert "region us-east-1" in state

        # No queue is polled while a failure would have nowhere to go.
        await send_messages(sqs_endpoint, url, [b"waiting"])
        await asyncio.sleep(1.5)
        assert gateway.bodies("guarded") == []

        async with sqs_client(sqs_endpoint) as client:
            await client.create_queue(QueueName=dead_name)
        await wait_until(
            lambda: gateway.bodies("guarded") == [b"waiting"],
            timeout_s=15,
            description="the message once the dead-letter queue exists",
        )
        assert running.source.state == "ready"

    warnings = [line for line in outage_warnings(caplog) if dead_name in line]
    assert warnings
    assert "--dead-letter-queue" in warnings[0]
    assert "--sqs-queues" not in warnings[0]


@pytest.mark.timeout(30)
async def test_missing_queue_names_region(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    # moto keeps queues per region, so this queue is missing in eu-west-1.
    url = await create_queue(sqs_endpoint, "elsewhere")
    name = queue_name(url)
    gateway.deploy("elsewhere", name)
    config = sqs_settings(sqs_endpoint, gateway.url, [name], region="eu-west-1")

    async with running_connector(config, wait_ready=False) as running:
        await wait_until(
            lambda: "does not exist" in running.source.state,
            description="the missing queue in the state",
        )
        state = running.source.state

    assert "region eu-west-1" in state
    assert "--sqs-queues (FAASHUB_SQS_QUEUES)" in state


@pytest.mark.timeout(40)
async def test_error_page_logged_in_one_line(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.deploy("unreached", "broken-endpoint")
    caplog.set_level(logging.WARNING)
    async with failing_endpoint() as endpoint:
        config = sqs_settings(endpoint, gateway.url, ["broken-endpoint"])
        async with running_connector(config, wait_ready=False):
            await wait_until(
                lambda: bool(outage_warnings(caplog)),
                timeout_s=20,
                description="the outage warning",
            )

    [warning] = outage_warnings(caplog)
    assert "500" in warning
    assert "Internal Server Error" in warning
    assert "\n" not in warning
    assert len(warning) < 500
    assert warning.endswith("...")
