"""The pieces that the benchmarks share, run against real local servers.

The smoke runs (tests/test_bench_smoke.py) cover each benchmark's own
start-up and measurement, but only in smoke mode, which sends no warm-up
load and never reaches a start-up timeout. These tests cover those paths
of the shared code: the readiness waits of `Servers`, the callback
receiver's counts and the drain that reads them, the warm-up of `Context`
and the options and exit status of the raw loops.
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import arrivals, raw_loop, stack
from bench.errors import BenchmarkError
from bench.harness import Context
from bench.processes import LOOPBACK, Servers
from tests.conftest import free_port


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    with Servers(log_dir) as started:
        yield started


def sleeper_argv() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def http_server_argv(port: int, directory: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        LOOPBACK,
        "--directory",
        str(directory),
    ]


@pytest.mark.timeout(30)
def test_wait_for_port_timeout_named(servers: Servers) -> None:
    process = servers.start("sleeper", sleeper_argv())
    port = free_port()

    with pytest.raises(BenchmarkError) as raised:
        servers.wait_for_port("sleeper", process, port, timeout_s=0.3)

    message = str(raised.value)
    assert f"sleeper did not listen on port {port} within 0.3 s" in message
    assert "last check: ConnectionRefusedError" in message
    assert str(servers.log_path("sleeper")) in message


@pytest.mark.timeout(30)
def test_wait_for_port_exit_reported(servers: Servers) -> None:
    process = servers.start("quitter", [sys.executable, "-c", "raise SystemExit(3)"])

    with pytest.raises(BenchmarkError, match="quitter exited with code 3"):
        servers.wait_for_port("quitter", process, free_port(), timeout_s=20)


@pytest.mark.timeout(30)
def test_wait_for_health_ready(servers: Servers, tmp_path: Path) -> None:
    port = free_port()
    process = servers.start("http-server", http_server_argv(port, tmp_path))

    servers.wait_for_health(
        "http-server", process, f"http://{LOOPBACK}:{port}/", timeout_s=20
    )

    assert process.poll() is None


@pytest.mark.timeout(30)
def test_wait_for_health_status_named(servers: Servers, tmp_path: Path) -> None:
    port = free_port()
    process = servers.start("http-server", http_server_argv(port, tmp_path))
    servers.wait_for_port("http-server", process, port, timeout_s=20)
    url = f"http://{LOOPBACK}:{port}/missing"

    with pytest.raises(BenchmarkError) as raised:
        servers.wait_for_health("http-server", process, url, timeout_s=0.3)

    message = str(raised.value)
    assert f"http-server did not become healthy at {url}" in message
    assert "last check: status 404" in message


@pytest.mark.timeout(60)
def test_callback_counts_read_and_reset(servers: Servers) -> None:
    receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
    stack.wait_until_ready(servers, receiver)
    callback_url = f"{receiver.url}/callback"

    with httpx.Client(timeout=5.0, trust_env=False) as client:
        client.post(callback_url, headers={"X-Function-Status": "200"})
        client.post(callback_url, headers={"X-Function-Status": "500"})
        counted = arrivals.read(client, receiver.url)
        arrivals.reset(receiver.url)
        cleared = arrivals.read(client, receiver.url)

    assert counted.count == 2
    assert counted.failed == 1
    assert 0 < counted.first_ns <= counted.last_ns
    assert cleared == arrivals.Arrivals(count=0, failed=0, first_ns=0, last_ns=0)


def poster(servers: Servers, url: str, count: int) -> stack.Component:
    """Start a process that POSTs `count` callbacks to `url`, then exits."""
    script = (
        "import urllib.request\n"
        f"for _ in range({count}):\n"
        f"    request = urllib.request.Request({url!r}, data=b'x', method='POST')\n"
        "    request.add_header('X-Function-Status', '200')\n"
        "    urllib.request.urlopen(request).read()\n"
    )
    process = servers.start("poster", [sys.executable, "-c", script])
    return stack.Component("poster", process, "", 0)


def drain_watch(receiver: stack.Component, expected: int) -> arrivals.DrainWatch:
    return arrivals.DrainWatch(
        receiver_url=receiver.url,
        expected=expected,
        time_limit_s=20,
        other_pids={"callback": receiver.process.pid},
        drainer_part="drainer",
        noun="callback",
    )


@pytest.mark.timeout(60)
def test_drain_watch_short_drain(servers: Servers) -> None:
    receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
    stack.wait_until_ready(servers, receiver)
    notes: list[str] = []

    drain = drain_watch(receiver, expected=50).measure(
        servers,
        lambda: poster(servers, f"{receiver.url}/callback", 20),
        label="run 1 test",
        notes=notes,
    )

    assert drain.arrivals.count == 20
    assert drain.arrivals.failed == 0
    assert drain.rate_per_s > 0
    assert drain.wall_s >= drain.drain_s > 0
    assert notes == [
        "run 1 test: 20 of 50 callbacks arrived within 20 s; "
        "the rate covers those only."
    ]


@pytest.mark.timeout(60)
def test_drain_watch_too_few(servers: Servers) -> None:
    receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
    stack.wait_until_ready(servers, receiver)

    with pytest.raises(BenchmarkError, match="poster delivered 1 of 50 callbacks"):
        drain_watch(receiver, expected=50).measure(
            servers,
            lambda: poster(servers, f"{receiver.url}/callback", 1),
            label="run 1 test",
            notes=[],
        )


@pytest.mark.timeout(60)
def test_warm_up_once_per_side(servers: Servers, tmp_path: Path) -> None:
    receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
    stack.wait_until_ready(servers, receiver)
    context = Context(
        smoke=True, servers=servers, work_dir=tmp_path, load_choice="aiohttp"
    )
    url = f"{receiver.url}/callback"

    def warm_up(side: str, duration_s: float) -> bool:
        return context.warm_up(
            side, url, duration_s=duration_s, connections=2, body_bytes=16
        )

    with httpx.Client(timeout=5.0, trust_env=False) as client:
        first = warm_up("baseline", 0.2)
        after_first = arrivals.read(client, receiver.url).count
        again = warm_up("baseline", 0.2)
        after_again = arrivals.read(client, receiver.url).count
        skipped = warm_up("faashub", 0)
        after_skipped = arrivals.read(client, receiver.url).count

    assert first is True
    assert after_first > 0
    assert again is False
    assert after_again == after_first
    assert skipped is False
    assert after_skipped == after_first


def test_raw_loop_outcome_status(capsys: pytest.CaptureFixture[str]) -> None:
    complete = raw_loop.print_outcome({"sent": 5, "failed": 0}, done=5, count=5)
    short = raw_loop.print_outcome({"sent": 4, "failed": 1}, done=4, count=5)

    lines = capsys.readouterr().out.splitlines()
    assert complete == 0
    assert short == 1
    assert [json.loads(line) for line in lines] == [
        {"sent": 5, "failed": 0},
        {"sent": 4, "failed": 1},
    ]


def test_raw_loop_options_round_trip() -> None:
    parser = raw_loop.argument_parser(
        "bench.raw_test", "A test loop.", count_help="items to send"
    )
    parser.add_argument("--source", required=True)
    options = raw_loop.loop_options(
        function_url="http://127.0.0.1:1/", count=7, concurrency=3, time_limit_s=2.5
    )

    args = parser.parse_args([*options, "--source", "s"])

    assert args.function_url == "http://127.0.0.1:1/"
    assert args.count == 7
    assert args.concurrency == 3
    assert args.time_limit_s == 2.5
    assert args.source == "s"


def test_raw_loop_option_defaults() -> None:
    parser = raw_loop.argument_parser(
        "bench.raw_test", "A test loop.", count_help="items to send"
    )

    args = parser.parse_args(["--function-url", "http://127.0.0.1:1/", "--count", "7"])

    assert args.concurrency == 64
    assert args.time_limit_s == 300.0
