"""An identity without access to a queue: logged with the queue, and retried.

A moto server of its own enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT lets the
test create the queue first; every later request needs credentials that
moto knows, which the test's fake ones are not).
"""

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import LOOPBACK, free_port, stop_process
from tests.connectors.conftest import FakeGateway, wait_until
from tests.connectors.sqs.conftest import (
    create_queue,
    moto_server_command,
    running_connector,
    sqs_settings,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def enforcing_endpoint(sqs_endpoint: str) -> Iterator[str]:
    """A moto server that checks IAM after its first request."""
    # `sqs_endpoint` sets the fake credentials in the environment.
    port = free_port()
    process = subprocess.Popen(
        [moto_server_command(), "-H", LOOPBACK, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop_process(process)


async def test_access_denied_is_logged_and_retried(
    enforcing_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    queue_url = await create_queue(enforcing_endpoint, "denied")
    name = queue_url.rsplit("/", 1)[1]
    gateway.deploy("locked-out", name)
    config = sqs_settings(enforcing_endpoint, gateway.url, [name])

    async with running_connector(config, wait_ready=False) as running:
        await wait_until(
            lambda: "access denied" in running.source.state,
            timeout_s=15,
            description="access denied in the state",
        )
        assert name in running.source.state

        def tried_again() -> bool:
            lines = [r for r in caplog.records if name in r.getMessage()]
            return len(lines) >= 2

        await wait_until(tried_again, timeout_s=15, description="a second try")
        # Still running: the error is retried, never a crash.
        assert not running.task.done()

    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and name in record.getMessage()
    ]
    assert warnings
    assert "access denied" in warnings[0]
    assert gateway.bodies("locked-out") == []
