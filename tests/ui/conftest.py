"""One hub with auth on, shared by the console tests, with three functions.

* `echo` (`cat`) carries a `topic`, a `schedule` and an annotation holding a
  `<script>` element, so the tests can check badges and escaping;
* `flaky` fails (`exit 1`, so a 500) until its flag file exists, and has
  one attempt, so its async calls are dead-lettered at once;
* `parked` is on a named queue that no worker serves, so its async calls
  stay `queued`;
* `doomed` always fails and has one attempt; `doomed_dead_letters` makes
  enough of its dead letters for a second page of the dead-letter list, and
  `letters_of_one_call` stores two dead letters of one call id.
"""

import asyncio
import concurrent.futures
import shlex
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from faashub import constants as shared
from faashub import jetstream
from faashub.dead_letter import (
    REASON_ATTEMPTS_EXHAUSTED,
    REASON_CALLBACK_FAILED,
    DeadLetter,
)
from faashub.queued_call import QueuedCall
from tests.hub_support import CallbackReceiver, RunningHub, running_hub

SCRIPT_ANNOTATION = "<script>alert('annotation')</script>"


@dataclass
class ConsoleHub:
    hub: RunningHub
    client: httpx.Client
    """Sends the hub's credentials with every request."""
    receiver: CallbackReceiver
    flag_file: Path
    """While missing, function `flaky` fails."""

    @property
    def url(self) -> str:
        return self.hub.url

    def wait_for_state(self, call_id: str, state: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen = ""
        while time.monotonic() < deadline:
            response = self.client.get(f"/async-calls/{call_id}")
            if response.status_code == 200:
                seen = response.json()["state"]
                if seen == state:
                    return
            time.sleep(0.1)
        raise AssertionError(f"call {call_id} is {seen!r}, expected {state!r}")


def deploy(client: httpx.Client, name: str, process: str, **annotations: str) -> None:
    response = client.post(
        "/system/functions",
        json={
            "service": name,
            "image": f"local/{name}",
            "envProcess": process,
            "annotations": annotations,
        },
    )
    assert response.status_code in (200, 202), response.text


@pytest.fixture(scope="package")
def console_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleHub]:
    folder = tmp_path_factory.mktemp("console")
    flag_file = folder / "flaky-may-succeed"
    with (
        running_hub(folder / "state") as hub,
        CallbackReceiver() as receiver,
        httpx.Client(base_url=hub.url, auth=hub.auth, timeout=30) as client,
    ):
        deploy(
            client,
            "echo",
            "cat",
            topic="orders",
            schedule="*/5 * * * *",
            note=SCRIPT_ANNOTATION,
        )
        flaky = f"sh -c {shlex.quote(f'test -f {shlex.quote(str(flag_file))} && cat')}"
        deploy(client, "flaky", flaky, **{"com.openfaas.retry.attempts": "1"})
        deploy(client, "parked", "cat", **{"com.openfaas.queue": "parked"})
        deploy(client, "doomed", "false", **{"com.openfaas.retry.attempts": "1"})
        yield ConsoleHub(hub, client, receiver, flag_file)


@contextmanager
def doomed_dead_letters(
    console_hub: ConsoleHub, count: int, *, timeout_s: float = 60.0
) -> Iterator[list[dict[str, Any]]]:
    """Dead-letter `count` new calls of `doomed`, and purge all of its at the end.

    Yields the new dead letters as `GET /system/dead-letters` lists them.
    """
    client = console_hub.client
    prefix = f"doomed-{uuid.uuid4().hex[:8]}"
    call_ids = {f"{prefix}-{index}" for index in range(count)}
    try:
        for call_id in sorted(call_ids):
            response = client.post(
                "/async-function/doomed", content=b"x", headers={"X-Call-Id": call_id}
            )
            assert response.status_code == 202, response.text
        deadline = time.monotonic() + timeout_s
        while True:
            listing = client.get(
                "/system/dead-letters", params={"function": "doomed", "limit": 1000}
            ).json()
            new_letters = [
                letter
                for letter in listing["dead_letters"]
                if letter["call_id"] in call_ids
            ]
            if len(new_letters) == count:
                break
            assert time.monotonic() < deadline, (
                f"{len(new_letters)} of {count} dead letters"
            )
            time.sleep(0.2)
        yield new_letters
    finally:
        purged = client.delete("/system/dead-letters", params={"function": "doomed"})
        assert purged.status_code == 200, purged.text


@contextmanager
def letters_of_one_call(console_hub: ConsoleHub) -> Iterator[tuple[str, list[int]]]:
    """Store a `call` and a `callback` dead letter of one new call id of `doomed`.

    Yields the call id and the two stream sequences, and purges what is left
    of them at the end.
    """
    call_id = f"twice-{uuid.uuid4().hex[:8]}"
    at_ns = time.time_ns()
    call = QueuedCall(
        function="doomed",
        namespace=shared.DEFAULT_NAMESPACE,
        call_id=call_id,
        method="POST",
        path="",
        query="",
        callback_url="http://127.0.0.1:9/done",
        accepted_at_ns=at_ns,
        headers={"Content-Type": "text/plain"},
        body=b"x",
    )
    letters = [
        DeadLetter(
            kind="call",
            reason=REASON_ATTEMPTS_EXHAUSTED,
            call=call,
            dead_lettered_at_ns=at_ns,
        ),
        DeadLetter(
            kind="callback",
            reason=REASON_CALLBACK_FAILED,
            call=call,
            dead_lettered_at_ns=at_ns,
            result_status=500,
        ),
    ]
    # A thread of its own, because the sync Playwright tests own this thread's
    # event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        seqs = executor.submit(
            asyncio.run, _publish_dead_letters(console_hub, letters)
        ).result()
    try:
        yield call_id, seqs
    finally:
        purged = console_hub.client.delete(
            "/system/dead-letters", params={"call_id": call_id}
        )
        assert purged.status_code == 200, purged.text


async def _publish_dead_letters(
    console_hub: ConsoleHub, letters: list[DeadLetter]
) -> list[int]:
    """Store `letters` as the worker would, and return their stream sequences."""
    hub = console_hub.hub
    connection = await nats.connect(hub.nats_url(), token=hub.nats_token())
    try:
        js = connection.jetstream()
        await jetstream.ensure_dead_letter_stream(js)
        seqs = []
        for letter in letters:
            headers, body = letter.to_nats()
            ack = await js.publish(letter.subject(), body, headers=headers)
            seqs.append(ack.seq)
        return seqs
    finally:
        await connection.close()
