"""CLI input errors, timeouts and messages, run against a real hub."""

import argparse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faashub.cli import main
from faashub.cli.gateway_client import GATEWAY_HELP
from tests.hub_support import RunningHub, faashub, running_hub

START_HINT = b"faashub up"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with running_hub(tmp_path_factory.mktemp("cli-input") / "state") as running:
        yield running


@pytest.fixture(scope="module")
def env_function(hub: RunningHub) -> str:
    """Deploy a classic function that prints its environment, headers included."""
    deployed = faashub(
        "deploy", "--name", "showenv", "--fprocess", "env", gateway=hub.url
    )
    assert deployed.returncode == 0, deployed.stderr.decode()
    return "showenv"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            "X-Token: abc==", b"Http_X_Token=abc==", id="colon-value-with-equals"
        ),
        pytest.param("X-Query: a=b", b"Http_X_Query=a=b", id="colon-query"),
        pytest.param("X-Url=http://h/p?a=1", b"Http_X_Url=http://h/p?a=1", id="equals"),
    ],
)
def test_invoke_header_value_keeps_separators(
    hub: RunningHub, env_function: str, header: str, expected: bytes
) -> None:
    result = faashub("invoke", env_function, "-H", header, gateway=hub.url)
    assert result.returncode == 0, result.stderr.decode()
    assert expected in result.stdout.splitlines()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["-m", "GE T"], b"Invalid --method 'GE T'", id="method-space"),
        pytest.param(
            ["-H", "X Bad: v"], b"Invalid --header 'X Bad: v'", id="name-space"
        ),
        pytest.param(
            ["-H", "novalue"], b"Invalid --header 'novalue'", id="no-separator"
        ),
        pytest.param(
            ["-H", "X-A: caf\u00e9"], b"printable ASCII", id="non-ascii-value"
        ),
        pytest.param(["--timeout", "0"], b"Invalid --timeout 0", id="zero-timeout"),
    ],
)
def test_invoke_input_error_names_the_value(
    hub: RunningHub, env_function: str, arguments: list[str], message: bytes
) -> None:
    result = faashub("invoke", env_function, *arguments, gateway=hub.url)
    assert result.returncode == 2
    assert message in result.stderr
    assert START_HINT not in result.stderr


def test_gateway_url_without_scheme() -> None:
    # The URL is rejected before any connection, so no hub is needed.
    result = faashub("list", gateway="notaurl")
    assert result.returncode == 2
    assert b"Invalid gateway URL 'notaurl'" in result.stderr
    assert b"http://" in result.stderr
    assert START_HINT not in result.stderr


def test_gateway_url_other_scheme() -> None:
    result = faashub("list", gateway="ftp://127.0.0.1:1")
    assert result.returncode == 2
    assert b"Invalid gateway URL 'ftp://127.0.0.1:1'" in result.stderr
    assert b"the scheme 'ftp' is not supported" in result.stderr
    assert b"Use http:// or https://" in result.stderr
    assert b"Give the scheme too" not in result.stderr


def test_gateway_help_names_stack_file() -> None:
    assert "for 'deploy -f', the stack file's provider.gateway" in GATEWAY_HELP


def test_invoke_timeout_says_call_may_run(hub: RunningHub) -> None:
    deployed = faashub(
        "deploy",
        "--name",
        "nap",
        "--fprocess",
        "sh -c 'sleep 4; echo done'",
        gateway=hub.url,
    )
    assert deployed.returncode == 0, deployed.stderr.decode()
    timed_out = faashub("invoke", "nap", "--timeout", "1", gateway=hub.url)
    assert timed_out.returncode == 2
    assert b"timed out after 1 s" in timed_out.stderr
    assert b"may still be running" in timed_out.stderr
    assert b"--timeout" in timed_out.stderr
    assert START_HINT not in timed_out.stderr
    finished = faashub("invoke", "nap", "--timeout", "20", gateway=hub.url)
    assert finished.returncode == 0, finished.stderr.decode()
    assert finished.stdout.strip() == b"done"


def test_invoke_timeout_default_covers_hub() -> None:
    args = main.build_parser().parse_args(["invoke", "x"])
    # The hub's default --upstream-timeout-s is 300 s.
    assert args.timeout >= 300


@pytest.mark.parametrize("command", ["describe", "remove"])
def test_unknown_namespace_passes_gateway_message(
    hub: RunningHub, env_function: str, command: str
) -> None:
    result = faashub(command, env_function, "-n", "other", gateway=hub.url)
    assert result.returncode == 2
    assert b"Namespace 'other' not found" in result.stderr
    assert b"not deployed" not in result.stderr


def test_unknown_function_still_not_deployed(hub: RunningHub) -> None:
    result = faashub("describe", "nothing-here", gateway=hub.url)
    assert result.returncode == 2
    assert b"'nothing-here' is not deployed" in result.stderr


def test_scale_to_one_says_replica(hub: RunningHub, env_function: str) -> None:
    result = faashub("scale", env_function, "--replicas", "1", gateway=hub.url)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"Scaled showenv to 1 replica."


def test_gateway_scale_non_json_body(hub: RunningHub, env_function: str) -> None:
    response = httpx.post(
        f"{hub.url}/system/scale-function/{env_function}",
        content=b"notjson",
        auth=hub.auth,
        timeout=30,
    )
    assert response.status_code == 400
    assert "Invalid JSON" in response.text
    assert '{"serviceName": "NAME", "replicas": 2}' in response.text


def test_one_invalid_function_singular(hub: RunningHub) -> None:
    result = faashub(
        "deploy", "--name", "Bad_Name", "--fprocess", "cat", gateway=hub.url
    )
    assert result.returncode == 2
    assert b"because 1 of 1 function is invalid" in result.stderr


def _gateway_helps(parser: argparse.ArgumentParser, path: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for action in parser._actions:
        if "--gateway" in action.option_strings:
            found[path] = str(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_gateway_helps(child, f"{path} {name}".strip()))
    return found


def test_gateway_help_same_everywhere() -> None:
    helps = _gateway_helps(main.build_parser(), "")
    # The user commands, including the subcommands of dlq and secret.
    assert {"list", "logs", "scale", "login", "logout", "invoke"} <= set(helps)
    assert any(path.startswith("dlq ") for path in helps)
    assert any(path.startswith("secret ") for path in helps)
    different = {path: text for path, text in helps.items() if text != GATEWAY_HELP}
    assert different == {}


def test_gateway_help_names_the_default() -> None:
    assert "OPENFAAS_URL" in GATEWAY_HELP
    assert "FAASHUB_STATE_DIR" in GATEWAY_HELP
    assert "http://127.0.0.1:8080" in GATEWAY_HELP


def test_readme_up_table_has_dev_broker() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    assert "| `--kafka-dev-broker` |" in readme
