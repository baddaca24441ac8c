"""Async calls end to end through `faashub up`: dedupe, delay, status, cancel, bodies.

One hub serves every test of this module (starting one takes seconds); each
test uses call ids of its own and its own callback receiver. The functions
are classic ones, run per request by the local provider: `sha256sum` prints
the digest of the body it received, so the callback proves the body arrived
intact.
"""

import datetime
import hashlib
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.stack import noop_function_argv
from tests.conftest import free_port
from tests.hub_support import CallbackReceiver, RunningHub, faashub, running_hub

pytestmark = pytest.mark.timeout(60)

NS_PER_S = 1_000_000_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir: Path = tmp_path_factory.mktemp("hub") / "state"
    with running_hub(state_dir) as running:
        deployed = faashub(
            "deploy", "--name", "digest", "--fprocess", "sha256sum", gateway=running.url
        )
        assert deployed.returncode == 0, deployed.stderr.decode()
        yield running


def queue(
    hub: RunningHub,
    *,
    body: bytes = b"hello",
    callback_url: str = "",
    call_id: str = "",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    request_headers = dict(headers or {})
    if callback_url:
        request_headers["X-Callback-Url"] = callback_url
    if call_id:
        request_headers["X-Call-Id"] = call_id
    return httpx.post(
        f"{hub.url}/async-function/digest",
        content=body,
        headers=request_headers,
        timeout=30,
    )


def status_of(hub: RunningHub, call_id: str) -> dict[str, Any]:
    response = httpx.get(f"{hub.url}/async-calls/{call_id}", timeout=10)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def wait_for_state(
    hub: RunningHub, call_id: str, state: str, *, timeout_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = status_of(hub, call_id)
        if status["state"] == state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"call {call_id} is {status['state']}, not {state}")
        time.sleep(0.1)


def digest_line(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest().encode() + b"  -"


def rfc3339_ns(text: str) -> int:
    moment = datetime.datetime.fromisoformat(text)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (moment - epoch) // datetime.timedelta(microseconds=1) * 1000


def test_duplicate_call_id_runs_once(hub: RunningHub) -> None:
    call_id = f"dup-{uuid.uuid4()}"
    with CallbackReceiver() as receiver:
        first = queue(hub, callback_url=receiver.url, call_id=call_id, body=b"one")
        second = queue(hub, callback_url=receiver.url, call_id=call_id, body=b"one")

        assert first.status_code == 202
        assert second.status_code == 202
        assert second.headers["X-Call-Id"] == call_id
        [callback] = receiver.wait_for(1)
        time.sleep(1.5)  # a second run would call back in this time
        assert len(receiver.received) == 1
    assert callback.headers["X-Call-Id"] == call_id
    assert callback.body.strip() == digest_line(b"one")
    status = wait_for_state(hub, call_id, "succeeded")
    assert status["attempts"] == 1


def test_status_queued_then_succeeded(hub: RunningHub) -> None:
    with CallbackReceiver() as receiver:
        response = queue(
            hub, callback_url=receiver.url, headers={"X-Delay-Seconds": "1"}
        )
        call_id = response.headers["X-Call-Id"]
        queued = status_of(hub, call_id)
        receiver.wait_for(1)

    assert queued["state"] == "queued"
    assert queued["function"] == "digest"
    succeeded = wait_for_state(hub, call_id, "succeeded")
    assert succeeded["attempts"] == 1
    assert succeeded["last_status"] == 200
    assert succeeded["started_at"] is not None
    assert succeeded["finished_at"] is not None
    assert succeeded["accepted_at"] == queued["accepted_at"]


def test_delayed_call_starts_no_earlier(hub: RunningHub) -> None:
    with CallbackReceiver() as receiver:
        response = queue(
            hub, callback_url=receiver.url, headers={"X-Delay-Seconds": "2"}
        )
        assert response.status_code == 202
        accepted_ns = int(response.headers["X-Start-Time"])
        call_id = response.headers["X-Call-Id"]
        [callback] = receiver.wait_for(1)
        arrived_ns = time.time_ns()

    assert callback.headers["X-Call-Id"] == call_id
    assert arrived_ns - accepted_ns >= 2 * NS_PER_S
    status = wait_for_state(hub, call_id, "succeeded")
    started_ns = rfc3339_ns(status["started_at"])
    # started_at has millisecond precision.
    assert started_ns >= accepted_ns + 2 * NS_PER_S - 1_000_000


def test_cancelled_call_never_runs(hub: RunningHub) -> None:
    with CallbackReceiver() as receiver:
        response = queue(
            hub, callback_url=receiver.url, headers={"X-Delay-Seconds": "2"}
        )
        call_id = response.headers["X-Call-Id"]

        cancelled = httpx.delete(f"{hub.url}/async-function/{call_id}", timeout=10)
        assert cancelled.status_code == 202
        time.sleep(3.5)  # past the delay, when the call would have run
        assert receiver.received == []

    assert status_of(hub, call_id)["state"] == "cancelled"
    again = httpx.delete(f"{hub.url}/async-function/{call_id}", timeout=10)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("runs_s", "state"),
    [
        pytest.param(3.0, "running", id="running"),
        # Finished before its first status write was due.
        pytest.param(0.3, "succeeded", id="finished-within-1s"),
    ],
)
def test_cancel_after_start_rejected(
    hub: RunningHub, tmp_path: Path, runs_s: float, state: str
) -> None:
    # The call has no status record in its first second. The cancel reads
    # the record that the run writes, so it is a 409, not a 202 that would
    # not stop the call.
    name = f"slow-{uuid.uuid4().hex[:8]}"
    started = tmp_path / "started"
    script = f"touch {shlex.quote(str(started))}; sleep {runs_s}; cat"
    deployed = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        shlex.join(["sh", "-c", script]),
        gateway=hub.url,
    )
    assert deployed.returncode == 0, deployed.stderr.decode()
    with CallbackReceiver() as receiver:
        response = httpx.post(
            f"{hub.url}/async-function/{name}",
            content=b"body",
            headers={"X-Callback-Url": receiver.url},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        call_id = response.headers["X-Call-Id"]
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the function never started"
            time.sleep(0.02)

        cancel = httpx.delete(f"{hub.url}/async-function/{call_id}", timeout=10)

        assert cancel.status_code == 409, cancel.text
        assert f"'{state}'" in cancel.text
        [callback] = receiver.wait_for(1, timeout_s=30)
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.body == b"body"
    assert wait_for_state(hub, call_id, "succeeded")["attempts"] == 1


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(5 * 1024 * 1024, id="5MiB"),
        # Above the hub's NATS max_payload (8 MiB): through the object store.
        pytest.param(9 * 1024 * 1024, id="9MiB-object-store"),
    ],
)
def test_large_body_reaches_function(hub: RunningHub, size: int) -> None:
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    with CallbackReceiver() as receiver:
        response = queue(hub, callback_url=receiver.url, body=body)
        assert response.status_code == 202, response.text
        call_id = response.headers["X-Call-Id"]
        [callback] = receiver.wait_for(1, timeout_s=45)

    assert callback.headers["X-Call-Id"] == call_id
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.body.strip() == digest_line(body)
    assert wait_for_state(hub, call_id, "succeeded")["attempts"] == 1


def test_body_over_max_413(hub: RunningHub) -> None:
    response = queue(hub, body=b"x" * (10 * 1024 * 1024 + 1))

    assert response.status_code == 413
    assert "10485760 bytes" in response.text


def test_http_function_called_directly(hub: RunningHub) -> None:
    # An http-mode function has a replica URL that the provider reports, so
    # the worker invokes it without the gateway and the provider in between.
    upstream_url = f"http://127.0.0.1:{free_port()}"
    deployment = {
        "service": "noop",
        "image": "bench/noop",
        "envProcess": shlex.join(noop_function_argv()),
        "envVars": {"mode": "http", "upstream_url": upstream_url},
    }
    deployed = httpx.post(
        f"{hub.url}/system/functions", json=deployment, auth=hub.auth, timeout=30
    )
    assert deployed.status_code in (200, 202), deployed.text
    deadline = time.monotonic() + 30.0
    while True:
        report = httpx.get(
            f"{hub.url}/system/function-endpoints/noop", auth=hub.auth, timeout=10
        ).json()
        if report["urls"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    with CallbackReceiver() as receiver:
        response = httpx.post(
            f"{hub.url}/async-function/noop",
            content=b"x",
            headers={"X-Callback-Url": receiver.url},
            timeout=30,
        )
        [callback] = receiver.wait_for(1)

    assert report["urls"] == [upstream_url]
    assert report["ttl_s"] > 0
    assert response.status_code == 202
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.headers["X-Call-Id"] == response.headers["X-Call-Id"]
    missing = httpx.get(
        f"{hub.url}/system/function-endpoints/absent", auth=hub.auth, timeout=10
    )
    assert missing.status_code == 404
