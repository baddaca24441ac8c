"""Status, cancel, delays and named queues of async calls, against real NATS."""

import asyncio
import email.utils
import logging
import time
import urllib.parse
from collections.abc import Callable

import httpx
import nats
import nats.js.api
import pytest

from faashub import constants as shared
from faashub import jetstream
from faashub.call_status import CallState, CallStatus
from faashub.queued_call import call_key, queue_filter_subject
from gateway import constants as gateway_constants
from gateway import delays, errors
from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    NatsServer,
    object_exists,
    stored_messages,
    wait_until_healthy,
    wait_until_unhealthy,
    write_status,
)

pytestmark = pytest.mark.timeout(30)

NS_PER_S = 1_000_000_000


async def queue_call(
    client: httpx.AsyncClient,
    function: str = "echo",
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"x",
) -> str:
    response = await client.post(
        f"/async-function/{function}", content=body, headers=headers or {}
    )
    assert response.status_code == 202, response.text
    return response.headers["X-Call-Id"]


def status_record(call_id: str, state: CallState, **fields: object) -> CallStatus:
    now_ns = time.time_ns()
    values: dict[str, object] = {
        "call_id": call_id,
        "function": "echo",
        "namespace": shared.DEFAULT_NAMESPACE,
        "state": state,
        "attempts": 1,
        "max_attempts": 3,
        "accepted_at_ns": now_ns - NS_PER_S,
        "started_at_ns": now_ns,
        "updated_at_ns": now_ns,
    }
    values.update(fields)
    return CallStatus(**values)  # type: ignore[arg-type]


# Status.


async def test_status_of_queued_call(client: httpx.AsyncClient) -> None:
    call_id = await queue_call(client)

    response = await client.get(f"/async-calls/{call_id}")

    assert response.status_code == 200
    status = response.json()
    assert status["call_id"] == call_id
    assert status["state"] == "queued"
    assert status["function"] == "echo"
    assert status["namespace"] == shared.DEFAULT_NAMESPACE
    assert status["queue"] == "default"
    assert status["attempts"] == 0
    assert status["accepted_at"].endswith("Z")
    assert status["next_attempt_at"] is None


async def test_status_unknown_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/async-calls/no-such-call")

    assert response.status_code == 404
    assert "'no-such-call'" in response.text


async def test_status_from_record(client: httpx.AsyncClient, nats_url: str) -> None:
    call_id = await queue_call(client)
    record = status_record(
        call_id,
        CallState.RETRYING,
        attempts=2,
        last_status=503,
        last_error="status 503",
        next_attempt_at_ns=time.time_ns() + 5 * NS_PER_S,
    )
    await write_status(nats_url, record)

    response = await client.get(f"/async-calls/{call_id}")

    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "retrying"
    assert status["attempts"] == 2
    assert status["last_status"] == 503
    assert status["last_error"] == "status 503"
    assert status["next_attempt_at"].endswith("Z")


async def test_status_of_finished_call(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    # The worker acknowledged the message, so only the record remains.
    record = status_record(
        "done-1", CallState.SUCCEEDED, last_status=200, finished_at_ns=time.time_ns()
    )
    await write_status(nats_url, record)

    response = await client.get("/async-calls/done-1")

    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"
    assert response.json()["last_status"] == 200


def write_final_record_later(nats_url: str, call_id: str) -> "asyncio.Task[None]":
    """Start writing a succeeded record for `call_id` 0.3 s from now."""
    record = status_record(
        call_id, CallState.SUCCEEDED, last_status=200, finished_at_ns=time.time_ns()
    )

    async def write_late() -> None:
        await asyncio.sleep(0.3)
        await write_status(nats_url, record)

    return asyncio.create_task(write_late())


async def test_status_read_after_late_final_record(
    client: httpx.AsyncClient, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker acknowledged the message, and its final record, written
    # without waiting for nats-server's confirmation, becomes readable after
    # the gateway's first read. Longer waits than the defaults keep the test
    # independent of the machine's speed.
    monkeypatch.setattr(gateway_constants, "STATUS_SETTLE_WAITS_S", (0.0, 0.5, 1.0))

    writer = write_final_record_later(nats_url, "late-1")
    response = await client.get("/async-calls/late-1")
    await writer

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"


async def test_cancel_after_late_final_record_409(
    client: httpx.AsyncClient, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_constants, "STATUS_SETTLE_WAITS_S", (0.0, 0.5, 1.0))

    writer = write_final_record_later(nats_url, "late-2")
    response = await client.delete("/async-function/late-2")
    await writer

    assert response.status_code == 409, response.text


async def test_status_call_id_needs_digest_key(client: httpx.AsyncClient) -> None:
    call_id = "order 17/a.b"
    await queue_call(client, headers={"X-Call-Id": call_id})

    quoted = urllib.parse.quote(call_id, safe="")
    response = await client.get(f"/async-calls/{quoted}")

    assert call_key(call_id).startswith("h-")
    assert response.status_code == 200
    assert response.json()["call_id"] == call_id


async def test_status_empty_id_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/async-calls/")

    assert response.status_code == 400
    assert "X-Call-Id" in response.text


async def test_async_calls_other_method_405(client: httpx.AsyncClient) -> None:
    response = await client.post("/async-calls/abc")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, DELETE"


async def test_status_nats_down_503(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    nats_server.stop()
    await wait_until_unhealthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        status = await http_client.get("/async-calls/abc")
        cancel = await http_client.delete("/async-function/abc")

    assert status.status_code == 503
    assert status.headers["X-OpenFaaS-Internal"] == "gateway"
    assert cancel.status_code == 503


# Cancel.


async def test_cancel_queued_call(client: httpx.AsyncClient, nats_url: str) -> None:
    call_id = await queue_call(client)

    response = await client.delete(f"/async-function/{call_id}")

    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"].endswith("Z")
    assert await stored_messages(nats_url) == []
    status = await client.get(f"/async-calls/{call_id}")
    assert status.json()["state"] == "cancelled"


async def test_cancel_by_async_calls_route(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    call_id = await queue_call(client)

    response = await client.delete(f"/async-calls/{call_id}")

    assert response.status_code == 202
    assert await stored_messages(nats_url) == []


async def test_cancel_twice_409(client: httpx.AsyncClient) -> None:
    call_id = await queue_call(client)

    first = await client.delete(f"/async-function/{call_id}")
    second = await client.delete(f"/async-function/{call_id}")

    assert first.status_code == 202
    assert second.status_code == 409
    assert "cancelled" in second.text


async def test_cancel_unknown_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/async-function/never-queued")

    assert response.status_code == 404
    assert "'never-queued'" in response.text


async def test_cancel_retrying_call(client: httpx.AsyncClient, nats_url: str) -> None:
    call_id = await queue_call(client)
    await write_status(nats_url, status_record(call_id, CallState.RETRYING))

    response = await client.delete(f"/async-calls/{call_id}")

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "cancelled"
    assert body["attempts"] == 1
    assert await stored_messages(nats_url) == []


@pytest.mark.parametrize(
    "state",
    [
        pytest.param(CallState.RUNNING, id="running"),
        pytest.param(CallState.SUCCEEDED, id="succeeded"),
        pytest.param(CallState.FAILED, id="failed"),
        pytest.param(CallState.DEAD_LETTERED, id="dead-lettered"),
    ],
)
async def test_cancel_started_call_409(
    client: httpx.AsyncClient, nats_url: str, state: CallState
) -> None:
    call_id = await queue_call(client)
    await write_status(nats_url, status_record(call_id, state))

    response = await client.delete(f"/async-function/{call_id}")

    assert response.status_code == 409
    assert state.value in response.text
    # The queued message is left to the worker that has it.
    assert len(await stored_messages(nats_url)) == 1


async def take_without_ack(nats_url: str) -> None:
    """Take the queued call from the queue's consumer, as a worker holding it does."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        durable = jetstream.worker_durable_name(shared.DEFAULT_QUEUE)
        await js.add_consumer(
            shared.CALLS_STREAM,
            nats.js.api.ConsumerConfig(
                durable_name=durable,
                ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                filter_subject=queue_filter_subject(shared.DEFAULT_QUEUE),
            ),
        )
        subscription = await js.pull_subscribe_bind(durable, shared.CALLS_STREAM)
        [message] = await subscription.fetch(1, timeout=5)
        assert message.metadata.num_delivered == 1
    finally:
        await connection.close()


async def test_cancel_taken_call_after_wait(
    client: httpx.AsyncClient, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker that has the call without a record (waiting for a slot)
    # writes nothing, so the cancel is kept once the record is read again.
    call_id = await queue_call(client)
    await take_without_ack(nats_url)

    with caplog.at_level(logging.DEBUG, logger="gateway.async_calls"):
        response = await client.delete(f"/async-function/{call_id}")

    assert response.status_code == 202, response.text
    assert response.json()["state"] == "cancelled"
    assert "reading its record again to check whether" in caplog.text
    assert await stored_messages(nats_url) == []


async def test_cancel_rejected_after_call_started(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    # The worker that runs the call replaces the cancelled record with its
    # RUNNING one within RUNNING_RECORD_AFTER_S, as queue_worker.status does.
    call_id = await queue_call(client)
    await take_without_ack(nats_url)

    async def worker_writes_running() -> None:
        await asyncio.sleep(shared.RUNNING_RECORD_AFTER_S / 2)
        await write_status(nats_url, status_record(call_id, CallState.RUNNING))

    writer = asyncio.create_task(worker_writes_running())
    response = await client.delete(f"/async-function/{call_id}")
    await writer

    assert response.status_code == 409
    assert "had started before the cancel arrived" in response.text
    assert "'running'" in response.text
    # The worker that runs the call keeps its message.
    connection = await nats.connect(nats_url)
    try:
        info = await connection.jetstream().stream_info(shared.CALLS_STREAM)
    finally:
        await connection.close()
    assert info.state.messages == 1


async def test_cancel_delayed_taken_call_at_once(
    client: httpx.AsyncClient, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    call_id = await queue_call(client, headers={shared.DELAY_SECONDS: "60"})
    await take_without_ack(nats_url)

    with caplog.at_level(logging.DEBUG, logger="gateway.async_calls"):
        response = await client.delete(f"/async-function/{call_id}")

    assert response.status_code == 202, response.text
    assert "reading its record again" not in caplog.text
    assert await stored_messages(nats_url) == []


async def test_cancel_deletes_large_body(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory(max_payload_bytes=64 * 1024)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        call_id = await queue_call(
            http_client, headers={"X-Call-Id": "large-1"}, body=b"L" * 100_000
        )
        assert await object_exists(nats_server.url, call_id)
        response = await http_client.delete(f"/async-function/{call_id}")

    assert response.status_code == 202
    assert not await object_exists(nats_server.url, call_id)


# Delays.


async def test_delay_seconds_sets_not_before(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    before_ns = time.time_ns()
    call_id = await queue_call(client, headers={"X-Delay-Seconds": "30"})
    after_ns = time.time_ns()

    [message] = await stored_messages(nats_url)
    not_before_ns = int(message.headers["Faashub-Not-Before-Ns"])
    assert before_ns + 30 * NS_PER_S <= not_before_ns <= after_ns + 30 * NS_PER_S
    status = (await client.get(f"/async-calls/{call_id}")).json()
    assert status["state"] == "queued"
    assert status["next_attempt_at"] is not None


async def test_fractional_delay_seconds(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await queue_call(client, headers={"X-Delay-Seconds": "1.5"})

    [message] = await stored_messages(nats_url)
    accepted_ns = int(message.headers["Faashub-Accepted-At-Ns"])
    delay_ns = int(message.headers["Faashub-Not-Before-Ns"]) - accepted_ns
    assert delay_ns == 1_500_000_000


@pytest.mark.parametrize(
    "form",
    [
        pytest.param("rfc3339", id="rfc3339"),
        pytest.param("http-date", id="http-date"),
    ],
)
async def test_not_before_absolute_time(
    client: httpx.AsyncClient, nats_url: str, form: str
) -> None:
    start_s = int(time.time()) + 3600
    if form == "rfc3339":
        value = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_s))
    else:
        value = email.utils.formatdate(start_s, usegmt=True)

    await queue_call(client, headers={"X-Not-Before": value})

    [message] = await stored_messages(nats_url)
    assert message.headers["Faashub-Not-Before-Ns"] == str(start_s * NS_PER_S)


async def test_not_before_in_past_runs_now(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await queue_call(client, headers={"X-Not-Before": "2001-01-01T00:00:00+01:00"})

    [message] = await stored_messages(nats_url)
    assert "Faashub-Not-Before-Ns" not in message.headers


async def test_zero_delay_runs_now(client: httpx.AsyncClient, nats_url: str) -> None:
    await queue_call(client, headers={"X-Delay-Seconds": "0"})

    [message] = await stored_messages(nats_url)
    assert "Faashub-Not-Before-Ns" not in message.headers


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        pytest.param({"X-Delay-Seconds": "soon"}, "'soon'", id="not-a-number"),
        pytest.param({"X-Delay-Seconds": "-5"}, "'-5'", id="negative"),
        pytest.param({"X-Delay-Seconds": "nan"}, "'nan'", id="nan"),
        pytest.param({"X-Delay-Seconds": "inf"}, "'inf'", id="infinite"),
        pytest.param({"X-Delay-Seconds": "90000"}, "'90000'", id="beyond-max"),
        pytest.param({"X-Delay-Seconds": "1_000"}, "'1_000'", id="underscore"),
        pytest.param({"X-Delay-Seconds": "1e3"}, "'1e3'", id="exponent"),
        pytest.param({"X-Delay-Seconds": "+5"}, "'+5'", id="plus-sign"),
        pytest.param({"X-Delay-Seconds": "0x10"}, "'0x10'", id="hexadecimal"),
        pytest.param(
            {"X-Delay-Seconds": "\u0661\u0662".encode()},
            "'\u0661\u0662'",
            id="arabic-indic-digits-as-utf-8",
        ),
        pytest.param(
            {"X-Delay-Seconds": "9" * 100 + "x"}, "'" + "9" * 80 + "...'", id="long"
        ),
        pytest.param(
            {"X-Not-Before": "m\u00e4rz".encode()}, "'m\u00e4rz'", id="utf-8-time"
        ),
        pytest.param(
            {"X-Not-Before": "2030-01-02T03:04:05"}, "with a zone", id="naive-time"
        ),
        pytest.param({"X-Not-Before": "tomorrow"}, "'tomorrow'", id="not-a-time"),
        pytest.param(
            {"X-Not-Before": "2999-01-01T00:00:00Z"}, "86400", id="time-beyond-max"
        ),
        pytest.param(
            {"X-Delay-Seconds": "1", "X-Not-Before": "2030-01-02T03:04:05Z"},
            "only one",
            id="both",
        ),
    ],
)
async def test_invalid_delay_400(
    nats_url: str,
    start_gateway: GatewayFactory,
    headers: dict[str, str | bytes],
    named: str,
) -> None:
    gateway = await start_gateway(nats_url=nats_url, max_delay_s=86400)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post(
            "/async-function/echo", content=b"x", headers=headers
        )

    assert response.status_code == 400
    assert named in response.text
    assert await stored_messages(nats_url) == []


# Named queues.


async def test_queue_annotation_routes_call(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    provider.deploy("bulk", annotations={shared.ANNOTATION_QUEUE: "bulk-jobs"})

    call_id = await queue_call(client, "bulk")

    [message] = await stored_messages(nats_url)
    assert message.subject == f"faashub.calls.bulk-jobs.openfaas-fn.bulk.{call_id}"
    assert message.headers["Faashub-Queue"] == "bulk-jobs"
    status = (await client.get(f"/async-calls/{call_id}")).json()
    assert status["queue"] == "bulk-jobs"


async def test_invalid_queue_annotation_warns_once(
    nats_url: str,
    provider: FakeProvider,
    start_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.deploy("odd", annotations={shared.ANNOTATION_QUEUE: "not.valid"})
    # No cache, so every call looks the function up again.
    gateway = await start_gateway(nats_url=nats_url, function_cache_ttl_s=0)
    await wait_until_healthy(gateway.url)

    with caplog.at_level(logging.WARNING, logger="gateway.function_lookup"):
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            await queue_call(http_client, "odd")
            await queue_call(http_client, "odd")

    messages = await stored_messages(nats_url)
    assert [message.subject.split(".")[2] for message in messages] == [
        "default",
        "default",
    ]
    warnings = [
        record for record in caplog.records if "invalid queue" in record.getMessage()
    ]
    assert len(warnings) == 1
    assert len(provider.lookups) == 2


# JetStream layout.


async def test_gateway_applies_its_limits(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, status_ttl_s=600, dead_letter_max_age_s=7200
    )
    await wait_until_healthy(gateway.url)

    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        status = await js.stream_info(f"KV_{shared.STATUS_BUCKET}")
        dead_letters = await js.stream_info(shared.DEAD_LETTER_STREAM)
        bodies = await js.stream_info(f"OBJ_{shared.BODIES_BUCKET}")
    finally:
        await connection.close()
    assert status.config.max_age == 600
    assert dead_letters.config.max_age == 7200
    assert bodies.config.name == f"OBJ_{shared.BODIES_BUCKET}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("٣", id="arabic-indic-digit"),
        pytest.param("1_000", id="underscore"),
        pytest.param(" 5", id="leading-space"),
        pytest.param(".5", id="no-whole-part"),
    ],
)
def test_delay_parser_takes_ascii_digits(value: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="digits 0-9"):
        delays.not_before_ns(value, None, now_ns=0, max_delay_s=1e9)


def test_delay_parser_reads_fraction() -> None:
    assert delays.not_before_ns("1.5", None, now_ns=0, max_delay_s=10) == 1_500_000_000


def test_delay_limit_message_has_plain_numbers() -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        delays.not_before_ns("97043123.4", None, now_ns=0, max_delay_s=604800)

    message = str(raised.value)
    assert "would start 97043123.4 s from now" in message
    assert "limit of 604800 s" in message
    assert "e+" not in message
