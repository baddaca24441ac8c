"""The `faashub dlq`, `status` and `cancel` commands against a real gateway.

The gateway runs in a thread in front of a fake provider and a real NATS
server (see tests/gateway/conftest.py). Each command runs in-process through
`faashub.cli.main.main`, in a worker thread so that the test's event loop
keeps serving the fake provider meanwhile.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from faashub import constants as shared
from faashub.call_status import EXTRA_THROTTLED, CallState, CallStatus
from faashub.cli.main import main
from faashub.dead_letter import (
    REASON_ATTEMPTS_EXHAUSTED,
    REASON_EXPIRED,
    Attempt,
    DeadLetter,
)
from faashub.queued_call import QueuedCall
from faashub.settings import GatewaySettings
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import (
    FakeProvider,
    RunningGateway,
    dead_letter_count,
    publish_dead_letter,
    stored_messages,
    wait_until_healthy,
    write_status,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    fake.deploy("echo")
    runner = web.AppRunner(fake.build_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    fake.url = f"http://{LOOPBACK}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(nats_url: str, provider: FakeProvider) -> AsyncIterator[str]:
    settings = GatewaySettings(
        host=LOOPBACK, port=free_port(), provider_url=provider.url, nats_url=nats_url
    )
    running = RunningGateway(settings)
    await running.start()
    await wait_until_healthy(running.url)
    try:
        yield running.url
    finally:
        await running.stop()


@pytest.fixture
def cli(gateway: str, capsys: pytest.CaptureFixture[str]) -> "CommandRunner":
    return CommandRunner(gateway, capsys)


class CommandRunner:
    """Runs `faashub ...` against the test gateway and returns its output."""

    def __init__(self, gateway: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.gateway = gateway
        self._capsys = capsys

    async def __call__(self, *arguments: str) -> Result:
        self._capsys.readouterr()
        code = await asyncio.to_thread(main, [*arguments, "--gateway", self.gateway])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)


def letter(
    call_id: str, *, function: str = "echo", reason: str = REASON_ATTEMPTS_EXHAUSTED
) -> DeadLetter:
    now_ns = time.time_ns()
    return DeadLetter(
        kind="call",
        reason=reason,
        call=QueuedCall(
            function=function,
            namespace=shared.DEFAULT_NAMESPACE,
            call_id=call_id,
            accepted_at_ns=now_ns,
            headers={
                "Authorization": "Bearer hidden",
                "x-callback-url": "http://cbuser:CBPASS@127.0.0.1:9/cb?token=CBTOKEN",
                "x-api-key": "APIKEYVALUE",
            },
            callback_url="http://cbuser:CBPASS@127.0.0.1:9/cb?token=CBTOKEN",
            body=b"data",
        ),
        attempts=[Attempt(status=500, error="status 500", at_ns=now_ns)],
        dead_lettered_at_ns=now_ns,
    )


async def test_dlq_list_table(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("l-1"))
    await publish_dead_letter(nats_url, letter("l-2", reason=REASON_EXPIRED))

    result = await cli("dlq", "list")

    assert result.code == 0, result.err
    header, first, second = result.out.splitlines()
    assert header.split()[:4] == ["Seq", "Call", "id", "Kind"]
    assert first.split()[:5] == [
        "1",
        "l-1",
        "call",
        REASON_ATTEMPTS_EXHAUSTED,
        "echo.openfaas-fn",
    ]
    assert second.split()[:4] == ["2", "l-2", "call", REASON_EXPIRED]
    assert first.split()[-1] == "500"


async def test_dlq_list_filters_and_json(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("j-1", reason=REASON_EXPIRED))
    await publish_dead_letter(nats_url, letter("j-2"))

    result = await cli(
        "dlq", "list", "--reason", REASON_EXPIRED, "--since", "1h", "--json"
    )

    assert result.code == 0, result.err
    listing = json.loads(result.out)
    assert [item["call_id"] for item in listing["dead_letters"]] == ["j-1"]


async def test_dlq_list_truncated_hint(cli: CommandRunner, nats_url: str) -> None:
    for index in range(3):
        await publish_dead_letter(nats_url, letter(f"t-{index}"))

    result = await cli("dlq", "list", "--limit", "2")

    assert result.code == 0
    assert len(result.out.splitlines()) == 3
    assert "--after-seq 2" in result.err


async def test_dlq_list_bad_since(cli: CommandRunner) -> None:
    result = await cli("dlq", "list", "--since", "last week")

    assert result.code == 2
    assert "'last week'" in result.err
    assert "--since" in result.err


async def test_dlq_list_bad_reason(cli: CommandRunner) -> None:
    result = await cli("dlq", "list", "--reason", "bored")

    assert result.code == 2
    assert "HTTP 400" in result.err
    assert "'bored'" in result.err


async def test_dlq_show(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("sh-1"))

    result = await cli("dlq", "show", "sh-1")

    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["call_id"] == "sh-1"
    headers = shown["request"]["headers"]
    assert headers["Authorization"] == "<redacted>"
    assert headers["x-api-key"] == "<redacted>"
    assert headers["x-callback-url"] == "http://127.0.0.1:9/cb?<redacted>"
    assert shown["request"]["callback_url"] == "http://127.0.0.1:9/cb?<redacted>"
    for secret in ("hidden", "CBPASS", "CBTOKEN", "APIKEYVALUE"):
        assert secret not in result.out, secret


async def test_dlq_show_unknown(cli: CommandRunner) -> None:
    result = await cli("dlq", "show", "nope")

    assert result.code == 2
    assert f"No dead letter for call id 'nope' at {cli.gateway}." in result.err
    assert "'faashub dlq list' lists the dead letters" in result.err
    assert "GET /system/dead-letters" not in result.err


async def test_dlq_show_unknown_without_flag(
    cli: CommandRunner,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The gateway comes from OPENFAAS_URL, so the message names that URL.
    monkeypatch.setenv("OPENFAAS_URL", cli.gateway)
    capsys.readouterr()

    code = await asyncio.to_thread(main, ["dlq", "show", "nope"])

    assert code == 2
    err = capsys.readouterr().err
    assert f"No dead letter for call id 'nope' at {cli.gateway}." in err


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(("status", ""), id="status"),
        pytest.param(("cancel", " "), id="cancel"),
        pytest.param(("dlq", "show", ""), id="dlq-show"),
    ],
)
def test_empty_call_id_rejected(
    capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...]
) -> None:
    # argparse rejects the id, so no request is sent to the unused port.
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--gateway", "http://127.0.0.1:9"])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid call id" in err
    assert "X-Call-Id header of the call's 202 response" in err
    assert "HTTP" not in err


async def test_dlq_redrive_ids(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("rd-1"))
    await publish_dead_letter(nats_url, letter("rd-2"))

    result = await cli("dlq", "redrive", "rd-1", "rd-2")

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["rd-1", "rd-2"]
    new_ids = sorted(line.split(" -> ")[1] for line in lines)
    messages = await stored_messages(nats_url)
    assert sorted(message.headers["Faashub-Call-Id"] for message in messages) == new_ids
    assert "Redrove 2 dead letters." in result.err


async def test_dlq_redrive_failure_exit_1(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("rf-1", function="removed"))

    result = await cli("dlq", "redrive", "--function", "removed")

    assert result.code == 1
    assert "rf-1 (call, seq 1)" in result.err
    assert "'removed'" in result.err
    assert await dead_letter_count(nats_url) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param((), "Select dead letters", id="nothing"),
        pytest.param(("a-1", "--all"), "not several", id="ids-and-all"),
        pytest.param(
            ("--function", "echo", "--all"), "not several", id="filter-and-all"
        ),
        pytest.param(("a-1", "--seq", "1"), "not several", id="ids-and-seq"),
    ],
)
async def test_dlq_redrive_selection_errors(
    cli: CommandRunner, arguments: tuple[str, ...], message: str
) -> None:
    result = await cli("dlq", "redrive", *arguments)

    assert result.code == 2
    assert message in result.err


@pytest.mark.parametrize(
    ("action", "verb"),
    [
        pytest.param("redrive", "Redrove", id="redrive"),
        pytest.param("purge", "Purged", id="purge"),
    ],
)
async def test_dlq_unknown_id_exit_1(
    cli: CommandRunner, nats_url: str, action: str, verb: str
) -> None:
    await publish_dead_letter(nats_url, letter("kn-1"))

    result = await cli("dlq", action, "kn-1", "does-not-exist")

    assert result.code == 1
    assert "No dead letter has call id 'does-not-exist'" in result.err
    assert "kn-1" not in result.err
    assert f"{verb} 1 dead letter; 1 failed." in result.err
    assert await dead_letter_count(nats_url) == 0


async def test_dlq_purge_by_seq(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("sq-1"))
    await publish_dead_letter(nats_url, letter("sq-1"))

    result = await cli("dlq", "purge", "--seq", "2", "--seq", "999")

    assert result.code == 1
    assert "No dead letter has seq 999" in result.err
    assert "None" not in result.err
    assert "Purged 1 dead letter; 1 failed." in result.err
    listed = await cli("dlq", "list", "--json")
    assert [item["seq"] for item in json.loads(listed.out)["dead_letters"]] == [1]


async def test_dlq_redrive_by_seq(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("sr-1"))
    await publish_dead_letter(nats_url, letter("sr-2"))

    result = await cli("dlq", "redrive", "--seq", "2")

    assert result.code == 0, result.err
    assert result.out.startswith("sr-2 -> ")
    assert len(await stored_messages(nats_url)) == 1
    assert await dead_letter_count(nats_url) == 1


@pytest.mark.parametrize("value", ["1_0", "٣", "-1", "x"])
def test_dlq_seq_must_be_digits(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "purge", "--seq", value, "--gateway", "http://127.0.0.1:9"])

    assert exited.value.code == 2
    assert repr(value) in capsys.readouterr().err


async def test_dlq_purge_all_needs_yes(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("pg-1"))

    refused = await cli("dlq", "purge", "--all")
    remaining = await dead_letter_count(nats_url)
    confirmed = await cli("dlq", "purge", "--all", "--yes")

    assert refused.code == 2
    assert "--yes" in refused.err
    assert remaining == 1
    assert confirmed.code == 0, confirmed.err
    assert "Purged 1 dead letter." in confirmed.err
    assert await dead_letter_count(nats_url) == 0


async def test_dlq_purge_by_filter(cli: CommandRunner, nats_url: str) -> None:
    await publish_dead_letter(nats_url, letter("pf-1", reason=REASON_EXPIRED))
    await publish_dead_letter(nats_url, letter("pf-2"))

    result = await cli("dlq", "purge", "--reason", REASON_EXPIRED, "--json")

    assert result.code == 0, result.err
    assert [item["call_id"] for item in json.loads(result.out)["purged"]] == ["pf-1"]
    assert await dead_letter_count(nats_url) == 1


async def test_status_and_cancel(cli: CommandRunner, gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/async-function/echo",
            content=b"x",
            headers={"X-Call-Id": "job 7/a", "X-Delay-Seconds": "60"},
        )
    assert response.status_code == 202

    status = await cli("status", "job 7/a")
    cancelled = await cli("cancel", "job 7/a")
    again = await cli("cancel", "job 7/a")
    after = await cli("status", "job 7/a", "--json")

    assert status.code == 0, status.err
    assert "State:" in status.out
    assert "queued" in status.out
    assert "Next attempt at:" in status.out
    assert cancelled.code == 0, cancelled.err
    assert cancelled.out.strip() == "Cancelled job 7/a."
    assert again.code == 2
    assert "HTTP 409" in again.err
    assert "cancelled" in again.err
    assert json.loads(after.out)["state"] == "cancelled"


async def test_status_shows_throttled_attempts(
    cli: CommandRunner, gateway: str, nats_url: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway) as client:
        response = await client.post(
            "/async-function/echo", content=b"x", headers={"X-Call-Id": "thr-1"}
        )
    assert response.status_code == 202
    # Five invocations, four of which got a 429, under a budget of two.
    now_ns = time.time_ns()
    record = CallStatus(
        call_id="thr-1",
        function="echo",
        namespace=shared.DEFAULT_NAMESPACE,
        state=CallState.SUCCEEDED,
        attempts=5,
        max_attempts=2,
        accepted_at_ns=now_ns,
        updated_at_ns=now_ns,
        extra={EXTRA_THROTTLED: 4},
    )
    await write_status(nats_url, record)

    text = await cli("status", "thr-1")
    as_json = await cli("status", "thr-1", "--json")

    assert text.code == 0, text.err
    assert "Attempts:" in text.out
    assert "1 of 2 (plus 4 throttled, not counted)" in text.out
    status = json.loads(as_json.out)
    assert status["attempts"] == 5
    assert status["max_attempts"] == 2
    assert status["throttled_attempts"] == 4


async def test_status_unknown(cli: CommandRunner) -> None:
    result = await cli("status", "nobody")

    assert result.code == 2
    assert "HTTP 404" in result.err
    assert "'nobody'" in result.err


async def test_gateway_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://{LOOPBACK}:{free_port()}"

    code = await asyncio.to_thread(main, ["dlq", "list", "--gateway", dead])

    assert code == 2
    assert f"Cannot reach the gateway at {dead}" in capsys.readouterr().err


def run_with_closed_stdout(*arguments: str) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m faashub` with a stdout pipe whose reader has closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "faashub", *arguments],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("dlq", "show", "bp-1"), id="dlq-show"),
        pytest.param(("dlq", "list"), id="dlq-list"),
        pytest.param(("dlq", "redrive", "bp-1"), id="dlq-redrive"),
    ],
)
async def test_closed_stdout_exits_quietly(
    gateway: str, nats_url: str, command: tuple[str, ...]
) -> None:
    await publish_dead_letter(nats_url, letter("bp-1"))

    result = await asyncio.to_thread(
        run_with_closed_stdout, *command, "--gateway", gateway
    )

    assert result.returncode == 1
    assert result.stderr == b""


async def test_dlq_since_takes_ascii_digits(cli: CommandRunner) -> None:
    result = await cli("dlq", "list", "--since", "٣h")

    assert result.code == 2
    assert "Invalid --since '٣h'" in result.err
