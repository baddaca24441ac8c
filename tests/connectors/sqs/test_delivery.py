"""The SQS connector against moto: deletes, retries, dead letters, FIFO order."""

import asyncio
import base64
import logging
from typing import Any

import pytest

from connectors.sqs.source import SqsSource
from faashub import errors
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

ATTRIBUTES = {
    "colour": {"DataType": "String", "StringValue": "blue"},
    "size": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffraw"},
}


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.getMessage().startswith("invocation failed, retrying")
    ]


async def test_batch_reaches_both_functions(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    url = await create_queue(sqs_endpoint, "batch")
    # One function subscribes by queue name, the other by queue URL.
    gateway.deploy("by-name", queue_name(url))
    gateway.deploy("by-url", url)
    gateway.respond("by-url", delay_s=1.5)
    bodies = [f"b{number}".encode() for number in range(10)]
    config = sqs_settings(sqs_endpoint, gateway.url, [url])

    async with running_connector(config):
        await send_messages(sqs_endpoint, url, bodies, attributes=ATTRIBUTES)
        await wait_until(
            lambda: len(gateway.received("by-name")) == 10,
            description="the batch at the fast function",
        )
        # The slow function still runs: nothing is deleted yet.
        assert await queue_counts(sqs_endpoint, url) == (0, 10)
        await wait_until(
            lambda: len(gateway.received("by-url")) == 10 and gateway.active == 0,
            description="the batch at the slow function",
        )
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)

    assert sorted(gateway.bodies("by-name")) == sorted(bodies)
    assert sorted(gateway.bodies("by-url")) == sorted(bodies)
    call = gateway.received("by-name")[0]
    assert call.header("X-SQS-Queue-URL") == url
    assert call.header("X-Topic") == queue_name(url)
    assert call.header("X-SQS-Message-ID")
    assert call.header("X-SQS-Receive-Count") == "1"
    assert (call.header("X-SQS-Sent-Timestamp") or "").isdigit()
    assert call.header("X-SQS-Attr-colour") == "blue"
    assert call.header("X-SQS-Attr-size") == "42"
    assert call.header("X-SQS-Attr-blob-Enc") == "b64"
    assert base64.b64decode(call.header("X-SQS-Attr-blob") or "") == b"\x00\xffraw"
    assert call.header("X-SQS-Attr-colour-Enc") is None


@pytest.mark.timeout(40)
async def test_failed_function_alone_gets_retry(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    url = await create_queue(sqs_endpoint, "partial")
    gateway.deploy("steady", queue_name(url))
    gateway.deploy("flaky", queue_name(url))
    gateway.respond("flaky", statuses=[500])
    config = sqs_settings(sqs_endpoint, gateway.url, [url])

    async with running_connector(config):
        await send_messages(sqs_endpoint, url, [b"once"])
        await wait_until(
            lambda: (
                len(gateway.received("flaky")) == 1
                and len(gateway.received("steady")) == 1
            ),
            description="the first delivery",
        )
        # Hidden for the backoff, not deleted, while one function failed.
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 1)
        await wait_until(
            lambda: len(gateway.received("flaky")) == 2,
            description="the retry",
        )
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)

    assert gateway.bodies("steady") == [b"once"]
    [first, second] = gateway.received("flaky")
    assert first.header("X-Call-Id") == second.header("X-Call-Id")
    assert second.header("X-SQS-Receive-Count") == "2"


@pytest.mark.timeout(40)
async def test_visibility_grows_with_failures(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_queue(sqs_endpoint, "backoff")
    gateway.deploy("flaky", queue_name(url))
    gateway.respond("flaky", statuses=[500, 503])
    config = sqs_settings(
        sqs_endpoint, gateway.url, [url], retry_min_wait_s=1.0, retry_max_wait_s=8.0
    )

    caplog.set_level(logging.WARNING, logger="connectors.sqs.source")
    async with running_connector(config):
        await send_messages(sqs_endpoint, url, [b"again"])
        await wait_until(
            lambda: len(gateway.received("flaky")) == 3,
            timeout_s=20,
            description="three attempts",
        )
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)

    calls = gateway.received("flaky")
    assert [call.header("X-SQS-Receive-Count") for call in calls] == ["1", "2", "3"]
    visibilities = [
        record.ctx["visibility_s"]  # type: ignore[attr-defined]
        for record in retry_lines(caplog)
    ]
    # The wait doubles from retry_min_wait_s, plus up to half of it of jitter.
    assert visibilities[0] in (1, 2)
    assert visibilities[1] in (2, 3)
    # SQS hid the message for those times: no earlier delivery came.
    first_gap_s = calls[1].received_s - calls[0].received_s
    second_gap_s = calls[2].received_s - calls[1].received_s
    assert first_gap_s >= visibilities[0] - 0.1
    assert second_gap_s >= visibilities[1] - 0.1


@pytest.mark.timeout(40)
async def test_retry_after_sets_visibility(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_queue(sqs_endpoint, "later")
    gateway.deploy("busy", queue_name(url))
    gateway.respond("busy", statuses=[429], reply_headers={"Retry-After": "2"})
    # The backoff alone would be 1 s; Retry-After counts up to this maximum.
    config = sqs_settings(sqs_endpoint, gateway.url, [url], retry_max_wait_s=4.0)

    caplog.set_level(logging.WARNING, logger="connectors.sqs.source")
    async with running_connector(config):
        await send_messages(sqs_endpoint, url, [b"wait"])
        await wait_until(
            lambda: len(gateway.received("busy")) == 2,
            timeout_s=15,
            description="the attempt after Retry-After",
        )

    [retry] = retry_lines(caplog)
    assert retry.ctx["visibility_s"] == 2  # type: ignore[attr-defined]
    first, second = gateway.received("busy")
    assert second.received_s - first.received_s >= 1.9


@pytest.mark.timeout(40)
async def test_poison_message_under_redrive_policy(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    dead = await create_queue(sqs_endpoint, "redrive-dlq")
    url = await create_queue(sqs_endpoint, "redrive", redrive_to=dead)
    gateway.deploy("picky", queue_name(url))
    gateway.respond("picky", status_for_body={b"poison": 422})
    config = sqs_settings(sqs_endpoint, gateway.url, [url])

    async with running_connector(config):
        await send_messages(
            sqs_endpoint, url, [b"poison", b"fine"], attributes=ATTRIBUTES
        )
        [moved] = await receive_all(sqs_endpoint, dead, count=1)

    assert moved["Body"] == "poison"
    assert moved["MessageAttributes"]["colour"]["StringValue"] == "blue"
    assert moved["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\xffraw"
    # A final failure is not invoked again while SQS moves the message.
    assert gateway.bodies("picky").count(b"poison") == 1
    assert b"fine" in gateway.bodies("picky")
    assert await queue_counts(sqs_endpoint, url) == (0, 0)


@pytest.mark.timeout(40)
async def test_poison_message_to_configured_queue(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    dead = await create_queue(sqs_endpoint, "configured-dlq")
    url = await create_queue(sqs_endpoint, "configured")
    gateway.deploy("broken", queue_name(url))
    gateway.respond("broken", status=500)
    config = sqs_settings(
        sqs_endpoint, gateway.url, [url], dead_letter_queue=dead, retry_attempts=2
    )

    async with running_connector(config) as running:
        await send_messages(sqs_endpoint, url, [b"poison"], attributes=ATTRIBUTES)
        [copy] = await receive_all(sqs_endpoint, dead, count=1)
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)
        metrics = running.connector.metrics.render().decode()

    topic = queue_name(url)
    for line in (
        # The retry comes back through SQS, as a second receipt.
        f'faashub_connector_consumed_total{{connector="sqs",topic="{topic}"}} 2.0',
        f'faashub_connector_dead_lettered_total{{connector="sqs",topic="{topic}"}} 1.0',
        'faashub_connector_retried_total{connector="sqs",'
        'function="broken.openfaas-fn"} 1.0',
        'faashub_connector_failed_total{connector="sqs",'
        'function="broken.openfaas-fn"} 1.0',
    ):
        assert line in metrics, metrics

    attributes: dict[str, Any] = copy["MessageAttributes"]
    assert copy["Body"] == "poison"
    assert attributes["faashub-function"]["StringValue"] == "broken.openfaas-fn"
    assert attributes["faashub-status"]["StringValue"] == "500"
    assert "500" in attributes["faashub-error"]["StringValue"]
    assert attributes["faashub-attempts"]["StringValue"] == "2"
    assert attributes["faashub-source-queue"]["StringValue"] == url
    assert attributes["colour"]["StringValue"] == "blue"
    assert attributes["size"]["StringValue"] == "42"
    assert gateway.bodies("broken") == [b"poison", b"poison"]


@pytest.mark.timeout(60)
async def test_fifo_failure_holds_its_group(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = await create_queue(sqs_endpoint, "ordered", fifo=True)
    gateway.deploy("ordered", queue_name(url))
    behaviour = gateway.respond("ordered", delay_s=0.05)
    behaviour.status_for_body[b"b1"] = 500
    groups = ["a", "b", "c"] * 4
    bodies = [f"{group}{index // 3}".encode() for index, group in enumerate(groups)]
    config = sqs_settings(sqs_endpoint, gateway.url, [url])

    caplog.set_level(logging.WARNING, logger="connectors.sqs.source")
    async with running_connector(config):
        await send_messages(sqs_endpoint, url, bodies, groups=groups)
        # The retry line is logged once the failed response is back.
        await wait_until(
            lambda: len(retry_lines(caplog)) == 2,
            timeout_s=15,
            description="two failed attempts of b1",
        )
        held_back = gateway.bodies("ordered")
        del behaviour.status_for_body[b"b1"]
        await wait_until(
            lambda: set(gateway.bodies("ordered")) == set(bodies),
            timeout_s=20,
            description="every message",
        )
        await asyncio.sleep(0.3)

    # The other groups finished while b1 failed; b's later messages waited.
    assert {b"a3", b"c3"} <= set(held_back)
    assert not {b"b2", b"b3"} & set(held_back)
    # Order within each group, counting each message's last delivery.
    for group in "abc":
        calls = [
            call.body
            for call in gateway.received("ordered")
            if call.header("X-SQS-Message-Group-ID") == group
        ]
        last_index = {body: index for index, body in enumerate(calls)}
        expected = [f"{group}{number}".encode() for number in range(4)]
        assert sorted(last_index, key=last_index.__getitem__) == expected
    assert gateway.bodies("ordered").count(b"b1") == 3
    assert gateway.bodies("ordered").count(b"a1") == 1


@pytest.mark.timeout(40)
async def test_slow_function_delivered_once(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    url = await create_queue(sqs_endpoint, "slow")
    gateway.deploy("slow", queue_name(url))
    gateway.respond("slow", delay_s=4.0)
    config = sqs_settings(sqs_endpoint, gateway.url, [url], visibility_timeout_s=2)

    async with running_connector(config):
        await send_messages(sqs_endpoint, url, [b"long"])
        await wait_until(
            lambda: gateway.active == 1, description="the function to start"
        )
        # Another consumer polls the queue for longer than the visibility
        # timeout while the function runs, and gets nothing.
        async with sqs_client(sqs_endpoint) as client:
            for _ in range(3):
                response = await client.receive_message(
                    QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=10
                )
                assert response.get("Messages", []) == []
        await wait_until(
            lambda: gateway.active == 0, description="the function to finish"
        )
        await asyncio.sleep(0.3)
        assert await queue_counts(sqs_endpoint, url) == (0, 0)

    assert gateway.bodies("slow") == [b"long"]


@pytest.mark.timeout(40)
async def test_stop_returns_unfinished_messages(
    sqs_endpoint: str, gateway: FakeGateway
) -> None:
    url = await create_queue(sqs_endpoint, "stop")
    gateway.deploy("slow", queue_name(url))
    gateway.respond("slow", delay_s=5.0)
    config = sqs_settings(
        sqs_endpoint,
        gateway.url,
        [url],
        visibility_timeout_s=30,
        drain_timeout_s=0.5,
        max_inflight=2,
    )

    async with running_connector(config) as running:
        await send_messages(sqs_endpoint, url, [b"s1", b"s2", b"s3"])
        await wait_until(lambda: gateway.active == 2, description="two invocations")
        running.source.stop()
        await asyncio.wait_for(running.task, timeout=10)
        # Visible again at once, not after the 30 s visibility timeout.
        assert await queue_counts(sqs_endpoint, url) == (3, 0)


@pytest.mark.timeout(40)
async def test_missing_queue_is_retried(
    sqs_endpoint: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("later")
    url = f"{sqs_endpoint}/123456789012/{name}"
    gateway.deploy("patient", name)
    config = sqs_settings(sqs_endpoint, gateway.url, [name])

    async with running_connector(config, wait_ready=False) as running:
        await wait_until(
            lambda: "does not exist" in running.source.state,
            description="the missing queue in the state",
        )
        async with sqs_client(sqs_endpoint) as client:
            await client.create_queue(QueueName=name)
        await send_messages(sqs_endpoint, url, [b"finally"])
        await wait_until(
            lambda: gateway.bodies("patient") == [b"finally"],
            timeout_s=15,
            description="the message once the queue exists",
        )
        assert running.source.state == "ready"

    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and name in record.getMessage()
    ]
    assert warnings
    assert "does not exist" in warnings[0]


def test_source_without_queues_is_rejected() -> None:
    settings = sqs_settings("http://127.0.0.1:9", "http://127.0.0.1:9", [])

    with pytest.raises(errors.SettingsError, match="--sqs-queues"):
        SqsSource(settings)
