"""Function logs: the rotating store and GET /system/logs with tail, since, follow."""

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import ValidationError

from faashub.names import FunctionRef
from faashub.settings import MIN_LOG_MAX_FILE_BYTES, LocalProviderSettings
from provider.backend import Invocation
from provider.local.backend import LocalBackend
from provider.local.function_logs import LogStore
from provider.local.processes import MAX_LOG_LINE_BYTES
from provider.logs_api import parse_rfc3339
from provider.types import FunctionDeployment, LogRequest
from tests.provider.conftest import (
    RunningProvider,
    deploy,
    log_context,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

# A classic function that writes its request body to stderr, one line per line.
ECHO_TO_STDERR = "sh -c 'cat >&2'"
MESSAGE_KEYS = {"name", "namespace", "instance", "timestamp", "text"}


def log_to(client: httpx.Client, function: str, *lines: str) -> None:
    body = "".join(line + "\n" for line in lines).encode()
    response = client.post(f"/function/{function}", content=body)
    assert response.status_code == 200, response.text


def read_logs(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/system/logs", params=params)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [message["text"] for message in messages]


class Follower:
    """Reads a followed log stream in a thread and collects its messages.

    It uses http.client on a socket of its own, so leaving the block can shut
    the socket down, which disconnects at once even while the thread reads.
    """

    def __init__(self, url: str, **params: Any) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 0
        self.content_type = ""
        self.ended = threading.Event()
        address = httpx.URL(url)
        self._connection = http.client.HTTPConnection(
            address.host, address.port, timeout=20
        )
        self._target = "/system/logs?" + urlencode({"follow": "true", **params})
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Follower":
        self._connection.request("GET", self._target)
        response = self._connection.getresponse()
        self.status = response.status
        self.content_type = response.getheader("content-type", "")
        self._thread = threading.Thread(target=self._read, args=(response,))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._connection.sock is not None
        with contextlib.suppress(OSError):
            self._connection.sock.shutdown(socket.SHUT_RDWR)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._connection.close()

    def _read(self, response: http.client.HTTPResponse) -> None:
        try:
            while line := response.readline():
                if line.strip():
                    self.messages.append(json.loads(line))
        except (OSError, http.client.HTTPException):
            pass  # the test shut the socket down to disconnect
        finally:
            self.ended.set()

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        wait_until(
            lambda: len(self.messages) >= count, what=f"{count} followed log lines"
        )
        return list(self.messages)


def test_message_shape_and_content_type(client: httpx.Client) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "hello log")

    response = client.get("/system/logs", params={"name": "talker"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    [message] = [json.loads(line) for line in response.text.splitlines()]
    assert set(message) == MESSAGE_KEYS
    assert message["name"] == "talker"
    assert message["namespace"] == "openfaas-fn"
    assert message["instance"].startswith("talker-")
    assert message["text"] == "hello log"
    assert message["timestamp"].endswith("Z")
    stamped_at = datetime.fromisoformat(message["timestamp"])
    assert abs((datetime.now(UTC) - stamped_at).total_seconds()) < 30


def test_tail_returns_last_lines(client: httpx.Client) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "one", "two", "three")
    log_to(client, "talker", "four", "five")

    assert texts(read_logs(client, name="talker", tail=2)) == ["four", "five"]
    assert texts(read_logs(client, name="talker", tail=0)) == [
        "one",
        "two",
        "three",
        "four",
        "five",
    ]
    assert len(read_logs(client, name="talker", tail=-1)) == 5
    assert len(read_logs(client, name="talker", tail=50)) == 5


def test_since_skips_older_lines(client: httpx.Client) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "before")
    time.sleep(0.05)
    boundary = datetime.now(UTC)
    time.sleep(0.05)
    log_to(client, "talker", "after")

    since = boundary.isoformat().replace("+00:00", "Z")
    assert texts(read_logs(client, name="talker", since=since)) == ["after"]
    future = (boundary + timedelta(hours=1)).isoformat()
    assert read_logs(client, name="talker", since=future) == []


def test_instance_selects_one_request(client: httpx.Client) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "first request")
    log_to(client, "talker", "second request")
    first, second = read_logs(client, name="talker")

    only_second = read_logs(client, name="talker", instance=second["instance"])

    assert first["instance"] != second["instance"]
    assert texts(only_second) == ["second request"]
    assert read_logs(client, name="talker", instance="talker-none") == []


def test_name_with_default_namespace(client: httpx.Client) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "line")

    messages = read_logs(client, name="talker", namespace="openfaas-fn")

    assert texts(messages) == ["line"]


def test_no_lines_yet_returns_empty_stream(client: httpx.Client) -> None:
    assert deploy(client, "quiet", "cat").status_code == 202

    response = client.get("/system/logs", params={"name": "quiet"})

    assert response.status_code == 200
    assert response.text == ""


@pytest.mark.parametrize(
    ("params", "status", "expected"),
    [
        pytest.param({}, 400, "name", id="no-name"),
        pytest.param({"name": ""}, 400, "name", id="empty-name"),
        pytest.param({"name": "nobody"}, 404, "'nobody'", id="unknown"),
        pytest.param({"name": "Bad_Name"}, 400, "'Bad_Name'", id="invalid-name"),
        pytest.param(
            {"name": "talker", "namespace": "team-a"}, 404, "'team-a'", id="namespace"
        ),
        pytest.param({"name": "talker", "tail": "ten"}, 400, "'ten'", id="bad-tail"),
        pytest.param(
            {"name": "talker", "since": "yesterday"}, 400, "'yesterday'", id="bad-since"
        ),
        pytest.param(
            {"name": "talker", "since": "2024-05-01T12:00:00"},
            400,
            "RFC 3339",
            id="since-without-offset",
        ),
        pytest.param(
            {"name": "talker", "follow": "maybe"}, 400, "'maybe'", id="bad-follow"
        ),
    ],
)
def test_invalid_request_rejected(
    client: httpx.Client, params: dict[str, str], status: int, expected: str
) -> None:
    assert deploy(client, "talker", "cat").status_code == 202

    response = client.get("/system/logs", params=params)

    assert response.status_code == status
    assert expected in response.text


def test_post_returns_405(client: httpx.Client) -> None:
    response = client.post("/system/logs", params={"name": "talker"})

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_follow_sends_new_lines(
    provider: RunningProvider, client: httpx.Client
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "stored")

    with Follower(provider.url, name="talker") as follower:
        assert follower.status == 200
        assert follower.content_type == "application/x-ndjson"
        assert texts(follower.wait_for(1)) == ["stored"]
        log_to(client, "talker", "new one")
        log_to(client, "talker", "new two")

        assert texts(follower.wait_for(3)) == ["stored", "new one", "new two"]
        assert not follower.ended.is_set()


def test_follow_since_now_sends_only_new(
    provider: RunningProvider, client: httpx.Client
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "old", "older")

    since = datetime.now(UTC).isoformat()
    with Follower(provider.url, name="talker", since=since) as follower:
        log_to(client, "talker", "fresh")
        assert texts(follower.wait_for(1)) == ["fresh"]


def test_follow_filters_instance(
    provider: RunningProvider, client: httpx.Client
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202

    with Follower(provider.url, name="talker", instance="talker-1") as follower:
        log_to(client, "talker", "not for this follower")
        time.sleep(0.2)
        assert follower.messages == []


def test_follow_ends_when_function_removed(
    provider: RunningProvider, client: httpx.Client
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202

    with Follower(provider.url, name="talker") as follower:
        removed = client.request(
            "DELETE", "/system/functions", json={"functionName": "talker"}
        )
        assert removed.status_code == 202

        assert follower.ended.wait(5), "the followed stream did not end"


def test_follow_ends_on_disconnect(
    provider: RunningProvider, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202

    with caplog.at_level(logging.INFO, logger="provider.api"):
        with Follower(provider.url, name="talker"):
            pass  # leaving the block closes the client's connection
        wait_until(
            lambda: any(r.getMessage() == "function logs sent" for r in caplog.records),
            timeout_s=5,
            what="the provider to notice the disconnect",
        )

    [record] = [r for r in caplog.records if r.getMessage() == "function logs sent"]
    assert log_context(record)["function"] == "talker"
    assert log_context(record)["follow"] is True


def test_follow_ends_when_provider_stops(settings: LocalProviderSettings) -> None:
    running = start_provider(settings)
    with running.client() as client:
        assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202

    with Follower(running.url, name="talker") as follower:
        started = time.monotonic()
        running.stop()

        assert follower.ended.wait(5)
        assert time.monotonic() - started < 2.5


def test_logs_survive_restart(settings: LocalProviderSettings) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
            log_to(client, "talker", "from the first run")
    finally:
        first.stop()

    second = start_provider(settings)
    try:
        with second.client() as client:
            messages = read_logs(client, name="talker")
    finally:
        second.stop()

    assert texts(messages) == ["from the first run"]


def test_log_files_private_after_restart(settings: LocalProviderSettings) -> None:
    folder = settings.state_dir / "logs" / "functions"
    # Files left by a version that created them with the umask's modes.
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    old_log = folder / "old.openfaas-fn.log"
    old_rotated = folder / "old.openfaas-fn.log.1"
    for path in (old_log, old_rotated):
        path.write_text("")
        path.chmod(0o644)

    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
            log_to(client, "talker", *(f"line {index:02d}" for index in range(3)))
    finally:
        running.stop()

    assert folder.stat().st_mode & 0o777 == 0o700
    assert old_log.stat().st_mode & 0o777 == 0o600
    assert old_rotated.stat().st_mode & 0o777 == 0o600
    new_log = folder / "talker.openfaas-fn.log"
    assert new_log.stat().st_mode & 0o777 == 0o600


async def test_rotated_log_stays_private(store: LogStore) -> None:
    ref = FunctionRef("busy", "openfaas-fn")
    log = store.log_of(ref)

    for index in range(100):
        log.append("busy-0", f"line {index:03d}")

    assert log.rotated_path.stat().st_mode & 0o777 == 0o600
    assert log.path.stat().st_mode & 0o777 == 0o600


def test_delete_removes_log_files(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    log_to(client, "talker", "line")
    log_file = settings.state_dir / "logs" / "functions" / "talker.openfaas-fn.log"
    assert log_file.is_file()

    removed = client.request(
        "DELETE", "/system/functions", json={"functionName": "talker"}
    )
    assert removed.status_code == 202
    assert not log_file.exists()

    assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
    assert read_logs(client, name="talker") == []


def test_log_file_size_from_settings(tmp_path: Path) -> None:
    settings = LocalProviderSettings(
        state_dir=tmp_path / "state", log_max_file_bytes=MIN_LOG_MAX_FILE_BYTES
    )
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "talker", ECHO_TO_STDERR).status_code == 202
            log_to(
                client,
                "talker",
                *(f"line {index:02d} " + "x" * 4000 for index in range(40)),
            )
    finally:
        running.stop()

    folder = settings.state_dir / "logs" / "functions"
    assert (folder / "talker.openfaas-fn.log.1").is_file()
    assert (folder / "talker.openfaas-fn.log").stat().st_size <= MIN_LOG_MAX_FILE_BYTES


def test_min_file_size_keeps_longest_line(tmp_path: Path) -> None:
    # The longest stored line: a 63-character name, and a whole piece of
    # MAX_LOG_LINE_BYTES control characters, which JSON escapes as 6 bytes each.
    name = "t" * 63
    settings = LocalProviderSettings(
        state_dir=tmp_path / "state", log_max_file_bytes=MIN_LOG_MAX_FILE_BYTES
    )
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, name, ECHO_TO_STDERR).status_code == 202
            body = b"\x01" * (2 * MAX_LOG_LINE_BYTES + 100)
            response = client.post(f"/function/{name}", content=body)
            assert response.status_code == 200, response.text
            messages = read_logs(client, name=name)
    finally:
        running.stop()

    # The second piece rotated the first into .log.1, and the third fits
    # after the second.
    lengths = [len(message["text"]) for message in messages]
    assert lengths == [MAX_LOG_LINE_BYTES, MAX_LOG_LINE_BYTES, 100]
    folder = settings.state_dir / "logs" / "functions"
    stored = [
        folder / f"{name}.openfaas-fn.log.1",
        folder / f"{name}.openfaas-fn.log",
    ]
    longest = stored[0].read_bytes()
    assert len(longest.splitlines()) == 1
    assert len(longest) > MAX_LOG_LINE_BYTES * 6
    for path in stored:
        assert path.stat().st_size <= MIN_LOG_MAX_FILE_BYTES


def test_file_size_below_minimum_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as raised:
        LocalProviderSettings(state_dir=tmp_path / "state", log_max_file_bytes=2000)

    message = str(raised.value)
    assert "2000 is below the minimum of 131072 bytes" in message


async def test_follow_backlog_from_settings(tmp_path: Path) -> None:
    settings = LocalProviderSettings(
        state_dir=tmp_path / "state", log_follow_backlog_lines=3
    )
    backend = LocalBackend(settings)
    await backend.start()
    try:
        await backend.create_function(
            FunctionDeployment(service="talker", env_process=ECHO_TO_STDERR)
        )
        reader = await backend.read_logs(LogRequest(name="talker", follow=True))
        invocation = Invocation(
            function=FunctionRef("talker", "openfaas-fn"),
            method="POST",
            path="/",
            raw_path="/",
            query="",
            headers=[],
            body=b"".join(f"line {index}\n".encode() for index in range(10)),
        )
        async with backend.invoke(invocation) as response:
            assert response.status == 200

        async def read_until_end() -> list[bytes]:
            return [chunk async for chunk in reader]

        # The stream ends only because the backlog overflowed.
        chunks = await asyncio.wait_for(read_until_end(), timeout=5)
    finally:
        await backend.stop()

    received = b"".join(chunks).decode().splitlines()
    assert len(received) == 3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    log_store = LogStore(tmp_path / "state", max_file_bytes=2000, max_backlog_lines=5)
    log_store.prepare()
    try:
        yield log_store
    finally:
        log_store.close()


async def collect(store: LogStore, ref: FunctionRef, **query: Any) -> list[str]:
    reader = store.open_reader(ref, LogRequest(name=ref.name, **query))
    chunks = [chunk async for chunk in reader]
    lines = b"".join(chunks).decode().splitlines()
    return [json.loads(line)["text"] for line in lines]


async def test_store_rotates_and_stays_bounded(store: LogStore) -> None:
    ref = FunctionRef("busy", "openfaas-fn")
    log = store.log_of(ref)

    for index in range(100):
        log.append("busy-0", f"line {index:03d}")

    assert log.rotated_path.is_file()
    assert log.path.stat().st_size <= 2000
    assert log.rotated_path.stat().st_size <= 2000
    kept = await collect(store, ref)
    assert kept == [f"line {index:03d}" for index in range(100 - len(kept), 100)]
    rotated_lines = len(log.rotated_path.read_bytes().splitlines())
    current_lines = len(log.path.read_bytes().splitlines())
    assert len(kept) == rotated_lines + current_lines
    assert rotated_lines > 0
    assert await collect(store, ref, tail=3) == ["line 097", "line 098", "line 099"]


async def test_store_keeps_non_ascii_text(store: LogStore) -> None:
    ref = FunctionRef("intl", "openfaas-fn")
    store.log_of(ref).append("intl-0", 'Grüße "quoted" \\ tab\t')

    assert await collect(store, ref) == ['Grüße "quoted" \\ tab\t']


async def test_store_skips_broken_line(store: LogStore) -> None:
    ref = FunctionRef("crashy", "openfaas-fn")
    log = store.log_of(ref)
    log.append("crashy-0", "whole")
    log.close()
    with log.path.open("ab") as file:
        file.write(b'{"name": "crashy", "tex')

    kept = await collect(
        store, ref, since=datetime(2000, 1, 1, tzinfo=UTC), instance="crashy-0"
    )

    assert kept == ["whole"]


async def test_slow_follower_stream_ended(
    store: LogStore, caplog: pytest.LogCaptureFixture
) -> None:
    ref = FunctionRef("flood", "openfaas-fn")
    reader = store.open_reader(ref, LogRequest(name="flood", follow=True))

    for index in range(20):
        store.log_of(ref).append("flood-0", f"line {index}")
    with caplog.at_level(logging.WARNING):
        chunks = [chunk async for chunk in reader]

    received = b"".join(chunks).decode().splitlines()
    assert len(received) == 5
    behind = [r for r in caplog.records if "fell behind" in r.getMessage()]
    assert len(behind) == 1
    assert log_context(behind[0])["backlog_lines"] == 5


async def test_reader_closed_before_reading_unsubscribes(store: LogStore) -> None:
    ref = FunctionRef("idle", "openfaas-fn")
    reader = store.open_reader(ref, LogRequest(name="idle", follow=True))

    await reader.aclose()
    store.log_of(ref).append("idle-0", "after close")

    assert await asyncio.wait_for(anext(reader, None), timeout=1) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC), id="zulu"
        ),
        pytest.param(
            "2024-05-01T14:00:00+02:00",
            datetime(2024, 5, 1, 12, tzinfo=UTC),
            id="offset",
        ),
        pytest.param(
            "2024-05-01T12:00:00.123456789Z",
            datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
            id="nanoseconds",
        ),
    ],
)
def test_parse_rfc3339_accepts(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2024-05-01", id="date-only"),
        pytest.param("2024-05-01T12:00:00", id="no-offset"),
        pytest.param("5m", id="duration"),
    ],
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=text):
        parse_rfc3339(text)
