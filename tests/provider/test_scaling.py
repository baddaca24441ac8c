"""Scaling: replicas of http-mode functions, scale from zero, and the scale API."""

import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from tests.conftest import free_port
from tests.provider.conftest import (
    RunningProvider,
    deploy,
    process_gone,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(40)

HTTP_MODE = {"mode": "http"}
SCALE_MIN = "com.openfaas.scale.min"


def scale(
    client: httpx.Client, name: str, replicas: Any, **params: str
) -> httpx.Response:
    return client.post(
        f"/system/scale-function/{name}",
        params=params,
        json={"serviceName": name, "replicas": replicas},
    )


def status(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"/system/function/{name}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_for_available(client: httpx.Client, name: str, count: int) -> None:
    wait_until(
        lambda: status(client, name).get("availableReplicas", 0) == count,
        what=f"{count} available replicas of {name}",
    )


def echo_pid(client: httpx.Client, path: str = "") -> int:
    response = client.post(f"/function/echo{path}", content=b"")
    assert response.status_code == 200, response.text
    pid: int = response.json()["pid"]
    return pid


def deploy_echo(client: httpx.Client, command: str, **fields: Any) -> None:
    response = deploy(client, "echo", command, envVars=HTTP_MODE, **fields)
    assert response.status_code == 202, response.text


def test_scale_up_spreads_calls(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)
    wait_for_available(client, "echo", 1)

    response = scale(client, "echo", 3)

    assert response.status_code == 202
    assert status(client, "echo")["replicas"] == 3
    wait_for_available(client, "echo", 3)
    pids = {echo_pid(client) for _ in range(9)}
    assert len(pids) == 3


def test_busy_replica_gets_no_new_calls(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 2).status_code == 202
    wait_for_available(client, "echo", 2)
    slow: list[int] = []
    caller = threading.Thread(target=lambda: slow.append(echo_pid(client, "/sleep/2")))

    caller.start()
    time.sleep(0.3)
    quick = {echo_pid(client) for _ in range(4)}
    caller.join(timeout=10)

    assert len(quick) == 1
    assert slow
    assert slow[0] not in quick


def test_scale_down_stops_extra_processes(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 3).status_code == 202
    wait_for_available(client, "echo", 3)
    pids = {echo_pid(client) for _ in range(9)}

    assert scale(client, "echo", 1).status_code == 202

    remaining = {echo_pid(client) for _ in range(3)}
    assert len(remaining) == 1
    for pid in pids - remaining:
        wait_until(lambda pid=pid: process_gone(pid), timeout_s=5, what="a replica")
    assert status(client, "echo")["replicas"] == 1
    assert status(client, "echo")["availableReplicas"] == 1


def test_scale_to_zero_then_call_starts_one(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 2).status_code == 202
    wait_for_available(client, "echo", 2)
    pids = {echo_pid(client) for _ in range(4)}

    assert scale(client, "echo", 0).status_code == 202

    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), timeout_s=5, what="a replica")
    scaled_down = status(client, "echo")
    assert "replicas" not in scaled_down
    assert "availableReplicas" not in scaled_down

    revived = echo_pid(client)

    assert revived not in pids
    assert status(client, "echo")["replicas"] == 1
    assert status(client, "echo")["availableReplicas"] == 1


def test_classic_reports_replicas_and_scales_from_zero(
    client: httpx.Client,
) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202
    assert status(client, "wc")["replicas"] == 1

    assert scale(client, "wc", 4).status_code == 202
    assert status(client, "wc")["replicas"] == 4
    assert status(client, "wc")["availableReplicas"] == 4

    assert scale(client, "wc", 0).status_code == 202
    assert "replicas" not in status(client, "wc")
    response = client.post("/function/wc", content=b"hello")

    assert response.status_code == 200
    assert response.text.strip() == "5"
    assert status(client, "wc")["replicas"] == 1


def test_replicas_survive_restart(
    settings: LocalProviderSettings, echo_command: str
) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            deploy_echo(client, echo_command)
            assert scale(client, "echo", 2).status_code == 202
    finally:
        first.stop()

    second = start_provider(settings)
    try:
        with second.client() as client:
            wait_for_available(client, "echo", 2)
            pids = {echo_pid(client) for _ in range(4)}
    finally:
        second.stop()

    assert len(pids) == 2
    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), timeout_s=5, what="a replica")


def test_scaled_to_zero_survives_restart(settings: LocalProviderSettings) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            assert deploy(client, "wc", "wc -c").status_code == 202
            assert scale(client, "wc", 0).status_code == 202
    finally:
        first.stop()

    second = start_provider(settings)
    try:
        with second.client() as client:
            before = status(client, "wc")
            called = client.post("/function/wc", content=b"abc")
            after = status(client, "wc")
    finally:
        second.stop()

    assert "replicas" not in before
    assert called.text.strip() == "3"
    assert after["replicas"] == 1


def test_label_sets_initial_replicas(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command, labels={SCALE_MIN: "2"})

    assert status(client, "echo")["replicas"] == 2
    wait_for_available(client, "echo", 2)


def test_label_zero_starts_on_first_call(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command, labels={SCALE_MIN: "0"})

    assert "replicas" not in status(client, "echo")
    echo_pid(client)
    assert status(client, "echo")["replicas"] == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("two", id="word"),
        pytest.param("-1", id="negative"),
        pytest.param("1.5", id="fraction"),
        pytest.param("21", id="above-max"),
        pytest.param("\u00b2", id="superscript-digit"),
    ],
)
def test_invalid_label_returns_400(client: httpx.Client, value: str) -> None:
    response = deploy(client, "labelled", "cat", labels={SCALE_MIN: value})

    assert response.status_code == 400
    assert repr(value) in response.text
    assert SCALE_MIN in response.text


def test_update_keeps_replicas_unless_label(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 2).status_code == 202

    deploy_echo(client, echo_command, method="PUT")
    assert status(client, "echo")["replicas"] == 2
    wait_for_available(client, "echo", 2)

    deploy_echo(client, echo_command, method="PUT", labels={SCALE_MIN: "1"})
    assert status(client, "echo")["replicas"] == 1


def test_delete_stops_every_replica(client: httpx.Client, echo_command: str) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 3).status_code == 202
    wait_for_available(client, "echo", 3)
    pids = {echo_pid(client) for _ in range(9)}

    removed = client.request(
        "DELETE", "/system/functions", json={"functionName": "echo"}
    )

    assert removed.status_code == 202
    assert len(pids) == 3
    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), timeout_s=5, what="a replica")


def test_stop_terminates_every_replica(
    settings: LocalProviderSettings, echo_command: str
) -> None:
    running: RunningProvider = start_provider(settings)
    try:
        with running.client() as client:
            deploy_echo(client, echo_command)
            assert scale(client, "echo", 2).status_code == 202
            wait_for_available(client, "echo", 2)
            pids = {echo_pid(client) for _ in range(4)}
    finally:
        running.stop()

    assert len(pids) == 2
    assert all(process_gone(pid) for pid in pids)


def test_replica_instances_named_in_logs(
    client: httpx.Client, echo_command: str
) -> None:
    deploy_echo(client, echo_command)
    assert scale(client, "echo", 2).status_code == 202
    wait_for_available(client, "echo", 2)

    second = client.get(
        "/system/logs", params={"name": "echo", "instance": "echo-1"}
    ).text

    assert '"text": "echo server starting"' in second
    assert '"instance": "echo-0"' not in second


def test_unknown_function_returns_404(client: httpx.Client) -> None:
    response = scale(client, "ghost", 1)

    assert response.status_code == 404
    assert "'ghost'" in response.text


def test_other_namespace_returns_404(client: httpx.Client) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202

    response = scale(client, "wc", 2, namespace="team-a")

    assert response.status_code == 404
    assert "Namespace 'team-a' not found" in response.text


def test_name_from_path_not_body(client: httpx.Client) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202

    response = client.post(
        "/system/scale-function/wc", json={"serviceName": "other", "replicas": 3}
    )

    assert response.status_code == 202
    assert status(client, "wc")["replicas"] == 3


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"{oops", "ScaleServiceRequest", id="malformed"),
        pytest.param(b'{"serviceName": "wc"}', "replicas", id="no-replicas"),
        pytest.param(b'{"replicas": "many"}', "replicas", id="not-a-number"),
        pytest.param(b'{"replicas": "2"}', "replicas", id="string"),
        pytest.param(b'{"replicas": true}', "replicas", id="boolean"),
        pytest.param(b'{"replicas": 2.5}', "replicas", id="fraction"),
        pytest.param(b'{"replicas": -1}', "-1", id="negative"),
        pytest.param(b'{"replicas": 21}', "20", id="above-max"),
    ],
)
def test_invalid_body_returns_400(
    client: httpx.Client, body: bytes, expected: str
) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202

    response = client.post("/system/scale-function/wc", content=body)

    assert response.status_code == 400
    assert expected in response.text
    assert status(client, "wc")["replicas"] == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"notjson", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"serviceName": "wc"}', id="no-replicas"),
    ],
)
def test_invalid_body_error_shows_expected_body(
    client: httpx.Client, body: bytes
) -> None:
    assert deploy(client, "wc", "wc -c").status_code == 202

    response = client.post("/system/scale-function/wc", content=body)

    assert response.status_code == 400
    assert '{"serviceName": "NAME", "replicas": 2}' in response.text


def test_max_replicas_from_settings(tmp_path: Path) -> None:
    settings = LocalProviderSettings(state_dir=tmp_path / "state", max_replicas=2)
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "wc", "wc -c").status_code == 202
            allowed = scale(client, "wc", 2)
            too_many = scale(client, "wc", 3)
            labelled = deploy(client, "other", "cat", labels={SCALE_MIN: "3"})
            replicas = status(client, "wc")["replicas"]
    finally:
        running.stop()

    assert allowed.status_code == 202
    assert too_many.status_code == 400
    assert "from 0 to 2 replicas" in too_many.text
    assert labelled.status_code == 400
    assert "from 0 to 2" in labelled.text
    assert replicas == 2


# A server that ignores SIGTERM, so only the SIGKILL after the grace ends it.
STUBBORN_SERVER = """
import os, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_stop_grace_from_settings(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SERVER)
    settings = LocalProviderSettings(state_dir=tmp_path / "state", stop_grace_s=0.2)
    running = start_provider(settings)
    try:
        with running.client() as client:
            command = f"{sys.executable} {script}"
            assert (
                deploy(client, "stubborn", command, envVars=HTTP_MODE).status_code
                == 202
            )
            pid = int(client.get("/function/stubborn").text)

            started = time.monotonic()
            removed = client.request(
                "DELETE", "/system/functions", json={"functionName": "stubborn"}
            )
            elapsed_s = time.monotonic() - started
    finally:
        running.stop()

    assert removed.status_code == 202
    assert elapsed_s < 1.5
    assert process_gone(pid)


def test_upstream_url_allows_one_replica(
    client: httpx.Client, echo_command: str
) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"
    env = {**HTTP_MODE, "upstream_url": upstream}
    assert deploy(client, "fixed", echo_command, envVars=env).status_code == 202

    response = scale(client, "fixed", 2)
    labelled = deploy(
        client,
        "fixed",
        echo_command,
        method="PUT",
        envVars=env,
        labels={SCALE_MIN: "2"},
    )

    assert response.status_code == 400
    assert "upstream_url" in response.text
    assert labelled.status_code == 400
    assert status(client, "fixed")["replicas"] == 1
