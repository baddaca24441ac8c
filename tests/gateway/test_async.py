"""The async accept path `/async-function/...` against real NATS JetStream."""

import asyncio
import logging
import os
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import nats
import pytest

from faashub import constants as shared
from faashub.call_status import CallState, CallStatus
from faashub.queued_call import QueuedCall
from gateway import async_accept
from gateway.call_queue import message_size
from tests.conftest import LOOPBACK, free_port, wait_until_async
from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    NatsServer,
    RunningGateway,
    read_object,
    stored_messages,
    wait_until_healthy,
    wait_until_unhealthy,
    write_status,
)
from tests.queue_worker.conftest import make_settings, running_worker

pytestmark = pytest.mark.timeout(30)

CALLBACK_URL = "http://127.0.0.1:9999/done?token=1"


async def test_async_accepts_call(client: httpx.AsyncClient, nats_url: str) -> None:
    response = await client.post(
        "/async-function/echo/sub/path?q=1&r=two",
        content=b"\x00raw body\xff",
        headers={
            "Content-Type": "application/octet-stream",
            "X-Custom": "value",
            "X-Callback-Url": CALLBACK_URL,
        },
    )

    assert response.status_code == 202
    assert response.content == b""
    call_id = response.headers["X-Call-Id"]
    assert uuid.UUID(call_id)
    start_time = response.headers["X-Start-Time"]
    assert start_time.isdigit()

    [message] = await stored_messages(nats_url)
    assert message.subject == f"faashub.calls.default.openfaas-fn.echo.{call_id}"
    assert message.data == b"\x00raw body\xff"
    headers = message.headers
    assert headers["Faashub-Function"] == "echo"
    assert headers["Faashub-Namespace"] == shared.DEFAULT_NAMESPACE
    assert headers["Faashub-Method"] == "POST"
    assert headers["Faashub-Path"] == "/sub/path"
    assert headers["Faashub-Query"] == "q=1&r=two"
    assert headers["Faashub-Callback-Url"] == CALLBACK_URL
    assert headers["Faashub-Call-Id"] == call_id
    assert headers["Faashub-Accepted-At-Ns"] == start_time
    # A generated id is published without a de-duplication key.
    assert "Nats-Msg-Id" not in headers
    # The caller's headers. The worker sends X-Call-Id and X-Start-Time from
    # the metadata above, so the message does not repeat them.
    assert headers["x-custom"] == "value"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-callback-url"] == CALLBACK_URL
    assert "X-Call-Id" not in headers
    assert "X-Start-Time" not in headers
    assert headers["X-Forwarded-For"] == LOOPBACK
    assert "X-Forwarded-Host" in headers

    call = QueuedCall.from_nats(message.headers, message.data)
    assert call.call_id == call_id
    assert call.callback_url == CALLBACK_URL


async def test_async_rejects_non_utf8_header(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    response = await client.post(
        "/async-function/echo",
        content=b"x",
        headers=[(b"X-Utf8", b"h\xc3\xa9llo"), (b"X-Latin1", b"secret h\xe9llo")],
    )

    assert response.status_code == 400
    assert "header X-Latin1 is not valid UTF-8" in response.text
    assert "Send it as UTF-8" in response.text
    assert "secret" not in response.text
    assert await stored_messages(nats_url) == []


async def test_async_keeps_caller_call_id(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    response = await client.post(
        "/async-function/echo", content=b"x", headers={"X-Call-Id": "caller-id-1"}
    )

    assert response.status_code == 202
    assert response.headers["X-Call-Id"] == "caller-id-1"
    [message] = await stored_messages(nats_url)
    assert message.headers["Faashub-Call-Id"] == "caller-id-1"
    assert message.headers["Nats-Msg-Id"] == "caller-id-1"
    assert "X-Call-Id" not in message.headers
    assert "x-call-id" not in message.headers


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("ünï".encode(), "'ünï'", id="utf-8"),
        pytest.param(b"tab\there", "'tab\\there'", id="control-character"),
    ],
)
async def test_async_rejects_non_ascii_call_id(
    client: httpx.AsyncClient, nats_url: str, value: bytes, shown: str
) -> None:
    response = await client.post(
        "/async-function/echo", content=b"x", headers={"X-Call-Id": value}
    )

    assert response.status_code == 400
    assert f"Invalid X-Call-Id {shown}" in response.text
    assert "printable ASCII" in response.text
    assert await stored_messages(nats_url) == []


async def test_async_keeps_ascii_call_id(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    call_id = "job 7/a.b~!"
    response = await client.post(
        "/async-function/echo", content=b"x", headers={"X-Call-Id": call_id}
    )

    assert response.status_code == 202
    assert response.headers["X-Call-Id"] == call_id
    status = await client.get(f"/async-calls/{urllib.parse.quote(call_id, safe='')}")
    assert status.json()["call_id"] == call_id


@pytest.mark.parametrize(
    "caller_headers",
    [
        pytest.param({}, id="generated-id"),
        pytest.param({"X-Call-Id": "caller-id-2", "X-Start-Time": "1"}, id="caller-id"),
    ],
)
@pytest.mark.parametrize("via_replica", [False, True], ids=["gateway", "replica"])
async def test_async_function_gets_call_headers(
    nats_url: str,
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    provider: FakeProvider,
    caller_headers: dict[str, str],
    via_replica: bool,
) -> None:
    if via_replica:
        # The fake provider's function route plays the replica.
        provider.endpoints["echo"] = [f"{provider.url}/function/echo"]
    response = await client.post(
        "/async-function/echo", content=b"x", headers=caller_headers
    )
    assert response.status_code == 202

    settings = make_settings(nats_url, gateway.url, invoke_replicas=via_replica)
    async with running_worker(settings):

        async def invoked() -> bool:
            return bool(provider.received)

        await wait_until_async(invoked, timeout_s=10, description="the invocation")

    # The worker sets both headers from the call's metadata. The gateway's
    # sync route, which the worker calls unless it reaches a replica, sets
    # X-Start-Time again, to its own time.
    [invocation] = provider.received
    assert invocation.headers.getall("X-Call-Id") == [response.headers["X-Call-Id"]]
    [start_time] = invocation.headers.getall("X-Start-Time")
    if via_replica:
        assert start_time == response.headers["X-Start-Time"]
    else:
        assert int(start_time) >= int(response.headers["X-Start-Time"])


class _Http10Replica(BaseHTTPRequestHandler):
    """A replica on http.server's default HTTP/1.0, which never sends 100 Continue."""

    def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        received: list[dict[str, str]] = self.server.received  # type: ignore[attr-defined]
        received.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


async def test_async_call_drops_expect_header(
    nats_url: str,
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    provider: FakeProvider,
) -> None:
    replica = ThreadingHTTPServer((LOOPBACK, free_port()), _Http10Replica)
    replica.received = []  # type: ignore[attr-defined]
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    provider.endpoints["echo"] = [f"http://{LOOPBACK}:{replica.server_port}/"]
    try:
        response = await client.post(
            "/async-function/echo",
            content=b"x" * 1000,
            headers={"Expect": "100-continue"},
        )
        assert response.status_code == 202
        [message] = await stored_messages(nats_url)
        assert "Expect" not in message.headers
        assert "expect" not in message.headers

        settings = make_settings(nats_url, gateway.url, invoke_replicas=True)
        async with running_worker(settings):

            async def invoked() -> bool:
                return bool(replica.received)  # type: ignore[attr-defined]

            # With Expect passed on, aiohttp would wait for a 100 Continue that
            # this server never sends, until the exec timeout.
            await wait_until_async(invoked, timeout_s=10, description="the call")
    finally:
        replica.shutdown()
        replica.server_close()

    [headers] = replica.received  # type: ignore[attr-defined]
    assert "Expect" not in headers


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
async def test_async_keeps_method(
    client: httpx.AsyncClient, nats_url: str, method: str
) -> None:
    response = await client.request(method, "/async-function/echo")

    assert response.status_code == 202
    [message] = await stored_messages(nats_url)
    assert message.headers["Faashub-Method"] == method
    assert message.data == b""


async def test_async_namespace_in_name(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    provider.deploy("echo", "staging")

    response = await client.post("/async-function/echo.staging", content=b"x")

    assert response.status_code == 202
    assert provider.lookups == [("echo", "staging")]
    call_id = response.headers["X-Call-Id"]
    [message] = await stored_messages(nats_url)
    assert message.subject == f"faashub.calls.default.staging.echo.{call_id}"
    assert message.headers["Faashub-Namespace"] == "staging"


async def test_async_unknown_function_404(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    response = await client.post("/async-function/nobody.team-a", content=b"x")

    assert response.status_code == 404
    assert "'nobody'" in response.text
    assert "'team-a'" in response.text
    assert await stored_messages(nats_url) == []


async def test_async_deploy_then_invoke(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    first = await client.post("/async-function/later", content=b"x")
    provider.deploy("later")
    second = await client.post("/async-function/later", content=b"x")

    assert first.status_code == 404
    assert second.status_code == 202


async def test_async_caches_found_function(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    for _ in range(3):
        response = await client.post("/async-function/echo", content=b"x")
        assert response.status_code == 202

    assert provider.lookups == [("echo", shared.DEFAULT_NAMESPACE)]


async def test_async_cache_expires(
    nats_url: str, provider: FakeProvider, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url, function_cache_ttl_s=0.2)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        await http_client.post("/async-function/echo")
        await http_client.post("/async-function/echo")
        await asyncio.sleep(0.3)
        await http_client.post("/async-function/echo")

    assert len(provider.lookups) == 2


@pytest.mark.parametrize(
    "callback_url",
    [
        pytest.param("ftp://127.0.0.1/done", id="scheme"),
        pytest.param("/relative/path", id="relative"),
        pytest.param("http:///no-host", id="no-host"),
        pytest.param("http://127.0.0.1:port/", id="bad-port"),
        pytest.param("http://[::1/", id="bad-ipv6"),
    ],
)
async def test_async_bad_callback_url_400(
    client: httpx.AsyncClient, nats_url: str, callback_url: str
) -> None:
    response = await client.post(
        "/async-function/echo", content=b"x", headers={"X-Callback-Url": callback_url}
    )

    assert response.status_code == 400
    assert repr(callback_url) in response.text
    assert await stored_messages(nats_url) == []


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        pytest.param(
            "ftp://127.0.0.1/" + "a" * 100,
            repr("ftp://127.0.0.1/" + "a" * 64 + "..."),
            id="long",
        ),
        pytest.param("ftp://caf\u00e9/".encode(), repr("ftp://caf\u00e9/"), id="utf-8"),
    ],
)
async def test_async_callback_url_shown(
    client: httpx.AsyncClient, nats_url: str, sent: str | bytes, shown: str
) -> None:
    response = await client.post(
        "/async-function/echo", content=b"x", headers={"X-Callback-Url": sent}
    )

    assert response.status_code == 400
    assert f"Invalid X-Callback-Url {shown}" in response.text
    assert await stored_messages(nats_url) == []


async def test_async_delete_cancels_not_queues(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    # DELETE /async-function/X cancels call X; it never queues a call to X.
    response = await client.delete("/async-function/echo")

    assert response.status_code == 404
    assert "'echo'" in response.text
    assert await stored_messages(nats_url) == []


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
async def test_async_other_methods_405(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/async-function/echo")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST, PUT, PATCH"
    if method != "HEAD":
        assert "DELETE /async-function/CALL_ID" in response.text


async def test_async_invalid_name_400(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.post("/async-function/Not_Valid", content=b"x")

    assert response.status_code == 400
    assert "'Not_Valid'" in response.text
    assert provider.lookups == []


async def test_async_duplicate_call_id_stored_once(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    headers = {"X-Call-Id": "same-call"}
    first = await client.post("/async-function/echo", content=b"1", headers=headers)
    second = await client.post("/async-function/echo", content=b"2", headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.headers["X-Call-Id"] == "same-call"
    messages = await stored_messages(nats_url)
    assert [message.data for message in messages] == [b"1"]


async def test_async_call_id_reused_for_other_function_409(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    provider.deploy("other")
    headers = {"X-Call-Id": "shared-id"}
    first = await client.post("/async-function/echo", content=b"1", headers=headers)
    second = await client.post("/async-function/other", content=b"2", headers=headers)

    assert first.status_code == 202
    assert second.status_code == 409
    assert "shared-id" in second.text
    assert "echo.openfaas-fn" in second.text
    assert "new X-Call-Id" in second.text
    messages = await stored_messages(nats_url)
    assert [message.data for message in messages] == [b"1"]


async def test_async_unreachable_provider_502(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(nats_url=nats_url, provider_url=dead_url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post("/async-function/echo", content=b"x")

    assert response.status_code == 502
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert dead_url in response.text
    assert await stored_messages(nats_url) == []


async def test_async_body_over_max_body_413(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url, max_body_bytes=1000)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        declared = await http_client.post("/async-function/echo", content=b"x" * 1001)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * 400

        # Without a Content-Length the gateway counts while it reads.
        streamed = await http_client.post("/async-function/echo", content=chunks())
        at_limit = await http_client.post("/async-function/echo", content=b"z" * 1000)

    assert declared.status_code == 413
    assert "limit of 1000 bytes" in declared.text
    assert "max-body-bytes" in declared.text
    assert streamed.status_code == 413
    assert "limit of 1000 bytes" in streamed.text
    assert at_limit.status_code == 202
    messages = await stored_messages(nats_url)
    assert [message.data for message in messages] == [b"z" * 1000]


async def test_async_large_body_in_object_store(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory(max_payload_bytes=64 * 1024)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    body = bytes(range(256)) * 1024  # 256 KiB, four times max_payload

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post(
            "/async-function/echo", content=body, headers={"X-Call-Id": "big-1"}
        )

    assert response.status_code == 202
    [message] = await stored_messages(nats_server.url)
    assert message.data == b""
    assert message.headers["Faashub-Body-Ref"] == "big-1"
    assert message.headers["Faashub-Body-Size"] == str(len(body))
    call = QueuedCall.from_nats(message.headers, message.data)
    assert call.body_ref == "big-1"
    assert await read_object(nats_server.url, "big-1") == body


async def test_async_exact_max_payload_fits(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    limit = 64 * 1024
    nats_server = nats_server_factory(max_payload_bytes=limit)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        # The stored headers of a first call give the exact header size of
        # the next ones: their call ids and times have the same length.
        first = await http_client.post(
            "/async-function/echo", content=b"x", headers={"X-Call-Id": "call-1"}
        )
        [stored] = await stored_messages(nats_server.url)
        header_bytes = message_size(stored.headers, b"")
        at_limit = await http_client.post(
            "/async-function/echo",
            content=b"x" * (limit - header_bytes),
            headers={"X-Call-Id": "call-2"},
        )
        over_limit = await http_client.post(
            "/async-function/echo",
            content=b"x" * (limit - header_bytes + 1),
            headers={"X-Call-Id": "call-3"},
        )

    assert first.status_code == 202
    assert at_limit.status_code == 202
    assert over_limit.status_code == 202
    messages = await stored_messages(nats_server.url)
    by_id = {message.headers["Faashub-Call-Id"]: message for message in messages}
    assert list(by_id) == ["call-1", "call-2", "call-3"]
    assert len(by_id["call-2"].data) == limit - header_bytes
    assert "Faashub-Body-Ref" not in by_id["call-2"].headers
    assert by_id["call-3"].data == b""
    assert by_id["call-3"].headers["Faashub-Body-Ref"] == "call-3"


async def test_async_duplicate_large_body_stored_once(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory(max_payload_bytes=64 * 1024)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    body = b"b" * (100 * 1024)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        statuses = [
            (
                await http_client.post(
                    "/async-function/echo", content=body, headers={"X-Call-Id": "dup"}
                )
            ).status_code
            for _ in range(2)
        ]

    assert statuses == [202, 202]
    [message] = await stored_messages(nats_server.url)
    assert message.headers["Faashub-Body-Ref"] == "dup"
    assert await read_object(nats_server.url, "dup") == body


async def test_async_headers_over_max_payload_413(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory(max_payload_bytes=8 * 1024)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post(
            "/async-function/echo",
            content=b"x",
            headers={"X-Long": "v" * (9 * 1024)},
        )

    assert response.status_code == 413
    assert "8192 bytes" in response.text
    assert await stored_messages(nats_server.url) == []


async def test_async_survives_nats_restart(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http_client:
        before = await http_client.post("/async-function/echo", content=b"before")
        assert before.status_code == 202

        nats_server.stop()
        await wait_until_unhealthy(gateway.url)
        down = await http_client.post("/async-function/echo", content=b"down")
        assert down.status_code == 503
        assert down.headers["X-OpenFaaS-Internal"] == "gateway"
        assert "X-Call-Id" in down.text

        nats_server.start()
        await wait_until_healthy(gateway.url)
        after = await http_client.post("/async-function/echo", content=b"after")
        assert after.status_code == 202

    messages = await stored_messages(nats_server.url)
    assert [message.data for message in messages] == [b"before", b"after"]


@pytest.mark.timeout(60)
async def test_async_retry_after_ack_timeout_stored_once(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    nats_server.start()
    assert nats_server.process is not None
    pid = nats_server.process.pid
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http_client:
        # A stopped server keeps the connection open but sends no PubAck, so
        # the gateway cannot tell whether it stored the call.
        os.kill(pid, signal.SIGSTOP)
        try:
            unknown = await http_client.post("/async-function/echo", content=b"once")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert unknown.status_code == 503
        assert unknown.headers["X-OpenFaaS-Internal"] == "gateway"
        assert "may or may not be stored" in unknown.text
        assert unknown.headers["Retry-After"].isdigit()
        call_id = unknown.headers["X-Call-Id"]
        assert uuid.UUID(call_id)

        retry = await http_client.post(
            "/async-function/echo", content=b"once", headers={"X-Call-Id": call_id}
        )
        assert retry.status_code == 202
        assert retry.headers["X-Call-Id"] == call_id

    [message] = await stored_messages(nats_server.url)
    assert message.data == b"once"
    assert message.headers["Faashub-Call-Id"] == call_id
    # The gateway generated the id, so the first publish had no Nats-Msg-Id.
    assert "Nats-Msg-Id" not in message.headers


async def test_async_nats_down_at_start_503(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    gateway = await start_gateway(nats_url=nats_server.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post("/async-function/echo", content=b"x")

    assert response.status_code == 503
    assert nats_server.url in response.text


async def test_async_warns_once_about_unserved_queue(
    client: httpx.AsyncClient,
    provider: FakeProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.deploy("lonely-fn", annotations={"com.openfaas.queue": "lonely"})

    with caplog.at_level(logging.WARNING, logger="gateway.async_accept"):
        for _ in range(2):
            accepted = await client.post("/async-function/lonely-fn", content=b"x")
            assert accepted.status_code == 202, accepted.text

        async def warned() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "no queue-worker" in r.getMessage()]

        for _ in range(100):
            if await warned():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # room for a wrong second warning

    [warning] = await warned()
    assert "has consumed queue 'lonely' yet" in warning.getMessage()
    assert "--queues lonely" in warning.getMessage()


def queue_warnings(
    caplog: pytest.LogCaptureFixture, queue: str
) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "gateway.async_accept"
        and record.levelno == logging.WARNING
        and f"queue {queue!r}" in record.getMessage()
    ]


async def test_async_warns_about_queue_without_worker(
    client: httpx.AsyncClient,
    gateway: RunningGateway,
    provider: FakeProvider,
    nats_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(async_accept, "UNSERVED_CHECK_INTERVAL_S", 0.0)
    provider.deploy("gone-fn", annotations={"com.openfaas.queue": "gone"})
    # A worker that ran once leaves its durable consumer behind, as after the
    # queue is dropped from `faashub up --queues`.
    async with running_worker(make_settings(nats_url, gateway.url, queue="gone")):
        pass

    with caplog.at_level(logging.WARNING, logger="gateway.async_accept"):
        # A pull request of the stopped worker may wait on the server until
        # it expires, so calls are sent until the check finds no consumer.
        for _ in range(20):
            accepted = await client.post("/async-function/gone-fn", content=b"x")
            assert accepted.status_code == 202, accepted.text
            await asyncio.sleep(1.0)
            if queue_warnings(caplog, "gone"):
                break

    [warning, *_] = queue_warnings(caplog, "gone")
    message = warning.getMessage()
    assert "no queue-worker consumes queue 'gone' now" in message
    assert "calls wait" in message
    assert "faashub up --queues gone" in message
    assert "faashub queue-worker --queue gone" in message
    assert warning.__dict__["ctx"]["queue"] == "gone"


async def test_async_no_warning_for_busy_worker(
    client: httpx.AsyncClient,
    gateway: RunningGateway,
    provider: FakeProvider,
    nats_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(async_accept, "UNSERVED_CHECK_INTERVAL_S", 0.0)
    # The fake provider responds to "slow" only after `release` is set.
    provider.deploy("slow", annotations={"com.openfaas.queue": "busy"})
    settings = make_settings(nats_url, gateway.url, queue="busy", max_inflight=1)

    with caplog.at_level(logging.WARNING, logger="gateway.async_accept"):
        async with running_worker(settings):
            first = await client.post("/async-function/slow", content=b"1")
            assert first.status_code == 202, first.text

            async def running() -> bool:
                return bool(provider.received)

            await wait_until_async(running, timeout_s=10, description="a busy worker")
            # Each of these calls waits for the one slot, and each accept
            # checks the queue again.
            for index in range(4):
                waiting = await client.post("/async-function/slow", content=b"w")
                assert waiting.status_code == 202, (index, waiting.text)
            await asyncio.sleep(async_accept.UNCONSUMED_RECHECK_S + 1.0)
            warnings = queue_warnings(caplog, "busy")
            provider.release.set()

    assert warnings == []


async def take_calls(nats_url: str) -> None:
    """Acknowledge every stored call, so the stream drops it, as a worker would."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        durable = "gateway-test-taker"
        subscription = await js.pull_subscribe(
            f"{shared.CALLS_SUBJECT_PREFIX}.>", durable, stream=shared.CALLS_STREAM
        )
        try:
            for message in await subscription.fetch(10, timeout=5):
                await message.ack_sync()
        finally:
            await subscription.unsubscribe()
            await js.delete_consumer(shared.CALLS_STREAM, durable)
    finally:
        await connection.close()


def finished_record(call_id: str, function: str, *, age_s: float) -> CallStatus:
    now_ns = time.time_ns()
    return CallStatus(
        call_id=call_id,
        function=function,
        namespace=shared.DEFAULT_NAMESPACE,
        state=CallState.SUCCEEDED,
        attempts=1,
        max_attempts=3,
        accepted_at_ns=now_ns - round(age_s * 1e9),
        started_at_ns=now_ns,
        updated_at_ns=now_ns,
        finished_at_ns=now_ns,
    )


@pytest.mark.timeout(60)
async def test_reused_id_after_nats_restart_409(
    nats_server_factory: Callable[..., NatsServer],
    start_gateway: GatewayFactory,
    provider: FakeProvider,
) -> None:
    provider.deploy("other")
    nats_server = nats_server_factory()
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    headers = {"X-Call-Id": "kept-id"}

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http_client:
        first = await http_client.post(
            "/async-function/echo", content=b"1", headers=headers
        )
        assert first.status_code == 202
        # The call ran: its message is gone and only its status record is left.
        await take_calls(nats_server.url)
        await write_status(nats_server.url, finished_record("kept-id", "echo", age_s=0))
        nats_server.stop()
        await wait_until_unhealthy(gateway.url)
        nats_server.start()
        await wait_until_healthy(gateway.url)

        other = await http_client.post(
            "/async-function/other", content=b"2", headers=headers
        )
        same = await http_client.post(
            "/async-function/echo", content=b"3", headers=headers
        )

    assert other.status_code == 409
    assert "'kept-id' is already used by a call to echo.openfaas-fn" in other.text
    # A repeat to the same function is stored, and the worker discards it by
    # its status record.
    assert same.status_code == 202
    messages = await stored_messages(nats_server.url)
    assert [message.data for message in messages] == [b"3"]


@pytest.mark.parametrize(
    ("age_s", "window_s", "wait_s", "expected"),
    [
        pytest.param(1.0, 120.0, 0.0, 409, id="inside-window"),
        pytest.param(130.0, 120.0, 0.0, 202, id="older-than-window"),
        # One window after connecting, JetStream itself keeps each id of the
        # window, so the gateway reads no status record.
        pytest.param(0.0, 1.0, 1.2, 202, id="window-since-connect-over"),
    ],
)
async def test_reused_id_status_check(
    nats_url: str,
    start_gateway: GatewayFactory,
    provider: FakeProvider,
    age_s: float,
    window_s: float,
    wait_s: float,
    expected: int,
) -> None:
    provider.deploy("other")
    gateway = await start_gateway(nats_url=nats_url, duplicate_window_s=window_s)
    await wait_until_healthy(gateway.url)
    await write_status(nats_url, finished_record("old-id", "echo", age_s=age_s))
    await asyncio.sleep(wait_s)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post(
            "/async-function/other", content=b"x", headers={"X-Call-Id": "old-id"}
        )

    assert response.status_code == expected
    stored = await stored_messages(nats_url)
    assert len(stored) == (1 if expected == 202 else 0)
