"""The user commands (deploy, invoke, list, describe, remove) and stack files."""

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.cron import constants as cron_constants
from faashub import errors
from faashub.cli import deploy_checks, main, provider_commands, stack
from tests.conftest import LOOPBACK, free_port
from tests.hub_support import CallbackReceiver, RunningHub, faashub, running_hub

STACK_FILE = """
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:1
functions:
  upper:
    lang: dockerfile
    handler: ./upper
    image: example/upper:${TAG:-latest}
    fprocess: tr a-z A-Z
    environment:
      greeting: ${GREETING}
      retries: 3
      verbose: true
    environment_file:
      - common-env.yml
    labels:
      com.openfaas.scale.min: 1
    annotations:
      topic: orders,payments
  count:
    image: example/count
    fprocess: wc -c
"""


def write_stack(folder: Path) -> Path:
    (folder / "common-env.yml").write_text("environment:\n  region: eu\n  retries: 1\n")
    path = folder / "stack.yml"
    path.write_text(STACK_FILE)
    return path


def test_stack_file_builds_deployments(tmp_path: Path) -> None:
    parsed = stack.load_stack(write_stack(tmp_path), {"GREETING": "hi"})
    assert parsed.gateway == "http://127.0.0.1:1"
    upper = parsed.deployments["upper"]
    assert upper["service"] == "upper"
    assert upper["image"] == "example/upper:latest"
    assert upper["envProcess"] == "tr a-z A-Z"
    # The environment_file wins over the function's own environment, as in
    # faas-cli.
    assert upper["envVars"] == {
        "region": "eu",
        "retries": "1",
        "greeting": "hi",
        "verbose": "true",
    }
    assert upper["labels"] == {"com.openfaas.scale.min": "1"}
    assert upper["annotations"] == {"topic": "orders,payments"}
    assert parsed.deployments["count"]["envProcess"] == "wc -c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "functions: [a, b]\n", "no 'functions:' mapping", id="not-mapping"
        ),
        pytest.param("functions: {f: [\n", "not valid YAML", id="bad-yaml"),
        pytest.param(
            "functions:\n  f:\n    fprocess: cat\n  f:\n    fprocess: wc\n",
            "key 'f' appears twice in one mapping \\(lines 2 and 4\\)",
            id="function-twice",
        ),
    ],
)
def test_stack_file_errors_name_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(text)
    with pytest.raises(stack.StackFileError, match=message):
        stack.load_stack(path, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "functions:\n  f:\n    labels: [a]\n", "'labels'", id="labels-list"
        ),
        pytest.param(
            "functions:\n  f:\n    secrets: x\n", "'secrets'", id="secrets-text"
        ),
        pytest.param(
            "functions:\n  f:\n    environment_file: [missing.yml]\n",
            "missing.yml",
            id="missing-env-file",
        ),
        pytest.param(
            "functions:\n  f:\n    environment: {B: {c: d}}\n",
            "'environment' value 'B' of function 'f'",
            id="nested-value",
        ),
        pytest.param(
            "functions:\n  f:\n    fprocess: [env]\n",
            "'fprocess' of function 'f'",
            id="fprocess-list",
        ),
        pytest.param(
            "functions:\n  f:\n    readonly_root_filesystem: maybe\n",
            "must be true or false, not 'maybe'",
            id="flag",
        ),
    ],
)
def test_stack_function_errors_are_collected(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(text + "  g:\n    fprocess: cat\n")
    parsed = stack.load_stack(path, {})
    assert list(parsed.deployments) == ["g"]
    assert list(parsed.problems) == ["f"]
    assert message in parsed.problems["f"]


def test_stack_values_keep_their_text(tmp_path: Path) -> None:
    # YAML 1.1 would read these as true, false, 1.1, 493 and 750; faas-cli's
    # string fields keep the text as written.
    path = tmp_path / "stack.yml"
    path.write_text(
        "functions:\n  f:\n    fprocess: env\n    environment:\n"
        "      ENABLE: yes\n      MODE: off\n      VERSION: 1.10\n"
        "      PERMS: 0755\n      TIME: 12:30\n    labels:\n      tier: on\n"
        "    readonly_root_filesystem: 'false'\n"
    )

    deployment = stack.load_stack(path, {}).deployments["f"]

    assert deployment["envVars"] == {
        "ENABLE": "yes",
        "MODE": "off",
        "VERSION": "1.10",
        "PERMS": "0755",
        "TIME": "12:30",
    }
    assert deployment["labels"] == {"tier": "on"}
    assert deployment["readOnlyRootFilesystem"] is False


def test_stack_yaml_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("functions:\n  f: [\n")

    with pytest.raises(stack.StackFileError) as raised:
        stack.load_stack(path, {})

    assert f'in "{path}", line' in str(raised.value)
    assert "<unicode string>" not in str(raised.value)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    with running_hub(tmp_path_factory.mktemp("cli") / "state") as running:
        yield running


def test_deploy_flags_override_stack_file(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "flags.yml"
    path.write_text(
        "functions:\n  flagged:\n    fprocess: cat\n    environment:\n"
        "      region: file\n    labels:\n      team: file\n"
    )
    deployed = faashub(
        "deploy",
        "-f",
        str(path),
        "-e",
        "region=cli",
        "--label",
        "team=search",
        "--annotation",
        "topic=cli-topic",
        gateway=hub.url,
    )
    assert deployed.returncode == 0, deployed.stderr.decode()

    function = httpx.get(
        f"{hub.url}/system/function/flagged", auth=hub.auth, timeout=10
    ).json()
    assert function["envVars"]["region"] == "cli"
    assert function["labels"]["team"] == "search"
    assert function["annotations"]["topic"] == "cli-topic"


def test_deploy_warns_schedule_without_cron_topic(hub: RunningHub) -> None:
    deployed = faashub(
        "deploy",
        "--name",
        "nightly",
        "--fprocess",
        "date",
        "--annotation",
        "schedule=0 3 * * *",
        "--annotation",
        "topic=orders",
        gateway=hub.url,
    )
    assert deployed.returncode == 0, deployed.stderr.decode()
    message = deployed.stderr.decode()
    assert "warning: Function 'nightly' has a 'schedule' annotation" in message
    assert "--annotation topic=cron-function" in message

    with_topic = faashub(
        "deploy",
        "--name",
        "nightly",
        "--fprocess",
        "date",
        "--annotation",
        "schedule=0 3 * * *",
        "--annotation",
        "topic=orders,cron-function",
        gateway=hub.url,
    )
    assert with_topic.returncode == 0, with_topic.stderr.decode()
    assert b"warning" not in with_topic.stderr


def test_schedule_annotation_name_matches_cron_connector() -> None:
    assert deploy_checks.ANNOTATION_SCHEDULE == cron_constants.ANNOTATION_SCHEDULE


def test_deploy_missing_secret_deploys_nothing(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "secrets.yml"
    path.write_text(
        "functions:\n  plain:\n    fprocess: cat\n"
        "  needy:\n    fprocess: cat\n    secrets: [no-such-secret]\n"
    )

    rejected = faashub("deploy", "-f", str(path), gateway=hub.url)

    assert rejected.returncode != 0
    assert b"Deployed nothing" in rejected.stderr
    assert b"Secret 'no-such-secret' does not exist" in rejected.stderr
    assert b"faashub secret create no-such-secret" in rejected.stderr
    listed = httpx.get(f"{hub.url}/system/functions", auth=hub.auth, timeout=10)
    assert "plain" not in [item["name"] for item in listed.json()]


MIXED_PROBLEMS_STACK = """
functions:
  bad_name:
    fprocess: cat
  mixed-needy:
    fprocess: cat
    secrets: [no-such-secret]
  mixed-nightly:
    fprocess: date
    annotations:
      schedule: "0 3 * * *"
"""


def test_deploy_lists_all_problems_at_once(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(MIXED_PROBLEMS_STACK)

    result = faashub("deploy", "-f", str(path), gateway=hub.url)

    assert result.returncode == 2
    message = result.stderr.decode()
    assert "Deployed nothing, because 2 of 3 functions are invalid" in message
    assert "Invalid function name 'bad_name'" in message
    assert "Secret 'no-such-secret' does not exist" in message
    assert "warning: Function 'mixed-nightly' has a 'schedule' annotation" in message
    listed = faashub("list", gateway=hub.url)
    assert b"mixed-nightly" not in listed.stdout


def test_deploy_invalid_stack_without_gateway(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(MIXED_PROBLEMS_STACK)

    # Nothing listens there, so the secrets cannot be checked.
    result = faashub(
        "deploy", "-f", str(path), gateway=f"http://{LOOPBACK}:{free_port()}"
    )

    assert result.returncode == 2
    message = result.stderr.decode()
    assert "Invalid function name 'bad_name'" in message
    assert "no-such-secret" not in message


def test_deploy_from_stack_then_list_describe_remove(
    hub: RunningHub, tmp_path: Path
) -> None:
    path = write_stack(tmp_path)
    deployed = faashub("deploy", "-f", str(path), gateway=hub.url)
    assert deployed.returncode == 0, deployed.stderr.decode()
    assert b"Deployed upper" in deployed.stdout
    assert b"Deployed count" in deployed.stdout

    again = faashub("deploy", "-f", str(path), "--filter", "upper", gateway=hub.url)
    assert again.returncode == 0, again.stderr.decode()
    assert b"Updated upper" in again.stdout

    shouted = faashub("invoke", "upper", gateway=hub.url, stdin=b"quiet")
    assert shouted.stdout == b"QUIET"

    listed = faashub("list", "--verbose", gateway=hub.url)
    assert listed.returncode == 0
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["Function", "Image", "Invocations", "Replicas"]
    upper_row = next(line.split() for line in lines if line.startswith("upper"))
    assert upper_row == ["upper", "example/upper:latest", "1", "1"]

    described = faashub("describe", "upper", gateway=hub.url)
    assert described.returncode == 0, described.stderr.decode()
    text = described.stdout.decode()
    assert "Status:" in text
    assert "Ready" in text
    assert f"{hub.url}/async-function/upper" in text
    assert "orders,payments" in text

    removed = faashub("remove", "upper", gateway=hub.url)
    assert removed.returncode == 0, removed.stderr.decode()
    gone = faashub("describe", "upper", gateway=hub.url)
    assert gone.returncode != 0
    assert b"'upper' is not deployed" in gone.stderr


def test_describe_shows_every_definition_field(hub: RunningHub) -> None:
    secret_value = "describe-secret-value-41"
    created = faashub(
        "secret",
        "create",
        "describe-key",
        "--from-literal",
        secret_value,
        gateway=hub.url,
    )
    assert created.returncode == 0, created.stderr.decode()
    deployment = {
        "service": "full",
        "envProcess": "cat",
        "envVars": {"greeting": "hello", "region": "eu"},
        "secrets": ["describe-key"],
        "constraints": ["node.platform.os == linux"],
        "requests": {"memory": "64Mi"},
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "readOnlyRootFilesystem": True,
    }
    response = httpx.post(
        f"{hub.url}/system/functions", json=deployment, auth=hub.auth, timeout=10
    )
    assert response.status_code == 202, response.text

    described = faashub("describe", "full", gateway=hub.url)

    assert described.returncode == 0, described.stderr.decode()
    fields = dict(line.split(":", 1) for line in described.stdout.decode().splitlines())
    fields = {label: value.strip() for label, value in fields.items()}
    assert fields["Environment"] == '{"greeting": "hello", "region": "eu"}'
    assert fields["Secrets"] == "describe-key"
    assert fields["Constraints"] == "node.platform.os == linux"
    assert fields["Requests"] == '{"memory": "64Mi"}'
    assert fields["Limits"] == '{"cpu": "500m", "memory": "128Mi"}'
    assert fields["Read-only Root FS"] == "true"
    assert secret_value not in described.stdout.decode()


LENGTH_REPORTER = "sh -c 'echo length=$Http_Content_Length; wc -c'"


def invoke_from_file(hub: RunningHub, name: str, path: Path) -> bytes:
    """Run `faashub invoke NAME` with `path` as its stdin, a regular file."""
    with path.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "faashub", "invoke", name, "--gateway", hub.url],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.parametrize(
    ("size", "expected_length"),
    [
        pytest.param(3, "3", id="small-whole"),
        pytest.param(3 * 1024 * 1024, "", id="large-chunked"),
    ],
)
def test_invoke_streams_piped_body(
    hub: RunningHub, size: int, expected_length: str
) -> None:
    faashub(
        "deploy", "--name", "lengths", "--fprocess", LENGTH_REPORTER, gateway=hub.url
    )

    result = faashub("invoke", "lengths", gateway=hub.url, stdin=b"x" * size)

    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.split() == [f"length={expected_length}".encode(), b"%d" % size]


def test_invoke_sends_file_length(hub: RunningHub, tmp_path: Path) -> None:
    faashub(
        "deploy", "--name", "lengths", "--fprocess", LENGTH_REPORTER, gateway=hub.url
    )
    body = tmp_path / "body"
    body.write_bytes(b"y" * (3 * 1024 * 1024))

    output = invoke_from_file(hub, "lengths", body)

    assert output.split() == [b"length=3145728", b"3145728"]


def test_invoke_writes_large_response_whole(hub: RunningHub, tmp_path: Path) -> None:
    size = 20 * 1024 * 1024
    command = f"sh -c 'cat > /dev/null; head -c {size} /dev/zero'"
    faashub("deploy", "--name", "zeros", "--fprocess", command, gateway=hub.url)
    body = tmp_path / "empty"
    body.write_bytes(b"")

    output = invoke_from_file(hub, "zeros", body)

    assert output == bytes(size)


def test_namespaces_lists_provider_namespaces(hub: RunningHub) -> None:
    listed = faashub("namespaces", gateway=hub.url)

    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout.decode().splitlines() == ["Namespace", "openfaas-fn"]


def test_invoke_async_prints_call_id(hub: RunningHub) -> None:
    faashub("deploy", "--name", "count", "--fprocess", "wc -c", gateway=hub.url)
    with CallbackReceiver() as receiver:
        queued = faashub(
            "invoke",
            "count",
            "--async",
            "--callback-url",
            receiver.url,
            "--header",
            "X-Call-Id=cli-call-1",
            gateway=hub.url,
            stdin=b"abc",
        )
        assert queued.returncode == 0, queued.stderr.decode()
        assert queued.stdout.strip() == b"cli-call-1"
        [callback] = receiver.wait_for(1)
    assert callback.body.strip() == b"3"
    assert callback.headers["X-Call-Id"] == "cli-call-1"


def test_invoke_failure_exits_nonzero(hub: RunningHub) -> None:
    faashub("deploy", "--name", "fails", "--fprocess", "false", gateway=hub.url)
    result = faashub("invoke", "fails", gateway=hub.url)
    assert result.returncode == 1
    assert b"returned HTTP 500" in result.stderr
    # The message starts on a line of its own in a terminal that shows both.
    assert result.stdout.endswith(b"\n") or result.stderr.startswith(b"\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["deploy", "--name", "x"], b"--fprocess", id="deploy-no-fprocess"),
        pytest.param(
            ["deploy", "--name", "Bad_Name", "--fprocess", "cat"],
            b"Bad_Name",
            id="deploy-invalid-name",
        ),
        pytest.param(
            ["deploy", "--name", "x", "--fprocess", "cat", "--env", "novalue"],
            b"KEY=VALUE",
            id="deploy-bad-env",
        ),
        pytest.param(["remove", "nothing-here"], b"not deployed", id="remove-unknown"),
        pytest.param(
            ["invoke", "wc", "--callback-url", "http://127.0.0.1:9/"],
            b"--async",
            id="callback-needs-async",
        ),
    ],
)
def test_user_errors_name_the_fix(
    hub: RunningHub, arguments: list[str], message: bytes
) -> None:
    result = faashub(*arguments, gateway=hub.url)
    assert result.returncode != 0
    assert message in result.stderr


def test_unreachable_gateway_is_explained() -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "list", "--gateway", gateway],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert gateway.encode() in result.stderr
    assert b"faashub up" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["up"], id="up"),
        pytest.param(["gateway"], id="gateway"),
        pytest.param(["queue-worker"], id="queue-worker"),
        pytest.param(["provider", "local"], id="provider-local"),
        pytest.param(["connector", "kafka"], id="connector-kafka"),
        pytest.param(["deploy"], id="deploy"),
        pytest.param(["invoke"], id="invoke"),
        pytest.param(["namespaces"], id="namespaces"),
        pytest.param(["dlq", "list"], id="dlq-list"),
    ],
)
def test_help_of_every_command_prints(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main([*command, "--help"])
    assert exited.value.code == 0
    assert "usage: faashub" in capsys.readouterr().out


def help_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Return the `--help` output of `command` with its line wrapping undone."""
    with pytest.raises(SystemExit) as exited:
        main.main([*command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        pytest.param(["gateway"], "--auth-password", id="gateway"),
        pytest.param(["queue-worker"], "--gateway-password", id="queue-worker"),
        pytest.param(["connector", "cron"], "--gateway-password", id="cron"),
        pytest.param(["connector", "kafka"], "--sasl-password", id="kafka-sasl"),
    ],
)
def test_help_shows_secret_default_empty(
    command: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)

    assert "SecretStr" not in text
    env_name = "FAASHUB_" + flag.removeprefix("--").replace("-", "_").upper()
    assert f"(env {env_name}, default '')" in text


@pytest.mark.parametrize(
    "command",
    [pytest.param(["up"], id="up"), pytest.param(["provider", "local"], id="local")],
)
def test_help_shows_state_dir_default(
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No hyphen in the path, because argparse may break a help line at one.
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/xdgstate")

    text = help_text(command, capsys)

    assert "(env FAASHUB_STATE_DIR, default /srv/xdgstate/faashub, which is" in text
    assert "$XDG_STATE_HOME/faashub, or ~/.local/state/faashub when" in text


def test_help_max_replicas_covers_both_modes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text(["provider", "local"], capsys)

    [described] = re.findall(r"--max-replicas MAX_REPLICAS (.*?) \(env", text)
    assert "http-mode function." not in described
    assert "either mode" in described
    assert "com.openfaas.scale.min" in described
    assert "classic function" in described


INVALID_STACK = """
functions:
  first-good:
    fprocess: cat
  bad_name:
    fprocess: cat
  slow:
    fprocess: cat
    environment:
      exec_timeout: banana
  odd-labels:
    fprocess: cat
    labels:
      com.openfaas.scale.min: "²"
      "bad key!": x
  bad-schedule:
    fprocess: date
    annotations:
      topic: cron-function
      schedule: every now and then
"""


def test_deploy_invalid_stack_deploys_nothing(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(INVALID_STACK)
    result = faashub("deploy", "-f", str(path), gateway=hub.url)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "Deployed nothing, because 4 of 5 functions are invalid" in message
    assert "Invalid function name 'bad_name'" in message
    assert "exec_timeout='banana'" in message
    assert "com.openfaas.scale.min='²'" in message
    assert "Invalid label key 'bad key!' of function 'odd-labels'" in message
    assert "Invalid cron schedule for function 'bad-schedule'" in message
    assert "first-good:" not in message
    assert result.stdout == b""
    listed = faashub("list", gateway=hub.url)
    assert b"first-good" not in listed.stdout


MODEL_INVALID_STACK = """
functions:
  first-good:
    fprocess: cat
  big:
    fprocess: cat
    limits:
      memory: lots
    secrets:
      - api-key
      - api-key
"""


def test_deploy_checks_provider_fields_first(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(MODEL_INVALID_STACK)
    result = faashub("deploy", "-f", str(path), gateway=hub.url)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "Deployed nothing, because 1 of 2 functions is invalid" in message
    assert "big: secrets: secret 'api-key' is listed more than once" in message
    assert "big: limits.memory: 'lots' is not a Kubernetes quantity" in message
    assert result.stdout == b""
    listed = faashub("list", gateway=hub.url)
    assert b"first-good" not in listed.stdout


FAILING_STACK = """
functions:
  before-failure:
    fprocess: cat
  # The local provider rejects a function with no command; the CLI cannot
  # know that, because the Kubernetes provider runs the image's own.
  no-command:
    image: example/no-command
  after-failure:
    fprocess: cat
"""


def test_deploy_server_failure_continues(hub: RunningHub, tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(FAILING_STACK)
    result = faashub("deploy", "-f", str(path), gateway=hub.url)
    assert result.returncode == 1
    assert b"Deployed before-failure" in result.stdout
    assert b"Deployed after-failure" in result.stdout
    assert b"Deploying no-command failed" in result.stderr
    assert b"1 of 3 functions failed to deploy: no-command." in result.stderr
    listed = faashub("list", gateway=hub.url).stdout.decode()
    assert "before-failure" in listed
    assert "after-failure" in listed
    assert "no-command" not in listed


@pytest.mark.parametrize("value", ["٣h", "1_0m", "2e1s"])
def test_logs_since_takes_ascii_digits(value: str) -> None:
    with pytest.raises(errors.SettingsError, match="Invalid --since"):
        provider_commands.parse_since(value)
