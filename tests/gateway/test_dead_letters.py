"""The dead-letter API `/system/dead-letters` against real NATS.

The tests store dead letters themselves, as the worker would, with
`DeadLetter.to_nats()`, then list, show, redrive and purge them through the
gateway.
"""

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import nats
import pytest

from faashub import constants as shared
from faashub.call_status import CallState, CallStatus
from faashub.dead_letter import (
    REASON_ATTEMPTS_EXHAUSTED,
    REASON_CALLBACK_FAILED,
    REASON_CALLBACK_REFUSED,
    REASON_EXPIRED,
    REASON_REJECTED,
    Attempt,
    DeadLetter,
)
from faashub.queued_call import QueuedCall
from gateway.dead_letter_api import MAX_SELECTED_SEQS
from gateway.dead_letters import DeadLetterFilter, Selection
from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    NatsServer,
    dead_letter_count,
    object_exists,
    publish_dead_letter,
    put_object,
    read_object,
    stored_messages,
    wait_until_healthy,
    wait_until_unhealthy,
    write_status,
)

pytestmark = pytest.mark.timeout(30)

NS_PER_S = 1_000_000_000


def call_letter(
    call_id: str,
    *,
    function: str = "echo",
    namespace: str = shared.DEFAULT_NAMESPACE,
    reason: str = REASON_ATTEMPTS_EXHAUSTED,
    at_ns: int | None = None,
    body: bytes = b"payload",
    body_ref: str = "",
    body_size: int = 0,
    callback_url: str = "",
    headers: dict[str, str] | None = None,
) -> DeadLetter:
    at_ns = at_ns or time.time_ns()
    call = QueuedCall(
        function=function,
        namespace=namespace,
        call_id=call_id,
        method="PUT",
        path="/items/7",
        query="colour=red",
        callback_url=callback_url,
        accepted_at_ns=at_ns - 10 * NS_PER_S,
        headers=headers
        or {
            "Content-Type": "text/plain",
            shared.CALL_ID: call_id,
            "Authorization": "Bearer secret-token",
            "Cookie": "session=abc",
        },
        body=body,
        body_ref=body_ref,
        body_size=body_size,
    )
    return DeadLetter(
        kind="call",
        reason=reason,
        call=call,
        detail="the function returned 500 three times",
        attempts=[
            Attempt(status=500, error="status 500", at_ns=at_ns - 3 * NS_PER_S),
            Attempt(status=None, error="connection refused", at_ns=at_ns - NS_PER_S),
        ],
        dead_lettered_at_ns=at_ns,
    )


def callback_letter(call_id: str, callback_url: str, **overrides: Any) -> DeadLetter:
    letter = call_letter(call_id, callback_url=callback_url, body=b"")
    return DeadLetter(
        kind="callback",
        reason=overrides.get("reason", REASON_CALLBACK_FAILED),
        call=letter.call,
        detail="the callback receiver returned 503 five times",
        attempts=[Attempt(status=503, error="status 503", at_ns=time.time_ns())],
        dead_lettered_at_ns=time.time_ns(),
        result_status=201,
        result_headers={"Content-Type": "application/json", "X-Result": "yes"},
        result_body=b'{"done": true}',
    )


async def listed_ids(client: httpx.AsyncClient, **params: str) -> list[str]:
    response = await client.get("/system/dead-letters", params=params)
    assert response.status_code == 200, response.text
    return [item["call_id"] for item in response.json()["dead_letters"]]


# Listing.


async def test_list_oldest_first(client: httpx.AsyncClient, nats_url: str) -> None:
    for call_id in ("a-1", "a-2", "a-3"):
        await publish_dead_letter(nats_url, call_letter(call_id))

    response = await client.get("/system/dead-letters")

    assert response.status_code == 200
    listing = response.json()
    assert [item["call_id"] for item in listing["dead_letters"]] == [
        "a-1",
        "a-2",
        "a-3",
    ]
    assert listing["count"] == 3
    assert listing["order"] == "oldest-first"
    assert listing["truncated"] is False
    first = listing["dead_letters"][0]
    assert first["kind"] == "call"
    assert first["reason"] == REASON_ATTEMPTS_EXHAUSTED
    assert first["function"] == "echo"
    assert first["attempts"] == 2
    assert first["last_status"] is None
    assert first["dead_lettered_at"].endswith("Z")


async def test_list_empty_stream(client: httpx.AsyncClient) -> None:
    response = await client.get("/system/dead-letters")

    assert response.status_code == 200
    assert response.json()["dead_letters"] == []
    assert response.json()["truncated"] is False


async def test_list_filters(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("f-1", function="resize"))
    await publish_dead_letter(
        nats_url, call_letter("f-2", function="resize", reason=REASON_EXPIRED)
    )
    await publish_dead_letter(
        nats_url, call_letter("f-3", function="resize", namespace="team-a")
    )
    await publish_dead_letter(nats_url, call_letter("f-4", function="mail"))
    await publish_dead_letter(
        nats_url, callback_letter("f-5", "http://127.0.0.1:1/callback")
    )

    assert await listed_ids(client, function="resize") == ["f-1", "f-2", "f-3"]
    assert await listed_ids(client, function="resize.team-a") == ["f-3"]
    assert await listed_ids(client, namespace="team-a") == ["f-3"]
    assert await listed_ids(client, function="resize", reason=REASON_EXPIRED) == ["f-2"]
    assert await listed_ids(client, kind="callback") == ["f-5"]
    assert await listed_ids(client, function="nobody") == []


async def test_list_time_range(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("t-old"))
    await asyncio.sleep(0.05)
    middle = datetime.datetime.now(datetime.UTC).isoformat()
    await asyncio.sleep(0.05)
    await publish_dead_letter(nats_url, call_letter("t-new"))

    assert await listed_ids(client, since=middle) == ["t-new"]
    assert await listed_ids(client, until=middle) == ["t-old"]


async def test_list_limit_and_continue(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    for index in range(5):
        await publish_dead_letter(nats_url, call_letter(f"p-{index}"))

    first = (await client.get("/system/dead-letters", params={"limit": "2"})).json()
    after = str(first["next_after_seq"])
    second = (
        await client.get(
            "/system/dead-letters", params={"limit": "2", "after_seq": after}
        )
    ).json()
    rest = (
        await client.get(
            "/system/dead-letters",
            params={"limit": "2", "after_seq": str(second["next_after_seq"])},
        )
    ).json()

    assert [item["call_id"] for item in first["dead_letters"]] == ["p-0", "p-1"]
    assert first["truncated"] is True
    assert [item["call_id"] for item in second["dead_letters"]] == ["p-2", "p-3"]
    assert [item["call_id"] for item in rest["dead_letters"]] == ["p-4"]
    assert rest["truncated"] is False
    assert "next_after_seq" not in rest


async def test_list_beyond_one_batch(client: httpx.AsyncClient, nats_url: str) -> None:
    # More than one fetch of the scan consumer.
    for index in range(230):
        await publish_dead_letter(nats_url, call_letter(f"many-{index}", body=b""))

    response = await client.get("/system/dead-letters", params={"limit": "1000"})

    ids = [item["call_id"] for item in response.json()["dead_letters"]]
    assert ids == [f"many-{index}" for index in range(230)]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        pytest.param({"function": "Bad_Name"}, "'Bad_Name'", id="function"),
        pytest.param({"namespace": "NS!"}, "'NS!'", id="namespace"),
        pytest.param({"queue": "a.b"}, "'a.b'", id="queue"),
        pytest.param({"reason": "bored"}, "'bored'", id="reason"),
        pytest.param({"kind": "letter"}, "'letter'", id="kind"),
        pytest.param({"since": "yesterday"}, "'yesterday'", id="since"),
        pytest.param({"until": "2030-01-01T00:00:00"}, "with a zone", id="naive"),
        pytest.param({"limit": "0"}, "'0'", id="limit-zero"),
        pytest.param({"limit": "1001"}, "'1001'", id="limit-high"),
        pytest.param({"after_seq": "-1"}, "'-1'", id="after-seq"),
        pytest.param({"after_seq": "\u00b2"}, "'\u00b2'", id="after-seq-unicode-digit"),
        pytest.param(
            {"after_seq": "9" * 5000}, "'" + "9" * 40 + "...'", id="after-seq-long"
        ),
        pytest.param(
            {"after_seq": str(2**64 - 1)}, "from 0 to", id="after-seq-over-u64"
        ),
        pytest.param({"limit": "\u0661"}, "'\u0661'", id="limit-arabic-digit"),
        pytest.param({"functon": "echo"}, "'functon'", id="unknown-parameter"),
        pytest.param(
            {"function": "echo.team-a", "namespace": "team-b"},
            "'team-b'",
            id="two-namespaces",
        ),
        pytest.param(
            {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
            "swap",
            id="since-after-until",
        ),
    ],
)
async def test_list_invalid_filter_400(
    client: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    response = await client.get("/system/dead-letters", params=params)

    assert response.status_code == 400
    assert named in response.json()["detail"]


# Show.


async def test_show_full_and_redacted(client: httpx.AsyncClient, nats_url: str) -> None:
    seq = await publish_dead_letter(
        nats_url,
        call_letter(
            "s-1",
            callback_url="http://user:pw@127.0.0.1:9/done?token=abc",
            body=b"\x00\xff",
        ),
    )

    response = await client.get("/system/dead-letters/s-1")

    assert response.status_code == 200
    letter = response.json()
    assert letter["seq"] == seq
    assert letter["call_id"] == "s-1"
    assert letter["detail"] == "the function returned 500 three times"
    assert [attempt["status"] for attempt in letter["attempts"]] == [500, None]
    assert letter["attempts"][1]["error"] == "connection refused"
    assert letter["attempts"][0]["at"].endswith("Z")
    request = letter["request"]
    assert request["method"] == "PUT"
    assert request["path"] == "/items/7"
    assert request["query"] == "colour=red"
    assert base64.b64decode(request["body"]) == b"\x00\xff"
    assert request["body_size"] == 2
    assert request["headers"]["Authorization"] == "<redacted>"
    assert request["headers"]["Cookie"] == "<redacted>"
    assert request["headers"]["Content-Type"] == "text/plain"
    assert request["callback_url"] == "http://127.0.0.1:9/done?<redacted>"
    assert letter["result"] is None
    assert "secret-token" not in response.text
    assert "pw@" not in response.text


async def test_show_redacts_header_secrets(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    callback_url = "http://cbuser:CBPASS@127.0.0.1:9/cb?token=CBTOKEN#frag"
    # Header names in lowercase, as the gateway stores them.
    headers = {
        "content-type": "text/plain",
        "authorization": "Bearer BEARERSECRET",
        "proxy-authorization": "Basic PROXYSECRET",
        "x-callback-url": callback_url,
        "x-api-key": "APIKEYSECRET",
        "x-auth-token": "AUTHTOKENSECRET",
        "x-hub-signature-256": "sha256=SIGNATURESECRET",
        "referer": "https://127.0.0.1/page?session=REFERERSECRET",
        "x-trace-note": "plain value",
    }
    await publish_dead_letter(
        nats_url,
        call_letter("rd-1", callback_url=callback_url, headers=headers),
    )

    response = await client.get("/system/dead-letters/rd-1")

    assert response.status_code == 200
    shown = response.json()["request"]["headers"]
    assert shown["content-type"] == "text/plain"
    assert shown["x-trace-note"] == "plain value"
    for name in (
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-auth-token",
        "x-hub-signature-256",
    ):
        assert shown[name] == "<redacted>", name
    assert shown["x-callback-url"] == "http://127.0.0.1:9/cb?<redacted>"
    assert shown["referer"] == "https://127.0.0.1/page?<redacted>"
    for secret in ("SECRET", "CBPASS", "CBTOKEN", "cbuser", "frag"):
        assert secret not in response.text, secret


async def test_show_redacts_result_headers(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    letter = dataclasses.replace(
        callback_letter("rd-2", "http://127.0.0.1:1/callback"),
        result_headers={
            "Set-Cookie": "session=RESULTSECRET",
            "X-Session-Id": "SESSIONSECRET",
            "Location": "http://u:LOCATIONPASS@127.0.0.1/next?k=v",
            "Content-Type": "application/json",
        },
    )
    await publish_dead_letter(nats_url, letter)

    response = await client.get("/system/dead-letters/rd-2")

    assert response.status_code == 200
    shown = response.json()["result"]["headers"]
    assert shown["Set-Cookie"] == "<redacted>"
    assert shown["X-Session-Id"] == "<redacted>"
    assert shown["Location"] == "http://127.0.0.1/next?<redacted>"
    assert shown["Content-Type"] == "application/json"
    assert "SECRET" not in response.text
    assert "LOCATIONPASS" not in response.text


async def test_show_callback_letter(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("s-2", reason=REASON_REJECTED))
    await publish_dead_letter(
        nats_url, callback_letter("s-2", "http://127.0.0.1:1/callback")
    )

    newest = (await client.get("/system/dead-letters/s-2")).json()
    call_kind = (
        await client.get("/system/dead-letters/s-2", params={"kind": "call"})
    ).json()

    assert newest["kind"] == "callback"
    assert newest["result"]["status"] == 201
    assert newest["result"]["headers"]["X-Result"] == "yes"
    assert base64.b64decode(newest["result"]["body"]) == b'{"done": true}'
    assert call_kind["kind"] == "call"
    assert call_kind["reason"] == REASON_REJECTED


async def test_show_id_with_slash(client: httpx.AsyncClient, nats_url: str) -> None:
    call_id = "order 17/b.c"
    await publish_dead_letter(nats_url, call_letter(call_id))

    quoted = urllib.parse.quote(call_id, safe="")
    shown = await client.get(f"/system/dead-letters/{quoted}")
    purged = await client.delete(f"/system/dead-letters/{quoted}")

    assert shown.status_code == 200
    assert shown.json()["call_id"] == call_id
    assert [item["call_id"] for item in purged.json()["purged"]] == [call_id]


async def test_show_unknown_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/system/dead-letters/nothing-here")

    assert response.status_code == 404
    assert "'nothing-here'" in response.json()["detail"]


async def test_unknown_method_not_forwarded(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.put("/system/dead-letters", content=b"{}")

    assert response.status_code == 405
    assert provider.received == []


# Redrive.


async def test_redrive_call_by_id(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(
        nats_url, call_letter("r-1", callback_url="http://127.0.0.1:9/done")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["r-1"]}
    )

    assert response.status_code == 200
    report = response.json()
    assert report["failed"] == []
    [item] = report["redriven"]
    assert item["call_id"] == "r-1"
    assert item["kind"] == "call"
    new_id = item["new_call_id"]
    assert new_id != "r-1"

    [message] = await stored_messages(nats_url)
    call = QueuedCall.from_nats(message.headers, message.data)
    assert call.call_id == new_id
    assert call.original_call_id == "r-1"
    assert call.function == "echo"
    assert call.method == "PUT"
    assert call.path == "/items/7"
    assert call.query == "colour=red"
    assert call.body == b"payload"
    assert call.callback_url == "http://127.0.0.1:9/done"
    # The worker sends the new id, so the old call's X-Call-Id is dropped.
    assert shared.CALL_ID not in call.headers
    assert call.headers["Content-Type"] == "text/plain"
    assert call.headers["Authorization"] == "Bearer secret-token"
    assert call.accepted_at_ns > time.time_ns() - 10 * NS_PER_S
    assert await dead_letter_count(nats_url) == 0

    status = (await client.get(f"/async-calls/{new_id}")).json()
    assert status["state"] == "queued"
    assert status["original_call_id"] == "r-1"


async def test_redrive_by_filter(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("rf-1", reason=REASON_EXPIRED))
    await publish_dead_letter(nats_url, call_letter("rf-2"))
    await publish_dead_letter(nats_url, call_letter("rf-3", reason=REASON_EXPIRED))

    response = await client.post(
        "/system/dead-letters/redrive", json={"filter": {"reason": REASON_EXPIRED}}
    )

    report = response.json()
    assert [item["call_id"] for item in report["redriven"]] == ["rf-1", "rf-3"]
    assert await listed_ids(client) == ["rf-2"]
    assert len(await stored_messages(nats_url)) == 2


async def test_redrive_all(client: httpx.AsyncClient, nats_url: str) -> None:
    for index in range(3):
        await publish_dead_letter(nats_url, call_letter(f"ra-{index}"))

    response = await client.post("/system/dead-letters/redrive", json={"all": True})

    assert len(response.json()["redriven"]) == 3
    assert await dead_letter_count(nats_url) == 0
    assert len(await stored_messages(nats_url)) == 3


async def test_redrive_unknown_id_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["none-such"]}
    )

    assert response.status_code == 200
    assert response.json() == {
        "redriven": [],
        "failed": [
            {"call_id": "none-such", "kind": None, "seq": None, "error": "not found"}
        ],
    }


async def test_redrive_filter_matching_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/system/dead-letters/redrive", json={"filter": {"function": "none-such"}}
    )

    assert response.status_code == 200
    assert response.json() == {"redriven": [], "failed": []}


async def test_purge_known_and_unknown_ids(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await publish_dead_letter(nats_url, call_letter("pk-1"))

    response = await client.request(
        "DELETE", "/system/dead-letters", params={"call_id": ["gone-1", "pk-1"]}
    )

    assert response.status_code == 200
    report = response.json()
    assert [item["call_id"] for item in report["purged"]] == ["pk-1"]
    assert report["failed"] == [
        {"call_id": "gone-1", "kind": None, "seq": None, "error": "not found"}
    ]


async def test_redrive_undeployed_function_fails(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await publish_dead_letter(nats_url, call_letter("gone-1", function="removed"))

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["gone-1"]}
    )

    report = response.json()
    assert report["redriven"] == []
    [failure] = report["failed"]
    assert failure["call_id"] == "gone-1"
    assert "'removed'" in failure["error"]
    assert await dead_letter_count(nats_url) == 1
    assert await stored_messages(nats_url) == []


async def test_redrive_callback_posts_again(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    await publish_dead_letter(
        nats_url, callback_letter("cb-1", f"{provider.url}/callback")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-1"]}
    )

    report = response.json()
    assert report["failed"] == []
    [item] = report["redriven"]
    assert item["kind"] == "callback"
    assert "new_call_id" not in item
    [callback] = provider.callbacks
    assert callback.body == b'{"done": true}'
    assert callback.headers["X-Call-Id"] == "cb-1"
    assert callback.headers["X-Function-Status"] == "201"
    assert callback.headers["X-Function-Name"] == "echo"
    assert callback.headers["X-Result"] == "yes"
    assert callback.headers["Content-Type"] == "application/json"
    # A letter that does not keep them (as earlier workers stored it) gets
    # no made-up values; without a secret nothing is signed.
    for name in ("X-Duration-Seconds", "X-Retry", "X-Retry-Max"):
        assert name not in callback.headers
    assert "X-Faashub-Signature" not in callback.headers
    assert await dead_letter_count(nats_url) == 0
    # The function does not run again.
    assert provider.received == []
    assert await stored_messages(nats_url) == []


async def test_redrive_callback_signed_complete(
    provider: FakeProvider, nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url,
        callback_signing_secret="current",
        callback_signing_secret_previous="previous",
    )
    await wait_until_healthy(gateway.url)
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    letter = callback_letter("cb-9", f"{provider.url}/callback")
    letter.call.headers["traceparent"] = traceparent
    letter.duration_s = 0.25
    letter.retry = 2
    letter.retry_max = 5
    # The function's own headers with these names are not repeated.
    letter.result_headers.update({"X-Retry": "9", "X-Faashub-Signature": "forged"})
    await publish_dead_letter(nats_url, letter)
    before_s = int(time.time())

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.post(
            "/system/dead-letters/redrive", json={"call_ids": ["cb-9"]}
        )

    assert response.json()["failed"] == []
    [callback] = provider.callbacks
    assert callback.headers.getall("X-Duration-Seconds") == ["0.250000"]
    assert callback.headers.getall("X-Retry") == ["2"]
    assert callback.headers.getall("X-Retry-Max") == ["5"]
    assert callback.headers["traceparent"] == traceparent
    [signature] = callback.headers.getall("X-Faashub-Signature")
    timestamp_text, current, previous = signature.split(",")
    timestamp = int(timestamp_text.removeprefix("t="))
    assert before_s <= timestamp <= time.time()
    signed = f"{timestamp}.".encode() + callback.body
    for entry, secret in ((current, b"current"), (previous, b"previous")):
        expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        assert entry == f"v1={expected}"


async def test_delivered_redrive_clears_status_reason(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    provider.callback_status = 204
    await write_status(
        nats_url,
        CallStatus(
            call_id="cb-7",
            function="echo",
            namespace=shared.DEFAULT_NAMESPACE,
            state=CallState.SUCCEEDED,
            attempts=1,
            max_attempts=3,
            dead_letter_reason=REASON_CALLBACK_FAILED,
            callback_status=503,
        ),
    )
    await publish_dead_letter(
        nats_url, callback_letter("cb-7", f"{provider.url}/callback")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-7"]}
    )
    assert response.json()["failed"] == []
    status = (await client.get("/async-calls/cb-7")).json()

    assert status["state"] == "succeeded"
    assert status["dead_letter_reason"] == ""
    assert status["callback_status"] == 204
    assert status["attempts"] == 1


async def test_delivered_redrive_updates_failed_call(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    # The call failed for good, so its record keeps the call's own reason
    # and only shows the callback's failure in callback_status.
    provider.callback_status = 204
    await write_status(
        nats_url,
        CallStatus(
            call_id="cb-8",
            function="echo",
            namespace=shared.DEFAULT_NAMESPACE,
            state=CallState.FAILED,
            attempts=1,
            max_attempts=3,
            last_status=400,
            dead_letter_reason="rejected",
            callback_status=500,
        ),
    )
    await publish_dead_letter(
        nats_url, callback_letter("cb-8", f"{provider.url}/callback")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-8"]}
    )
    assert response.json()["failed"] == []
    status = (await client.get("/async-calls/cb-8")).json()

    assert status["state"] == "failed"
    assert status["dead_letter_reason"] == "rejected"
    assert status["callback_status"] == 204


async def test_redrive_callback_receiver_failing(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    provider.callback_status = 503
    await publish_dead_letter(
        nats_url, callback_letter("cb-2", f"{provider.url}/callback")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-2"]}
    )

    [failure] = response.json()["failed"]
    assert "503" in failure["error"]
    assert await dead_letter_count(nats_url) == 1


async def test_redrive_refused_callback_once_allowed(
    client: httpx.AsyncClient, provider: FakeProvider, nats_url: str
) -> None:
    # The worker refused the address; the gateway's guard, which an operator
    # may have changed since, allows it, so the redrive posts the callback.
    await publish_dead_letter(
        nats_url,
        callback_letter(
            "cb-3", f"{provider.url}/callback", reason=REASON_CALLBACK_REFUSED
        ),
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-3"]}
    )

    assert response.json()["failed"] == []
    [callback] = provider.callbacks
    assert callback.headers["X-Call-Id"] == "cb-3"
    assert await dead_letter_count(nats_url) == 0


@pytest.mark.parametrize(
    ("url", "named"),
    [
        pytest.param(
            "http://169.254.169.254/latest/meta-data/", "169.254.0.0/16", id="metadata"
        ),
        pytest.param(
            "http://[::ffff:169.254.169.254]/", "169.254.0.0/16", id="mapped-ipv6"
        ),
        # 169.254.169.254 written as one decimal number: aiohttp refuses the
        # URL before any lookup, as the worker does.
        pytest.param("http://2852039166/", "not valid", id="decimal-host"),
    ],
)
async def test_redrive_callback_to_denied_address_refused(
    client: httpx.AsyncClient, nats_url: str, url: str, named: str
) -> None:
    # The worker failed this callback; a redrive must not post where the
    # worker's guard would not.
    await publish_dead_letter(nats_url, callback_letter("cb-4", url))

    response = await client.post(
        "/system/dead-letters/redrive", json={"call_ids": ["cb-4"]}
    )

    [failure] = response.json()["failed"]
    assert named in failure["error"]
    assert "Purge" in failure["error"]
    assert await dead_letter_count(nats_url) == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        pytest.param(b"", "empty", id="no-body"),
        pytest.param(b"{}", "empty", id="empty-object"),
        pytest.param(b"{not json", "not valid JSON", id="bad-json"),
        pytest.param(b"[1]", "JSON object", id="not-object"),
        pytest.param(b'{"call_ids": []}', "empty", id="no-ids"),
        pytest.param(b'{"call_ids": "a"}', "call_ids", id="ids-not-list"),
        pytest.param(b'{"filter": {}}', "no condition", id="empty-filter"),
        pytest.param(b'{"filter": {"reason": "x"}}', "'x'", id="bad-filter"),
        pytest.param(b'{"all": "yes"}', "true or false", id="all-not-bool"),
        pytest.param(b'{"all": false}', "empty", id="all-false"),
        pytest.param(b'{"ids": ["a"]}', "'ids'", id="unknown-key"),
        pytest.param(
            b'{"all": true, "call_ids": ["a"]}', "not several", id="ids-and-all"
        ),
    ],
)
async def test_redrive_invalid_selection_400(
    client: httpx.AsyncClient, nats_url: str, body: bytes, named: str
) -> None:
    await publish_dead_letter(nats_url, call_letter("keep-1"))

    response = await client.post("/system/dead-letters/redrive", content=body)

    assert response.status_code == 400
    assert named in response.json()["detail"]
    assert await dead_letter_count(nats_url) == 1


async def test_redrive_large_body_copies_object(
    nats_server_factory: Callable[..., NatsServer],
    start_gateway: GatewayFactory,
) -> None:
    nats_server = nats_server_factory(max_payload_bytes=64 * 1024)
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    body = bytes(range(256)) * 400
    await put_object(nats_server.url, "big-old", body)
    await publish_dead_letter(
        nats_server.url,
        call_letter("big-old", body=b"", body_ref="big-old", body_size=len(body)),
    )

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post(
            "/system/dead-letters/redrive", json={"call_ids": ["big-old"]}
        )

    [item] = response.json()["redriven"]
    new_id = item["new_call_id"]
    [message] = await stored_messages(nats_server.url)
    call = QueuedCall.from_nats(message.headers, message.data)
    assert call.body_ref == new_id
    assert call.body_size == len(body)
    assert await read_object(nats_server.url, new_id) == body
    assert not await object_exists(nats_server.url, "big-old")


# Purge.


async def test_purge_by_id(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("pu-1"))
    await publish_dead_letter(nats_url, call_letter("pu-2"))

    response = await client.request(
        "DELETE", "/system/dead-letters", json={"call_ids": ["pu-1"]}
    )

    assert response.status_code == 200
    assert [item["call_id"] for item in response.json()["purged"]] == ["pu-1"]
    assert await listed_ids(client) == ["pu-2"]


async def test_purge_by_query_filter(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("pq-1", function="resize"))
    await publish_dead_letter(nats_url, call_letter("pq-2", function="mail"))

    response = await client.delete(
        "/system/dead-letters", params={"function": "resize"}
    )

    assert [item["call_id"] for item in response.json()["purged"]] == ["pq-1"]
    assert await listed_ids(client) == ["pq-2"]


async def test_purge_by_query_ids(client: httpx.AsyncClient, nats_url: str) -> None:
    for call_id in ("pi-1", "pi-2", "pi-3"):
        await publish_dead_letter(nats_url, call_letter(call_id))

    response = await client.delete(
        "/system/dead-letters", params=[("call_id", "pi-1"), ("call_id", "pi-3")]
    )

    assert sorted(item["call_id"] for item in response.json()["purged"]) == [
        "pi-1",
        "pi-3",
    ]
    assert await listed_ids(client) == ["pi-2"]


async def test_purge_all(client: httpx.AsyncClient, nats_url: str) -> None:
    for index in range(3):
        await publish_dead_letter(nats_url, call_letter(f"pa-{index}"))

    response = await client.delete("/system/dead-letters", params={"all": "true"})

    assert len(response.json()["purged"]) == 3
    assert await dead_letter_count(nats_url) == 0


async def test_purge_empty_selection_400(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await publish_dead_letter(nats_url, call_letter("stay-1"))

    bare = await client.delete("/system/dead-letters")
    not_all = await client.delete("/system/dead-letters", params={"all": "false"})
    both = await client.request(
        "DELETE",
        "/system/dead-letters",
        params={"all": "true"},
        json={"all": True},
    )

    assert bare.status_code == 400
    assert not_all.status_code == 400
    assert both.status_code == 400
    assert await dead_letter_count(nats_url) == 1


async def test_purge_one_path(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("po-1", reason=REASON_REJECTED))
    await publish_dead_letter(nats_url, callback_letter("po-1", "http://127.0.0.1:1/"))

    only_callback = await client.delete(
        "/system/dead-letters/po-1", params={"kind": "callback"}
    )
    remaining = (await client.get("/system/dead-letters/po-1")).json()
    rest = await client.delete("/system/dead-letters/po-1")
    missing = await client.delete("/system/dead-letters/po-1")

    assert [item["kind"] for item in only_callback.json()["purged"]] == ["callback"]
    assert remaining["kind"] == "call"
    assert [item["kind"] for item in rest.json()["purged"]] == ["call"]
    assert missing.status_code == 404


async def test_purge_deletes_unshared_body(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    await put_object(nats_url, "body-1", b"B" * 10)
    await publish_dead_letter(
        nats_url,
        call_letter("body-1", body=b"", body_ref="body-1", body_size=10),
    )
    await publish_dead_letter(
        nats_url,
        DeadLetter(
            kind="callback",
            reason=REASON_CALLBACK_FAILED,
            call=call_letter("body-1", body=b"", body_ref="body-1", body_size=10).call,
            result_status=200,
        ),
    )

    first = await client.delete("/system/dead-letters/body-1", params={"kind": "call"})
    kept = await object_exists(nats_url, "body-1")
    second = await client.delete("/system/dead-letters/body-1")

    assert len(first.json()["purged"]) == 1
    assert kept
    assert len(second.json()["purged"]) == 1
    assert not await object_exists(nats_url, "body-1")


async def test_dead_letters_nats_down_503(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    nats_server.start()
    gateway = await start_gateway(nats_url=nats_server.url)
    await wait_until_healthy(gateway.url)
    nats_server.stop()
    await wait_until_unhealthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        listing = await http_client.get("/system/dead-letters")
        redrive = await http_client.post(
            "/system/dead-letters/redrive", json={"all": True}
        )

    assert listing.status_code == 503
    assert listing.headers["X-OpenFaaS-Internal"] == "gateway"
    assert nats_server.url in listing.json()["detail"]
    assert redrive.status_code == 503


async def test_scan_consumers_removed(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("c-1"))
    await client.get("/system/dead-letters")
    await client.get("/system/dead-letters/c-1")

    connection = await nats.connect(nats_url)
    try:
        info = await connection.jetstream().stream_info(shared.DEAD_LETTER_STREAM)
    finally:
        await connection.close()
    assert info.state.consumer_count == 0


# Selection by stream sequence.


async def test_redrive_one_seq_of_call(
    client: httpx.AsyncClient, nats_url: str
) -> None:
    call_seq = await publish_dead_letter(nats_url, call_letter("two-1"))
    callback_seq = await publish_dead_letter(
        nats_url, callback_letter("two-1", "http://127.0.0.1:9/done")
    )

    response = await client.post(
        "/system/dead-letters/redrive", json={"seqs": [call_seq]}
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["failed"] == []
    [item] = report["redriven"]
    assert item["seq"] == call_seq
    assert item["call_id"] == "two-1"
    assert item["kind"] == "call"
    [message] = await stored_messages(nats_url)
    call = QueuedCall.from_nats(message.headers, message.data)
    assert call.call_id == item["new_call_id"]
    assert call.original_call_id == "two-1"
    listing = (await client.get("/system/dead-letters")).json()["dead_letters"]
    assert [letter["seq"] for letter in listing] == [callback_seq]
    assert listing[0]["kind"] == "callback"


async def test_purge_one_seq_of_call(client: httpx.AsyncClient, nats_url: str) -> None:
    call_seq = await publish_dead_letter(nats_url, call_letter("two-2"))
    callback_seq = await publish_dead_letter(
        nats_url, callback_letter("two-2", "http://127.0.0.1:9/done")
    )

    response = await client.request(
        "DELETE", "/system/dead-letters", json={"seqs": [callback_seq]}
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["failed"] == []
    assert report["purged"] == [
        {"call_id": "two-2", "kind": "callback", "seq": callback_seq}
    ]
    listing = (await client.get("/system/dead-letters")).json()["dead_letters"]
    assert [letter["seq"] for letter in listing] == [call_seq]
    assert await stored_messages(nats_url) == []


async def test_purge_by_query_seqs(client: httpx.AsyncClient, nats_url: str) -> None:
    seqs = [await publish_dead_letter(nats_url, call_letter("qs-1")) for _ in range(3)]

    response = await client.delete(
        "/system/dead-letters", params=[("seq", str(seqs[0])), ("seq", str(seqs[2]))]
    )

    assert response.status_code == 200, response.text
    assert [item["seq"] for item in response.json()["purged"]] == [seqs[0], seqs[2]]
    listing = (await client.get("/system/dead-letters")).json()["dead_letters"]
    assert [letter["seq"] for letter in listing] == [seqs[1]]


async def test_missing_seq_not_found(client: httpx.AsyncClient, nats_url: str) -> None:
    purged_seq = await publish_dead_letter(nats_url, call_letter("gone-1"))
    kept_seq = await publish_dead_letter(nats_url, call_letter("gone-2"))
    first = await client.request(
        "DELETE", "/system/dead-letters", json={"seqs": [purged_seq]}
    )
    assert first.status_code == 200, first.text
    max_seq = 2**64 - 1

    response = await client.request(
        "DELETE",
        "/system/dead-letters",
        json={"seqs": [purged_seq, kept_seq, 9999, max_seq]},
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert [item["seq"] for item in report["purged"]] == [kept_seq]
    assert report["failed"] == [
        {"call_id": None, "kind": None, "seq": seq, "error": "not found"}
        for seq in (purged_seq, 9999, max_seq)
    ]
    assert await dead_letter_count(nats_url) == 0


async def test_redrive_missing_seq_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/system/dead-letters/redrive", json={"seqs": [42]})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "redriven": [],
        "failed": [{"call_id": None, "kind": None, "seq": 42, "error": "not found"}],
    }


async def test_unreadable_seq_fails(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("ok-1"))
    connection = await nats.connect(nats_url)
    try:
        ack = await connection.jetstream().publish(
            f"{shared.DEAD_LETTER_SUBJECT_PREFIX}.default.x.y.z", b"not a dead letter"
        )
    finally:
        await connection.close()

    response = await client.request(
        "DELETE", "/system/dead-letters", json={"seqs": [ack.seq]}
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["purged"] == []
    [failure] = report["failed"]
    assert failure["seq"] == ack.seq
    assert failure["call_id"] is None
    assert failure["error"].startswith("not a readable dead letter")
    assert await dead_letter_count(nats_url) == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        pytest.param(b'{"seqs": []}', "Invalid seqs []", id="empty"),
        pytest.param(b'{"seqs": "17"}', 'Invalid seqs "17"', id="not-list"),
        pytest.param(b'{"seqs": [0]}', "Invalid seq 0 ", id="zero"),
        pytest.param(b'{"seqs": [-3]}', "Invalid seq -3 ", id="negative"),
        pytest.param(
            b'{"seqs": [18446744073709551616]}',
            "Invalid seq 18446744073709551616 ",
            id="above-uint64",
        ),
        pytest.param(b'{"seqs": ["17"]}', 'Invalid seq "17" ', id="string"),
        pytest.param(b'{"seqs": [1.5]}', "Invalid seq 1.5 ", id="fraction"),
        pytest.param(b'{"seqs": [true]}', "Invalid seq true ", id="boolean"),
        pytest.param(b'{"seqs": [null]}', "Invalid seq null ", id="null"),
        pytest.param(
            b'{"seqs": [1], "call_ids": ["a"]}', "not several", id="seqs-and-ids"
        ),
        pytest.param(b'{"seqs": [1], "all": true}', "not several", id="seqs-and-all"),
        pytest.param(
            b'{"seqs": [1], "filter": {"kind": "call"}}',
            "not several",
            id="seqs-and-filter",
        ),
    ],
)
async def test_invalid_seqs_400(
    client: httpx.AsyncClient, nats_url: str, body: bytes, named: str
) -> None:
    seq = await publish_dead_letter(nats_url, call_letter("keep-seq"))
    assert seq == 1

    redrive = await client.post("/system/dead-letters/redrive", content=body)
    purge = await client.request("DELETE", "/system/dead-letters", content=body)

    for response in (redrive, purge):
        assert response.status_code == 400, response.text
        assert named in response.json()["detail"]
    assert await dead_letter_count(nats_url) == 1


async def test_invalid_seq_detail_names_range(client: httpx.AsyncClient) -> None:
    response = await client.post("/system/dead-letters/redrive", json={"seqs": [0]})

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "from 1 to 18446744073709551615" in detail
    assert "seq of a listed dead letter" in detail


async def test_too_many_seqs_400(client: httpx.AsyncClient, nats_url: str) -> None:
    await publish_dead_letter(nats_url, call_letter("keep-many"))
    seqs = list(range(1, MAX_SELECTED_SEQS + 2))

    too_many = await client.post("/system/dead-letters/redrive", json={"seqs": seqs})
    at_limit = await client.request(
        "DELETE", "/system/dead-letters", json={"seqs": seqs[:-1]}
    )

    assert too_many.status_code == 400
    assert f"seqs has {MAX_SELECTED_SEQS + 1} items" in too_many.json()["detail"]
    assert at_limit.status_code == 200, at_limit.text
    assert [item["seq"] for item in at_limit.json()["purged"]] == [1]
    assert len(at_limit.json()["failed"]) == MAX_SELECTED_SEQS - 1
    assert await dead_letter_count(nats_url) == 0


@pytest.mark.parametrize(
    ("params", "named"),
    [
        pytest.param([("seq", "abc")], "Invalid seq 'abc'", id="not-number"),
        pytest.param([("seq", "0")], "Invalid seq '0'", id="zero"),
        pytest.param([("seq", "")], "Invalid seq ''", id="empty"),
        pytest.param(
            [("seq", "18446744073709551616")],
            "Invalid seq '18446744073709551616'",
            id="above-uint64",
        ),
        pytest.param([("seq", "1"), ("call_id", "a")], "not several", id="with-ids"),
    ],
)
async def test_invalid_query_seq_400(
    client: httpx.AsyncClient,
    nats_url: str,
    params: list[tuple[str, str]],
    named: str,
) -> None:
    await publish_dead_letter(nats_url, call_letter("keep-query"))

    response = await client.delete("/system/dead-letters", params=params)

    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]
    assert await dead_letter_count(nats_url) == 1


@pytest.mark.parametrize(
    "others",
    [
        pytest.param({"call_ids": ("a",)}, id="ids"),
        pytest.param({"filter": DeadLetterFilter(kind="call")}, id="filter"),
        pytest.param({"all": True}, id="all"),
    ],
)
def test_selection_seqs_exclusive(others: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot also have"):
        Selection(seqs=(1,), **others)
