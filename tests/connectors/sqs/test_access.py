"""An identity without access to a queue: logged with the queue, and retried.

A moto server of its own enforces IAM. INITIAL_NO_AUTH_ACTION_COUNT lets the
test create the queue first, and every later request needs credentials that
moto has on record, which the test's fake ones are not.
"""

import logging
from collections.abc import Iterator

import pytest

from tests.connectors.conftest import FakeGateway, wait_until
from tests.connectors.sqs.conftest import (
    create_queue,
    moto_server,
    running_connector,
    sqs_settings,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def enforcing_endpoint(sqs_endpoint: str) -> Iterator[str]:
    """Yield the URL of a moto server that checks IAM after its first request."""
    # `sqs_endpoint` sets the fake credentials in the environment.
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as url:
        yield url


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
