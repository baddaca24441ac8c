"""Secrets, logs, scaling and namespaces of the local provider, through `faashub up`.

Each test starts the whole hub as a user would, drives it with the `faashub`
commands, and checks what a function reads and what the gateway returns.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.hub_support import (
    RunningHub,
    descendants,
    faashub,
    is_alive,
    running_hub,
    write_http_function,
)

pytestmark = pytest.mark.timeout(120)

READ_SECRET = "sh -c 'cat \"$OPENFAAS_SECRETS_DIR/api-key\"'"
# A classic function that writes each line of its request body to stderr.
ECHO_TO_STDERR = "sh -c 'cat >&2; echo done'"


def run_ok(hub: RunningHub, *arguments: str, stdin: bytes = b"") -> str:
    result = faashub(*arguments, gateway=hub.url, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def wait_until_true(
    condition: Callable[[], bool], *, timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def function_status(hub: RunningHub, name: str) -> dict[str, object]:
    response = httpx.get(f"{hub.url}/system/function/{name}", auth=hub.auth)
    assert response.status_code == 200, response.text
    status: dict[str, object] = response.json()
    return status


def test_secret_read_by_function(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub:
        created = run_ok(
            hub, "secret", "create", "api-key", "--from-literal", "hunter2"
        )
        assert "Created secret api-key" in created
        run_ok(
            hub,
            "deploy",
            "--name",
            "reader",
            "--fprocess",
            READ_SECRET,
            "--secret",
            "api-key",
        )

        assert run_ok(hub, "invoke", "reader") == "hunter2"

        run_ok(hub, "secret", "update", "api-key", stdin=b"rotated\n")
        assert run_ok(hub, "invoke", "reader") == "rotated"

        listed = run_ok(hub, "secret", "list")
        assert "api-key" in listed.splitlines()
        assert "rotated" not in listed
        response = httpx.get(f"{hub.url}/system/secrets", auth=hub.auth)
        assert response.json() == [{"name": "api-key", "namespace": "openfaas-fn"}]

        in_use = faashub("secret", "remove", "api-key", gateway=hub.url)
        assert in_use.returncode == 2
        assert b"HTTP 409" in in_use.stderr
        assert b"'reader'" in in_use.stderr

        missing = faashub(
            "deploy",
            "--name",
            "other",
            "--fprocess",
            "cat",
            "--secret",
            "absent",
            gateway=hub.url,
        )
        # The CLI reads the gateway's secrets before it deploys.
        assert missing.returncode == 2
        assert b"Secret 'absent' does not exist" in missing.stderr
        assert b"Deployed nothing" in missing.stderr

        run_ok(hub, "remove", "reader")
        assert "Removed secret api-key" in run_ok(hub, "secret", "remove", "api-key")
        assert run_ok(hub, "secret", "list").splitlines() == ["Secret"]


def test_function_log_read_with_tail_and_follow(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub:
        run_ok(hub, "deploy", "--name", "talker", "--fprocess", ECHO_TO_STDERR)
        assert run_ok(hub, "invoke", "talker", stdin=b"first\nsecond\n") == "done\n"

        tailed = run_ok(hub, "logs", "talker", "--tail", "1").splitlines()
        assert len(tailed) == 1
        assert tailed[0].endswith(" second")
        assert " talker (talker-" in tailed[0]

        every = run_ok(hub, "logs", "talker", "--json").splitlines()
        assert [json.loads(line)["text"] for line in every] == ["first", "second"]

        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faashub",
                "logs",
                "talker",
                "--follow",
                "--since",
                "1h",
                "--gateway",
                hub.url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # The CLI finds the hub's credentials in its state folder.
            env={**os.environ, "FAASHUB_STATE_DIR": str(hub.state_dir)},
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline().endswith(" first\n")
            assert follower.stdout.readline().endswith(" second\n")
            run_ok(hub, "invoke", "talker", stdin=b"while following\n")
            assert follower.stdout.readline().endswith(" while following\n")
            assert follower.poll() is None
        finally:
            follower.send_signal(signal.SIGINT)
            follower.communicate(timeout=10)
        assert follower.returncode == 130

        # The gateway streams a followed log and ends it when the function goes.
        with httpx.Client(base_url=hub.url, auth=hub.auth, timeout=30) as client:
            with client.stream(
                "GET", "/system/logs", params={"name": "talker", "follow": "true"}
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/x-ndjson"
                lines = response.iter_lines()
                assert json.loads(next(lines))["text"] == "first"
                assert json.loads(next(lines))["text"] == "second"
                assert json.loads(next(lines))["text"] == "while following"
                run_ok(hub, "remove", "talker")
                assert list(lines) == []


def test_scale_to_two_then_zero_then_call(tmp_path: Path) -> None:
    script = write_http_function(tmp_path)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    with running_hub(tmp_path / "state") as hub:
        run_ok(
            hub, "deploy", "--name", "echo", "--fprocess", command, "--env", "mode=http"
        )
        assert "Scaled echo to 2 replicas" in run_ok(
            hub, "scale", "echo", "--replicas", "2"
        )
        wait_until_true(
            lambda: function_status(hub, "echo").get("availableReplicas") == 2,
            timeout_s=20,
            what="two available replicas",
        )
        described = run_ok(hub, "describe", "echo").splitlines()
        assert "Replicas:           2" in described
        assert "Available Replicas: 2" in described
        pids = {
            httpx.post(f"{hub.url}/function/echo", content=b"").json()["pid"]
            for _ in range(6)
        }
        assert len(pids) == 2

        run_ok(hub, "scale", "echo", "--replicas", "0")
        wait_until_true(
            lambda: not any(is_alive(pid) for pid in pids),
            timeout_s=10,
            what="the replicas to stop",
        )
        assert function_status(hub, "echo").get("replicas") is None
        assert not pids & descendants(hub.process.pid)

        response = httpx.post(f"{hub.url}/function/echo", content=b"back")
        assert response.status_code == 201
        assert response.json()["body"] == "back"
        assert response.json()["pid"] not in pids
        assert function_status(hub, "echo")["replicas"] == 1

        negative = faashub("scale", "echo", "--replicas", "-1", gateway=hub.url)
        assert negative.returncode == 2
        unknown = faashub("scale", "ghost", "--replicas", "1", gateway=hub.url)
        assert unknown.returncode == 2
        assert b"HTTP 404" in unknown.stderr


def test_one_namespace_addressed_by_name(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub:
        run_ok(hub, "deploy", "--name", "wc", "--fprocess", "wc -c")

        namespaces = httpx.get(f"{hub.url}/system/namespaces", auth=hub.auth)
        qualified = httpx.post(f"{hub.url}/function/wc.openfaas-fn", content=b"abc")
        other = httpx.post(f"{hub.url}/function/wc.team-a", content=b"abc")
        listed = httpx.get(
            f"{hub.url}/system/functions", params={"namespace": "x"}, auth=hub.auth
        )
        invoked = faashub(
            "invoke", "wc", "--namespace", "openfaas-fn", gateway=hub.url, stdin=b"ab"
        )

        assert namespaces.json() == ["openfaas-fn"]
        assert qualified.status_code == 200
        assert qualified.text.strip() == "3"
        assert other.status_code == 404
        assert "team-a" in other.text
        assert listed.status_code == 404
        assert "'x'" in listed.text
        assert invoked.returncode == 0, invoked.stderr.decode()
        assert invoked.stdout.strip() == b"2"


def test_first_run_problems_answered_quickly(tmp_path: Path) -> None:
    """What a new user meets: a crash loop, a stack-file command, bad settings."""
    stack_file = tmp_path / "stack.yml"
    stack_file.write_text(
        "functions:\n"
        "  counter:\n"
        "    image: example/counter:1\n"
        "    environment:\n"
        "      fprocess: wc -c\n"
    )
    with running_hub(tmp_path / "state") as hub:
        run_ok(
            hub,
            "deploy",
            "--name",
            "boom",
            "--env",
            "mode=http",
            "--fprocess",
            "sh -c 'echo boom >&2; exit 7'",
        )
        started = time.monotonic()
        crashed = httpx.post(f"{hub.url}/function/boom", content=b"", timeout=30)
        crashed_after_s = time.monotonic() - started

        run_ok(hub, "deploy", "--yaml", str(stack_file))
        counted = run_ok(hub, "invoke", "counter", stdin=b"abcd")

        invalid = faashub(
            "deploy",
            "--name",
            "slow",
            "--fprocess",
            "cat",
            "--env",
            "exec_timeout=banana",
            gateway=hub.url,
        )
        not_allowed = httpx.patch(f"{hub.url}/system/functions", auth=hub.auth)

    assert crashed.status_code == 503
    assert crashed_after_s < 5
    assert "exited with code 7" in crashed.text
    assert 1 <= int(crashed.headers["retry-after"]) <= 10
    assert counted.strip() == "4"
    # The CLI checks exec_timeout itself before it sends anything.
    assert invalid.returncode == 2
    assert b"Deployed nothing" in invalid.stderr
    assert b"'banana'" in invalid.stderr
    assert not_allowed.status_code == 405
    assert not_allowed.headers["allow"] == "GET, POST, PUT, DELETE"
