"""`faashub up --sqs-queues`: the SQS connector inside a real hub.

A real hub (gateway, provider, queue-worker) and the moto SQS server of the
session: messages sent to the queue reach the function whose topic
annotation names it, and are deleted once it succeeded.
"""

import asyncio
import shlex
from pathlib import Path

import pytest

from tests.connectors.conftest import wait_until
from tests.connectors.sqs.conftest import create_queue, queue_counts, send_messages
from tests.hub_support import faashub, start_hub, stop_hub

pytestmark = pytest.mark.timeout(120)


def deploy_recorder(gateway: str, name: str, queue: str, output: Path) -> None:
    """Deploy a classic function that appends its queue header and body to a file."""
    script = (
        'printf "%s %s\\n" "$Http_X_Sqs_Queue_Url" "$(cat)" '
        f">> {shlex.quote(str(output))}"
    )
    result = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        f"sh -c {shlex.quote(script)}",
        "--annotation",
        f"topic={queue}",
        gateway=gateway,
    )
    assert result.returncode == 0, result.stderr.decode()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_up_runs_sqs_connector_for_queues(
    sqs_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_url = await create_queue(sqs_endpoint, "hub")
    queue = queue_url.rsplit("/", 1)[1]
    output = tmp_path / "received.txt"
    # The connector reads the function list every second rather than every
    # 10 s, so the function deployed after the start is found quickly.
    monkeypatch.setenv("FAASHUB_REBUILD_INTERVAL_S", "1")
    hub = await asyncio.to_thread(
        start_hub,
        tmp_path / "state",
        extra_args=[
            "--no-cron",
            "--sqs-queues",
            queue,
            "--sqs-endpoint-url",
            sqs_endpoint,
            "--sqs-region",
            "us-east-1",
        ],
    )
    try:
        await asyncio.to_thread(deploy_recorder, hub.url, "recorder", queue, output)
        await send_messages(sqs_endpoint, queue_url, [b"one", b"two"])
        await wait_until(
            lambda: len(lines(output)) == 2,
            timeout_s=30,
            description="two messages at the function",
        )
        assert sorted(line.split(" ", 1)[1] for line in lines(output)) == [
            "one",
            "two",
        ]
        assert all(line.startswith(queue_url + " ") for line in lines(output))

        async def deleted() -> bool:
            return await queue_counts(sqs_endpoint, queue_url) == (0, 0)

        deadline = asyncio.get_running_loop().time() + 15
        while not await deleted():
            assert asyncio.get_running_loop().time() < deadline, "not deleted"
            await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(stop_hub, hub)
