"""HTTP mode: a supervised server process per function, behind a proxy."""

import gzip
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faashub.incomplete_response import UVICORN_INCOMPLETE_RESPONSE
from faashub.settings import LocalProviderSettings
from tests.conftest import free_port
from tests.provider.conftest import (
    RunningProvider,
    deploy,
    log_context,
    process_gone,
    request_raw,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(40)

INTERNAL = "X-OpenFaaS-Internal"
HTTP_MODE = {"mode": "http"}


def deploy_echo(
    client: httpx.Client, command: str, *, name: str = "echo", **env_vars: str
) -> None:
    response = deploy(client, name, command, envVars={**HTTP_MODE, **env_vars})
    assert response.status_code == 202, response.text


def echo(client: httpx.Client, path: str = "", **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"/function/echo{path}", content=b"", **kwargs)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def echo_after_restart(client: httpx.Client) -> dict[str, Any]:
    """Call echo until its restarted process responds, checking each 503 before."""
    responses: list[httpx.Response] = []

    def answered() -> bool:
        responses.append(client.post("/function/echo", content=b""))
        return responses[-1].status_code == 200

    wait_until(answered, what="the restarted process to answer")
    for refused in responses[:-1]:
        assert refused.status_code == 503, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 10
    result: dict[str, Any] = responses[-1].json()
    return result


def test_invoke_forwards_request(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)

    response = client.put(
        "/function/echo/orders/42?a=1&b=two",
        content=b"payload",
        headers={"X-Test": "yes", "X-Call-Id": "call-7"},
    )

    assert response.status_code == 200
    assert response.headers["x-function"] == "echo"
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/orders/42?a=1&b=two"
    assert seen["body"] == "payload"
    assert seen["headers"]["X-Test"] == "yes"
    assert seen["headers"]["X-Call-Id"] == "call-7"
    assert seen["headers"]["X-Forwarded-Host"].startswith("127.0.0.1:")
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"


def test_non_ascii_header_reaches_function_unchanged(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    sent = "grüße ✓".encode()

    seen = echo(client, headers=[(b"X-Greeting", sent)])

    # The echo server decodes header bytes as Latin-1, so encoding them back
    # gives the bytes that reached it.
    assert seen["headers"]["X-Greeting"].encode("latin-1") == sent


def test_invalid_utf8_header_returns_400(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    echo(client)

    response = client.post(
        "/function/echo", content=b"", headers=[(b"X-Greeting", b"gr\xfc\xdfe")]
    )

    assert response.status_code == 400
    assert INTERNAL not in response.headers
    assert "header X-Greeting is not valid UTF-8" in response.text


def test_invoke_forwards_raw_path_and_query(
    provider: RunningProvider, client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    echo(client)
    target = "/a/../b%2Fc%3Fd/./e%7E?x=%26y&z=%3F&w=a+b%20c"

    response = request_raw(provider.url, "GET", "/function/echo" + target)

    assert response.status == 200
    assert json.loads(response.body)["path"] == target


def test_invoke_root_path(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)

    assert echo(client)["path"] == "/"


def test_invoke_passes_function_status(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)

    response = client.get("/function/echo/status/418")

    assert response.status_code == 418
    assert INTERNAL not in response.headers


def test_invoke_passes_encoded_body_unchanged(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)

    with client.stream("GET", "/function/echo/gzip") as response:
        raw = b"".join(response.iter_raw())

    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == b"hello compressed"


def test_status_reports_available_replica(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    echo(client)

    status = client.get("/system/function/echo").json()

    assert status["replicas"] == 1
    assert status["availableReplicas"] == 1
    assert status["invocationCount"] == 1


def test_process_env_has_port_and_vars(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command, GREETING="hello")

    assert echo(client)["greeting"] == "hello"


def test_killed_process_restarts(
    client: httpx.Client, echo_command: str, caplog: pytest.LogCaptureFixture
) -> None:
    deploy_echo(client, echo_command)
    first_pid = echo(client)["pid"]

    with caplog.at_level(logging.WARNING):
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: process_gone(first_pid), what="the killed process to go")
        second_pid = echo_after_restart(client)["pid"]

    assert second_pid != first_pid
    restarts = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert restarts
    assert log_context(restarts[0])["exit_code"] == -signal.SIGKILL


def test_delete_stops_process(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)
    pid = echo(client)["pid"]

    response = client.request(
        "DELETE", "/system/functions", json={"functionName": "echo"}
    )

    assert response.status_code == 202
    wait_until(lambda: process_gone(pid), timeout_s=5, what="the process to stop")
    assert client.post("/function/echo", content=b"").status_code == 404


def test_update_restarts_with_new_definition(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command, GREETING="v1")
    first = echo(client)

    response = deploy(
        client,
        "echo",
        echo_command,
        method="PUT",
        envVars={**HTTP_MODE, "GREETING": "v2"},
    )

    assert response.status_code == 202
    second = echo(client)
    assert second["greeting"] == "v2"
    assert second["pid"] != first["pid"]
    wait_until(lambda: process_gone(first["pid"]), timeout_s=5, what="the old process")


def test_update_to_classic_stops_process(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    pid = echo(client)["pid"]

    assert deploy(client, "echo", "cat", method="PUT").status_code == 202

    wait_until(lambda: process_gone(pid), timeout_s=5, what="the old process")
    assert client.post("/function/echo", content=b"classic").text == "classic"


def test_zero_exec_timeout_disables_timeout(tmp_path: Path, echo_command: str) -> None:
    settings = LocalProviderSettings(
        state_dir=tmp_path / "hasty-state", exec_timeout_s=0.5
    )
    running = start_provider(settings)
    try:
        with running.client() as client:
            deploy_echo(client, echo_command, exec_timeout="0")
            echo(client)
            unlimited = client.get("/function/echo/sleep/1")
            deploy_echo(client, echo_command, name="limited")
            assert client.get("/function/limited").status_code == 200
            limited = client.get("/function/limited/sleep/1")
    finally:
        running.stop()

    assert unlimited.status_code == 200
    assert limited.status_code == 504


def test_exec_timeout_returns_504(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command, exec_timeout="1s")
    echo(client)

    started = time.monotonic()
    response = client.get("/function/echo/sleep/4")

    assert response.status_code == 504
    assert response.headers[INTERNAL] == "proxy"
    assert time.monotonic() - started < 3.5


def test_endpoints_report_exec_timeout(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command, exec_timeout="1.5s")
    deploy_echo(client, echo_command, name="unlimited", exec_timeout="0")
    echo(client)
    assert client.post("/function/unlimited", content=b"").status_code == 200

    limited = client.get("/system/function-endpoints/echo").json()
    unlimited = client.get("/system/function-endpoints/unlimited").json()

    assert limited["exec_timeout_s"] == 1.5
    assert len(limited["urls"]) == 1
    assert unlimited["exec_timeout_s"] is None


def test_exec_timeout_message(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command, exec_timeout="1s")
    echo(client)

    response = client.get("/function/echo/sleep/3")

    assert response.status_code == 504
    assert response.text == (
        "Function echo.openfaas-fn did not respond within its exec timeout of 1 s. "
        "Raise exec_timeout in its envVars if it needs longer, or set it to 0 for "
        "no timeout."
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
def test_crashing_request_reaches_one_replica(
    client: httpx.Client, echo_command: str, tmp_path: Path, method: str
) -> None:
    call_log = tmp_path / "calls.log"
    call_log.touch()
    response = deploy(
        client,
        "echo",
        echo_command,
        envVars={**HTTP_MODE, "CALL_LOG": str(call_log)},
        labels={"com.openfaas.scale.min": "2"},
    )
    assert response.status_code == 202, response.text
    wait_until(
        lambda: (
            client.get("/system/function/echo").json().get("availableReplicas") == 2
        ),
        what="two available replicas",
    )

    crashed = client.request(
        method, "/function/echo/crash", headers={"X-Call-Id": "c1"}
    )

    assert crashed.status_code == 500
    assert crashed.headers[INTERNAL] == "proxy"
    assert "closed the connection" in crashed.text
    assert call_log.read_text() == f"{method} c1\n"


def test_upstream_url_used_as_address(client: httpx.Client, echo_command: str) -> None:
    port = free_port()
    deploy_echo(client, echo_command, upstream_url=f"http://127.0.0.1:{port}")

    seen = echo(client, "/via-upstream")

    assert seen["path"] == "/via-upstream"
    assert seen["headers"]["Host"] == f"127.0.0.1:{port}"


def test_function_output_in_function_log(
    client: httpx.Client, echo_command: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="provider.local.http_mode"):
        deploy_echo(client, echo_command)
        echo(client)

    logs = client.get("/system/logs", params={"name": "echo"})
    lines = [json.loads(line) for line in logs.text.splitlines()]
    starting = [line for line in lines if line["text"] == "echo server starting"]
    assert len(starting) == 1
    assert starting[0]["instance"] == "echo-0"
    assert starting[0]["namespace"] == "openfaas-fn"
    assert not [r for r in caplog.records if "echo server" in r.getMessage()]


@pytest.fixture
def impatient_provider(tmp_path: Path) -> Iterator[RunningProvider]:
    """A provider that gives http-mode functions one second to respond."""
    settings = LocalProviderSettings(
        state_dir=tmp_path / "impatient-state",
        exec_timeout_s=5.0,
        http_start_timeout_s=1.0,
    )
    running = start_provider(settings)
    try:
        yield running
    finally:
        running.stop()


def test_silent_process_returns_503(impatient_provider: RunningProvider) -> None:
    with impatient_provider.client() as client:
        assert deploy(client, "mute", "sleep 30", envVars=HTTP_MODE).status_code == 202

        started = time.monotonic()
        response = client.post("/function/mute", content=b"")
        elapsed_s = time.monotonic() - started
        status = client.get("/system/function/mute").json()

    assert response.status_code == 503
    assert response.headers[INTERNAL] == "proxy"
    assert "not responding" in response.text
    assert 0.9 < elapsed_s < 4
    assert "availableReplicas" not in status


def test_missing_command_returns_503(impatient_provider: RunningProvider) -> None:
    with impatient_provider.client() as client:
        command = "no-such-server-xyz"
        assert deploy(client, "absent", command, envVars=HTTP_MODE).status_code == 202

        response = client.post("/function/absent", content=b"")

    assert response.status_code == 503
    assert "'no-such-server-xyz' was not found" in response.text
    assert os.environ["PATH"] not in response.text
    assert "PATH" not in response.text


def test_missing_command_logs_once(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="provider.local.http_mode"):
        command = "no-such-server-xyz"
        assert deploy(client, "absent", command, envVars=HTTP_MODE).status_code == 202
        # Starts at 0, 0.5, 1.5 and 3.5 s.
        time.sleep(4.5)

    failures = [
        r
        for r in caplog.records
        if r.getMessage().startswith("function process failed")
    ]
    warnings = [r for r in failures if r.levelno == logging.WARNING]
    assert len(failures) >= 4
    assert len(warnings) == 1
    assert all(r.levelno == logging.DEBUG for r in failures[1:])
    assert not [r for r in caplog.records if "restarting" in r.getMessage()]


@pytest.fixture
def slow_starting_provider(tmp_path: Path) -> Iterator[RunningProvider]:
    """A provider that gives http-mode functions 20 s to respond."""
    settings = LocalProviderSettings(
        state_dir=tmp_path / "slow-state", http_start_timeout_s=20.0
    )
    running = start_provider(settings)
    try:
        yield running
    finally:
        running.stop()


def test_crash_loop_returns_503_at_once(
    slow_starting_provider: RunningProvider,
) -> None:
    command = "sh -c 'echo boom >&2; exit 7'"
    with slow_starting_provider.client() as client:
        assert deploy(client, "boom", command, envVars=HTTP_MODE).status_code == 202

        responses = []
        for _ in range(3):
            started = time.monotonic()
            responses.append(
                (client.post("/function/boom"), time.monotonic() - started)
            )

    for response, elapsed_s in responses:
        assert response.status_code == 503
        assert elapsed_s < 3
        assert response.headers[INTERNAL] == "proxy"
        assert 1 <= int(response.headers["retry-after"]) <= 10
        assert "exited with code 7" in response.text
        assert "restarts in" in response.text


def test_starting_process_is_waited_for(
    slow_starting_provider: RunningProvider, echo_script: Path
) -> None:
    # The server sleeps 1.5 s before it listens, and is not a crash.
    command = f"sh -c 'sleep 1.5; exec {sys.executable} {echo_script}'"
    with slow_starting_provider.client() as client:
        assert deploy(client, "sleepy", command, envVars=HTTP_MODE).status_code == 202

        response = client.post("/function/sleepy", content=b"")

    assert response.status_code == 200
    assert "retry-after" not in response.headers


def test_broken_response_closes_connection(
    client: httpx.Client, echo_command: str, caplog: pytest.LogCaptureFixture
) -> None:
    deploy_echo(client, echo_command)
    echo(client)

    # NB: each set_level also sets caplog's handler level, so the ERROR one
    # comes first. The handler then keeps WARNING for the restart line, which
    # the provider's thread may log after the call below returns.
    caplog.set_level(logging.ERROR, logger="uvicorn.error")
    caplog.set_level(logging.WARNING, logger="provider.local.http_mode")
    caplog.set_level(logging.WARNING, logger="provider.api")
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/function/echo/truncate")

    broken = [r for r in caplog.records if "broken off" in r.getMessage()]
    assert len(broken) == 1
    # uvicorn's id-less line for the same response is left out.
    assert not any(
        r.getMessage() == UVICORN_INCOMPLETE_RESPONSE for r in caplog.records
    )
    # NOTE: a request sent before the provider has seen the exit can meet the
    # dying process and get 500 for a reset, so the calls start after that.
    wait_until(
        lambda: any("process stopped" in r.getMessage() for r in caplog.records),
        what="the provider to see the process exit",
    )
    assert echo_after_restart(client)["path"] == "/"


def test_delete_fails_waiting_request_fast(client: httpx.Client) -> None:
    assert deploy(client, "mute", "sleep 30", envVars=HTTP_MODE).status_code == 202
    responses: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: responses.append(client.post("/function/mute", content=b""))
    )

    started = time.monotonic()
    caller.start()
    time.sleep(0.3)
    deleted = client.request(
        "DELETE", "/system/functions", json={"functionName": "mute"}
    )
    caller.join(timeout=10)

    assert deleted.status_code == 202
    assert len(responses) == 1
    assert responses[0].status_code == 503
    assert "deleted" in responses[0].text
    assert time.monotonic() - started < 5
