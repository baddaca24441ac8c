"""The request and callback pieces the worker builds, checked without servers."""

import re

import pytest
from nats.aio.msg import Msg

from faashub import callback_request, errors
from faashub.headers import wire_text
from queue_worker import callback, invoke, worker
from queue_worker.invoke import FunctionResult
from queue_worker.messages import DeliveryInfo, delivery_of
from tests.queue_worker.conftest import make_call

BASE = "http://gateway:8080/function/"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param("", "", "/function/echo.openfaas-fn", id="bare"),
        pytest.param("/a/b", "x=1", "/function/echo.openfaas-fn/a/b?x=1", id="plain"),
        pytest.param(
            "/../admin",
            "",
            "/function/echo.openfaas-fn/../admin",
            id="dot-segments-kept",
        ),
        pytest.param(
            "/a%2Fb%20c",
            "q=%C3%A9&r=a+b",
            "/function/echo.openfaas-fn/a%2Fb%20c?q=%C3%A9&r=a+b",
            id="escapes-kept",
        ),
        pytest.param(
            "/a b/?#",
            "q=a b",
            "/function/echo.openfaas-fn/a%20b/%3F%23?q=a%20b",
            id="unsafe-quoted",
        ),
        # The gateway reads raw bytes as latin-1: byte 0xE9 arrives as "é".
        pytest.param("/é", "q=é", "/function/echo.openfaas-fn/%E9?q=%E9", id="latin-1"),
        pytest.param(
            "/✓", "", "/function/echo.openfaas-fn/%E2%9C%93", id="beyond-latin-1"
        ),
    ],
)
def test_function_url(path: str, query: str, expected: str) -> None:
    url = invoke.function_url(BASE, make_call(path=path, query=query))

    assert str(url) == "http://gateway:8080" + expected


def test_request_headers_replace_call_headers() -> None:
    call = make_call(
        headers={
            "x-call-id": "forged",
            "X-Start-Time": "1",
            "Connection": "close",
            # Calls stored by a gateway before it dropped Expect carry it.
            "Expect": "100-continue",
            "Content-Length": "5",
            "Host": "elsewhere",
            "X-Keep": "yes",
        }
    )

    headers = invoke.request_headers(call)

    assert headers == {
        "X-Keep": "yes",
        "X-Call-Id": call.call_id,
        "X-Start-Time": str(call.accepted_at_ns),
    }


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        pytest.param("plain", b"plain", id="ascii"),
        pytest.param("héllo".encode().decode("latin-1"), "héllo".encode(), id="utf-8"),
        # Bytes that are not UTF-8 cannot pass through aiohttp unchanged.
        pytest.param("\xe9t\xe9", "\xe9t\xe9".encode(), id="not-utf-8"),
        pytest.param("✓", "✓".encode(), id="beyond-latin-1"),
    ],
)
def test_wire_text(stored: str, sent: bytes) -> None:
    assert wire_text(stored).encode() == sent


def test_response_headers_keep_repeats_and_bytes() -> None:
    raw = [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Text", "✓".encode()),
        (b"X-Legacy", b"\xe9"),
    ]

    assert invoke.response_headers(raw) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Text", "✓"),
        ("X-Legacy", "é"),
    ]


def test_callback_headers_drop_and_set() -> None:
    call = make_call(namespace="team-a", callback_url="http://receiver/done")
    result = FunctionResult(
        status=418,
        headers=[
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
            ("Transfer-Encoding", "chunked"),
            ("X-Duration-Seconds", "9"),
            ("X-Retry", "7"),
            ("X-Faashub-Signature", "t=1,v1=forged"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        body=b"tea",
    )

    headers = callback_request.callback_headers(
        call, result.status, result.headers, duration_s=1.5, retry=2, retry_max=10
    )

    assert headers == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Call-Id", call.call_id),
        ("X-Function-Status", "418"),
        ("X-Function-Name", "echo.team-a"),
        ("X-Duration-Seconds", "1.500000"),
        ("X-Retry", "2"),
        ("X-Retry-Max", "10"),
    ]


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        pytest.param(
            "http://u:p@host:1/cb?token=x#f", "http://host:1/cb", id="secrets"
        ),
        pytest.param("http://host/cb", "http://host/cb", id="plain"),
        pytest.param("http://u:p@[::1?token=x", "http://[::1", id="invalid"),
    ],
)
def test_loggable_url(url: str, logged: str) -> None:
    assert callback.loggable_url(url) == logged


@pytest.mark.parametrize(
    "gateway_url",
    [
        pytest.param("gateway:8080", id="no-scheme"),
        pytest.param("ftp://gateway", id="other-scheme"),
        pytest.param("http://", id="no-host"),
        pytest.param("http://gateway?x=1", id="query"),
    ],
)
def test_invalid_gateway_url(gateway_url: str) -> None:
    with pytest.raises(errors.SettingsError, match="--gateway-url"):
        worker.function_base_url(gateway_url)


def test_gateway_url_with_path() -> None:
    assert worker.function_base_url("https://gw.example/base/") == (
        "https://gw.example/base/function/"
    )


@pytest.mark.parametrize(
    ("nats_url", "servers"),
    [
        pytest.param("nats://n1:4222", ["nats://n1:4222"], id="one"),
        pytest.param("n1:4222", ["nats://n1:4222"], id="no-scheme"),
        pytest.param(
            "nats://n1:4222, tls://n2:4222",
            ["nats://n1:4222", "tls://n2:4222"],
            id="list",
        ),
    ],
)
def test_nats_servers(nats_url: str, servers: list[str]) -> None:
    assert worker.nats_servers(nats_url) == servers


@pytest.mark.parametrize(
    ("nats_url", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("http://n1:4222", "'http://n1:4222'", id="http"),
        pytest.param("nats://n1:port", "'nats://n1:port'", id="bad-port"),
        pytest.param("nats://user:pw@[n1", "'nats://[n1'", id="credentials-hidden"),
    ],
)
def test_invalid_nats_url(nats_url: str, message: str) -> None:
    with pytest.raises(errors.SettingsError, match=re.escape(message)) as raised:
        worker.nats_servers(nats_url)

    assert "pw" not in str(raised.value)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            "$JS.ACK.CALLS.worker.3.120.99.1796441469577871132.4",
            DeliveryInfo(120, 3, 1796441469577871132),
            id="without-domain",
        ),
        pytest.param(
            "$JS.ACK._.hash.CALLS.worker.2.7.5.1796441469577871132.0.token",
            DeliveryInfo(7, 2, 1796441469577871132),
            id="with-domain",
        ),
        pytest.param(
            "$JS.ACK.hub.hash.CALLS.worker.1.8.6.1796441469577871132.0",
            DeliveryInfo(8, 1, 1796441469577871132),
            id="with-domain-no-token",
        ),
        pytest.param(
            "$JS.ACK.CALLS.worker.x.120.99.1796441469577871132.4",
            DeliveryInfo(None, 1, None),
            id="not-a-number",
        ),
        pytest.param(
            "$JS.ACK.CALLS.worker.3.120.99.1796441469577871132",
            DeliveryInfo(None, 1, None),
            id="too-short",
        ),
        pytest.param("_INBOX.abc.1", DeliveryInfo(None, 1, None), id="not-jetstream"),
        pytest.param("", DeliveryInfo(None, 1, None), id="no-reply"),
    ],
)
def test_delivery_of(reply: str, expected: DeliveryInfo) -> None:
    message = Msg(_client=None, subject="faashub.calls.x", reply=reply)

    assert delivery_of(message) == expected


def test_delivery_of_matches_nats_py() -> None:
    reply = "$JS.ACK.CALLS.worker.4.51.50.1796441469577871000.9"
    message = Msg(_client=None, subject="faashub.calls.x", reply=reply)
    metadata = message.metadata

    delivery = delivery_of(message)

    assert delivery.stream_seq == metadata.sequence.stream
    assert delivery.num_delivered == metadata.num_delivered
    assert delivery.stored_at_ns is not None
    # nats-py keeps microseconds, in a float.
    assert abs(delivery.stored_at_ns - metadata.timestamp.timestamp() * 1e9) < 1_000
