"""Classic mode: one process per request, with the watchdog's CGI environment."""

import concurrent.futures
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider.local.definition import parse_duration_s
from tests.provider.conftest import (
    RunningProvider,
    deploy,
    log_context,
    process_gone,
    request_raw,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

INTERNAL = "X-OpenFaaS-Internal"


def env_lines(response: httpx.Response) -> dict[str, str]:
    """Parse the output of `env` into a dict."""
    pairs = (line.split("=", 1) for line in response.text.splitlines() if "=" in line)
    return {name: value for name, value in pairs}


def test_wc_counts_body_bytes(client: httpx.Client) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202

    response = client.post("/function/wc", content=b"hello")

    assert response.status_code == 200
    assert response.text.strip() == "5"


def test_request_headers_visible_as_http_vars(client: httpx.Client) -> None:
    assert deploy(client, "env", "env").status_code == 202

    response = client.post(
        "/function/env",
        content=b"",
        headers={
            "X-Call-Id": "call-1",
            "X-Custom-Thing": "value",
            "Content-Type": "a/b",
        },
    )

    assert response.status_code == 200
    env = env_lines(response)
    assert env["Http_X_Call_Id"] == "call-1"
    assert env["Http_X_Custom_Thing"] == "value"
    assert env["Http_Content_Type"] == "a/b"


def test_non_ascii_header_reaches_function_unchanged(client: httpx.Client) -> None:
    command = """sh -c 'printf "%s" "$Http_X_Greeting"'"""
    assert deploy(client, "greeting", command).status_code == 202
    sent = "grüße ✓".encode()

    response = client.post(
        "/function/greeting", content=b"", headers=[(b"X-Greeting", sent)]
    )

    assert response.status_code == 200
    assert response.content == sent


def test_method_path_and_query_visible(client: httpx.Client) -> None:
    assert deploy(client, "env", "env").status_code == 202

    response = client.put("/function/env/orders/42?x=1&y=two", content=b"")

    env = env_lines(response)
    assert env["Http_Method"] == "PUT"
    assert env["Http_Path"] == "/orders/42"
    assert env["Http_Query"] == "x=1&y=two"


def test_http_path_keeps_percent_escapes(
    provider: RunningProvider, client: httpx.Client
) -> None:
    command = (
        """sh -c 'printf "%s|%s|%s" "$Http_Raw_Path" "$Http_Path" "$Http_Query"'"""
    )
    assert deploy(client, "paths", command).status_code == 202

    response = request_raw(
        provider.url, "GET", "/function/paths/a%2Fb/c%20d/./e?q=%26x"
    )

    assert response.status == 200
    raw, decoded, query = response.body.decode().split("|")
    assert raw == "/a%2Fb/c%20d/./e"
    assert decoded == "/a/b/c d/./e"
    assert query == "q=%26x"


def test_root_path_is_slash(client: httpx.Client) -> None:
    assert deploy(client, "env", "env").status_code == 202

    env = env_lines(client.get("/function/env"))

    assert env["Http_Method"] == "GET"
    assert env["Http_Path"] == "/"
    assert env["Http_Raw_Path"] == "/"
    assert env["Http_Query"] == ""


def test_env_has_function_vars_not_provider_secrets(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAASHUB_TEST_CREDENTIAL", "must-not-leak")
    assert deploy(client, "env", "env", envVars={"greeting": "hi"}).status_code == 202

    env = env_lines(client.post("/function/env", content=b""))

    assert env["greeting"] == "hi"
    assert env["fprocess"] == "env"
    assert "PATH" in env
    assert "FAASHUB_TEST_CREDENTIAL" not in env
    assert "must-not-leak" not in "".join(env.values())


def test_shell_command_runs_without_provider_shell(client: httpx.Client) -> None:
    command = """sh -c 'printf "%s|%s" "$Http_Method" "$(cat)"'"""
    assert deploy(client, "shell", command).status_code == 202

    response = client.post("/function/shell", content=b"payload")

    assert response.text == "POST|payload"


@pytest.mark.parametrize(
    ("env_vars", "request_headers", "expected"),
    [
        pytest.param({}, {}, "text/plain; charset=utf-8", id="default"),
        pytest.param(
            {}, {"Content-Type": "application/json"}, "application/json", id="request"
        ),
        pytest.param(
            {"content_type": "text/csv"},
            {"Content-Type": "application/json"},
            "text/csv",
            id="function-env",
        ),
    ],
)
def test_response_content_type(
    client: httpx.Client,
    env_vars: dict[str, str],
    request_headers: dict[str, str],
    expected: str,
) -> None:
    assert deploy(client, "typed", "cat", envVars=env_vars).status_code == 202

    response = client.post("/function/typed", content=b"{}", headers=request_headers)

    assert response.headers["content-type"] == expected


def test_nonzero_exit_returns_unmarked_500(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    command = "sh -c 'echo partial; echo went wrong >&2; exit 3'"
    assert deploy(client, "failing", command).status_code == 202

    with caplog.at_level(logging.INFO):
        response = client.post(
            "/function/failing", content=b"", headers={"X-Call-Id": "call-fail"}
        )

    assert response.status_code == 500
    # The function failed, not the provider, as with the classic watchdog.
    assert INTERNAL not in response.headers
    assert "code 3" in response.text
    assert "partial" not in response.text
    failures = [
        r
        for r in caplog.records
        if r.getMessage().startswith("function process failed")
    ]
    assert len(failures) == 1
    assert "went wrong" in failures[0].getMessage()
    assert log_context(failures[0])["call_id"] == "call-fail"
    assert log_context(failures[0])["exit_code"] == 3


def test_silent_failure_says_stderr_empty(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert deploy(client, "silent", "sh -c 'exit 4'").status_code == 202

    with caplog.at_level(logging.INFO):
        response = client.post("/function/silent", content=b"")

    assert response.status_code == 500
    [failure] = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("function process failed")
    ]
    assert failure == "function process failed: it wrote nothing to stderr"


def test_stderr_in_function_log_not_response(client: httpx.Client) -> None:
    command = "sh -c 'echo to-stderr >&2; echo $$ >&2; echo out'"
    assert deploy(client, "noisy", command).status_code == 202

    response = client.post("/function/noisy", content=b"")
    logs = client.get("/system/logs", params={"name": "noisy"})

    assert response.text == "out\n"
    lines = [json.loads(line) for line in logs.text.splitlines()]
    assert [line["text"] for line in lines[:1]] == ["to-stderr"]
    pid = lines[1]["text"]
    assert {line["instance"] for line in lines} == {f"noisy-{pid}"}
    assert "out" not in [line["text"] for line in lines]


def test_command_not_found_returns_500(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert deploy(client, "typo", "no-such-command-xyz --flag").status_code == 202

    with caplog.at_level(logging.WARNING, logger="provider.local.classic"):
        response = client.post("/function/typo", content=b"")

    assert response.status_code == 500
    assert response.headers[INTERNAL] == "proxy"
    assert "'no-such-command-xyz' not found" in response.text
    assert os.environ["PATH"] not in response.text
    assert "PATH" not in response.text
    [warning] = [
        r for r in caplog.records if r.getMessage() == "function command not found"
    ]
    assert log_context(warning)["path"] == os.environ["PATH"]
    assert log_context(warning)["command"] == "no-such-command-xyz"


def test_timeout_returns_504_and_kills_group(
    client: httpx.Client, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    # The function leaves a child behind; the whole group must go.
    command = f"sh -c 'sleep 30 & echo $! > {pid_file}; wait'"
    assert (
        deploy(client, "sleepy", command, envVars={"exec_timeout": "1"}).status_code
        == 202
    )

    started = time.monotonic()
    response = client.post("/function/sleepy", content=b"")
    elapsed_s = time.monotonic() - started

    assert response.status_code == 504
    assert INTERNAL not in response.headers
    assert "1 s" in response.text
    assert elapsed_s < 5
    child_pid = int(pid_file.read_text())
    wait_until(lambda: process_gone(child_pid), timeout_s=5, what="the child to die")


def test_timeout_names_child_holding_stdout(
    client: httpx.Client, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell exits at once, but its background sleep keeps stdout open.
    command = f"sh -c 'sleep 30 & echo $! > {pid_file}; echo parent-done'"
    response = deploy(client, "leaver", command, envVars={"exec_timeout": "1"})
    assert response.status_code == 202

    response = client.post("/function/leaver", content=b"")

    assert response.status_code == 504
    assert INTERNAL not in response.headers
    assert "exited, but a child process that it started kept its stdout open" in (
        response.text
    )
    assert "within the exec timeout of 1 s" in response.text
    assert "'sleep 30 > /dev/null &'" in response.text
    child_pid = int(pid_file.read_text())
    wait_until(lambda: process_gone(child_pid), timeout_s=5, what="the child to die")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(
            "sh -c 'kill -9 $$'", "was killed by signal 9 (SIGKILL)", id="sigkill"
        ),
        pytest.param(
            "sh -c 'kill -TERM $$'", "was killed by signal 15 (SIGTERM)", id="sigterm"
        ),
        pytest.param("sh -c 'exit 7'", "exited with code 7", id="exit-code"),
    ],
)
def test_exit_500_names_signal_or_code(
    client: httpx.Client, command: str, expected: str
) -> None:
    assert deploy(client, "ending", command).status_code == 202

    response = client.post("/function/ending", content=b"")

    assert response.status_code == 500
    assert f"Function ending.openfaas-fn {expected} after " in response.text
    assert "code -" not in response.text


def test_remove_ends_running_call(
    client: httpx.Client, provider: RunningProvider, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    command = f"sh -c 'sleep 30 & echo $! > {pid_file}; wait'"
    assert deploy(client, "hang", command).status_code == 202

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with provider.client() as calling:
            pending = pool.submit(calling.post, "/function/hang", content=b"")
            wait_until(pid_file.exists, timeout_s=10, what="the call to start")
            started = time.monotonic()
            removed = client.request(
                "DELETE", "/system/functions", json={"functionName": "hang"}
            )
            assert removed.status_code == 202, removed.text
            response = pending.result(timeout=10)
        elapsed_s = time.monotonic() - started

    assert response.status_code == 500
    assert response.headers[INTERNAL] == "proxy"
    assert "was removed while this call ran" in response.text
    assert elapsed_s < 5
    child_pid = int(pid_file.read_text())
    wait_until(lambda: process_gone(child_pid), timeout_s=5, what="the child to die")


def test_timeout_accepts_go_duration(client: httpx.Client) -> None:
    assert (
        deploy(
            client, "brief", "sleep 5", envVars={"exec_timeout": "500ms"}
        ).status_code
        == 202
    )

    started = time.monotonic()
    response = client.post("/function/brief", content=b"")

    assert response.status_code == 504
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("banana", id="word"),
        pytest.param("-5", id="negative"),
        pytest.param("-5s", id="negative-duration"),
        pytest.param("1.5", id="fraction-without-unit"),
        pytest.param("10x", id="unknown-unit"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_exec_timeout_returns_400(client: httpx.Client, value: str) -> None:
    created = deploy(client, "strict", "cat", envVars={"exec_timeout": value})

    assert created.status_code == 400
    assert f"exec_timeout={value!r}" in created.text
    assert "1m30s" in created.text
    assert "0 for no timeout" in created.text
    assert client.get("/system/function/strict").status_code == 404


def test_invalid_exec_timeout_update_returns_400(client: httpx.Client) -> None:
    assert deploy(client, "strict", "cat").status_code == 202

    updated = deploy(
        client, "strict", "cat", method="PUT", envVars={"exec_timeout": "banana"}
    )

    assert updated.status_code == 400
    assert "'banana'" in updated.text
    assert "envVars" not in client.get("/system/function/strict").json()


@pytest.fixture
def hasty_provider(tmp_path: Path) -> Iterator[RunningProvider]:
    """A provider whose default exec timeout is half a second."""
    running = start_provider(
        LocalProviderSettings(state_dir=tmp_path / "hasty-state", exec_timeout_s=0.5)
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    "value", [pytest.param("0", id="zero"), pytest.param("0s", id="zero-duration")]
)
def test_zero_exec_timeout_disables_timeout(
    hasty_provider: RunningProvider, value: str
) -> None:
    command = "sh -c 'sleep 1; echo finished'"
    with hasty_provider.client() as client:
        env_vars = {"exec_timeout": value}
        assert deploy(client, "patient", command, envVars=env_vars).status_code == 202
        assert deploy(client, "default", command).status_code == 202

        unlimited = client.post("/function/patient", content=b"")
        limited = client.post("/function/default", content=b"")

    assert unlimited.status_code == 200
    assert unlimited.text == "finished\n"
    assert limited.status_code == 504
    assert "0.5 s" in limited.text


def test_invocation_count_increments(client: httpx.Client) -> None:
    assert deploy(client, "counted", "cat").status_code == 202

    for _ in range(3):
        client.post("/function/counted", content=b"x")

    assert client.get("/system/function/counted").json()["invocationCount"] == 3


def test_invocation_logged_once(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert deploy(client, "logged", "cat").status_code == 202

    def invoked_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "function invoked"]

    with caplog.at_level(logging.INFO, logger="provider.api"):
        client.post("/function/logged", content=b"x", headers={"X-Call-Id": "c-42"})
        # The provider logs the line after it sent the response, in its own
        # thread, so the client can get here first.
        deadline = time.monotonic() + 5
        while not invoked_lines() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)

    lines = invoked_lines()
    assert len(lines) == 1
    context = log_context(lines[0])
    assert context["function"] == "logged.openfaas-fn"
    assert context["call_id"] == "c-42"
    assert context["status"] == 200


def test_large_body_round_trips(client: httpx.Client) -> None:
    assert deploy(client, "big", "cat").status_code == 202
    body = bytes(range(256)) * 4096  # 1 MiB, more than a pipe buffer

    response = client.post("/function/big", content=body)

    assert response.status_code == 200
    assert response.content == body


def test_function_ignoring_stdin_responds(client: httpx.Client) -> None:
    assert deploy(client, "deaf", "echo done").status_code == 202

    response = client.post("/function/deaf", content=b"x" * 300_000)

    assert response.status_code == 200
    assert response.text == "done\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30", 30.0, id="integer"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("1m30s", 90.0, id="minutes-seconds"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("1.5h", 5400.0, id="fractional-hours"),
        pytest.param(" 2s ", 2.0, id="padded"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("0s", 0.0, id="zero-duration"),
    ],
)
def test_parse_duration_accepts(value: str, seconds: float) -> None:
    assert parse_duration_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("soon", id="word"),
        pytest.param("-1s", id="negative"),
        pytest.param("-5", id="negative-seconds"),
        pytest.param("10x", id="unknown-unit"),
        pytest.param("1m 30s", id="inner-space"),
        pytest.param("1.5", id="fractional-without-unit"),
        pytest.param("\u0663", id="arabic-digit"),
        pytest.param("\u0663s", id="arabic-digit-with-unit"),
    ],
)
def test_parse_duration_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="neither"):
        parse_duration_s(value)
