"""One hub with auth on, shared by the console tests, with three functions.

* `echo` (`cat`) carries a `topic`, a `schedule` and an annotation holding a
  `<script>` element, so the tests can check badges and escaping;
* `flaky` fails (`exit 1`, so a 500) until its flag file exists, and has
  one attempt, so its async calls are dead-lettered at once;
* `parked` is on a named queue that no worker serves, so its async calls
  stay `queued`.
"""

import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

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
        yield ConsoleHub(hub, client, receiver, flag_file)
