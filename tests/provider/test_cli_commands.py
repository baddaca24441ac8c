"""`faashub secret`, `logs` and `scale`: argument handling against a real provider.

The provider API is what the gateway forwards these commands to, so a
provider served on loopback takes the place of the gateway here.
"""

import argparse
import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from faashub import errors
from faashub.cli import main, provider_commands
from faashub.cli.gateway_client import GatewayError
from tests.conftest import free_port
from tests.provider.conftest import RunningProvider, deploy

pytestmark = pytest.mark.timeout(30)


class _Stdin(io.BytesIO):
    def isatty(self) -> bool:
        return False


def parse(*arguments: str) -> argparse.Namespace:
    return main.build_parser().parse_args(list(arguments))


def test_secret_from_stdin_drops_line_break(
    provider: RunningProvider, client: httpx.Client
) -> None:
    args = parse("secret", "create", "token", "--gateway", provider.url)

    provider_commands.run_secret_create(args, stdin=_Stdin(b"  spaced value\r\n"))

    assert deploy(
        client,
        "reader",
        "sh -c 'cat \"$OPENFAAS_SECRETS_DIR/token\"'",
        secrets=["token"],
    ).is_success
    assert client.post("/function/reader", content=b"").text == "  spaced value"


def test_secret_from_file_sent_as_raw_value(
    provider: RunningProvider, client: httpx.Client, tmp_path: Path
) -> None:
    secret_file = tmp_path / "blob"
    secret_file.write_bytes(b"\x00\xffbinary\n")
    args = parse(
        "secret", "create", "blob", "--from-file", str(secret_file), "-g", provider.url
    )

    body = provider_commands.secret_body(args, None)
    provider_commands.run_secret_create(args)

    assert base64.b64decode(body["rawValue"]) == b"\x00\xffbinary\n"
    assert "value" not in body
    assert client.get("/system/secrets").json()[0]["name"] == "blob"


def test_secret_literal_sent_as_value() -> None:
    args = parse("secret", "update", "token", "--from-literal", "abc")

    body = provider_commands.secret_body(args, None)

    assert body == {"name": "token", "value": "abc"}


def test_secret_empty_value_rejected() -> None:
    args = parse("secret", "create", "token")

    with pytest.raises(errors.SettingsError, match="'token' is empty"):
        provider_commands.secret_body(args, _Stdin(b"\n"))


def test_secret_missing_file_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    args = parse("secret", "create", "token", "--from-file", str(missing))

    with pytest.raises(errors.SettingsError, match="absent"):
        provider_commands.secret_body(args, None)


def test_secret_list_and_remove(
    provider: RunningProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("beta", "alpha"):
        args = parse(
            "secret", "create", name, "--from-literal", "v", "-g", provider.url
        )
        provider_commands.run_secret_create(args)
    capsys.readouterr()

    provider_commands.run_secret_list(parse("secret", "list", "-g", provider.url))
    listed = capsys.readouterr().out
    provider_commands.run_secret_remove(
        parse("secret", "rm", "alpha", "-g", provider.url)
    )
    removed = capsys.readouterr().out

    assert listed.splitlines() == ["Secret", "alpha", "beta"]
    assert removed == "Removed secret alpha.\n"


def test_logs_printed_as_text_and_json(
    provider: RunningProvider,
    client: httpx.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert deploy(client, "talker", "sh -c 'cat >&2'").is_success
    assert client.post("/function/talker", content=b"one\ntwo\n").is_success

    provider_commands.run_logs(
        parse("logs", "talker", "--tail", "1", "-g", provider.url)
    )
    text = capsys.readouterr().out
    provider_commands.run_logs(parse("logs", "talker", "--json", "-g", provider.url))
    raw = capsys.readouterr().out

    [line] = text.splitlines()
    assert line.endswith(" two")
    assert " talker (talker-" in line
    assert [json.loads(item)["text"] for item in raw.splitlines()] == ["one", "two"]


def test_logs_unknown_function_fails(provider: RunningProvider) -> None:
    args = parse("logs", "nobody", "-g", provider.url)

    with pytest.raises(GatewayError, match="HTTP 404"):
        provider_commands.run_logs(args)


def test_scale_sets_replicas(
    provider: RunningProvider, client: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(client, "wc", "wc -c").is_success

    provider_commands.run_scale(parse("scale", "wc", "-r", "3", "-g", provider.url))

    assert capsys.readouterr().out == "Scaled wc to 3 replicas.\n"
    assert client.get("/system/function/wc").json()["replicas"] == 3


def test_scale_negative_rejected_locally() -> None:
    args = parse("scale", "wc", "--replicas", "-2", "-g", "http://127.0.0.1:1")

    with pytest.raises(errors.SettingsError, match="-2"):
        provider_commands.run_scale(args)


def test_unreachable_gateway_named() -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    args = parse("secret", "list", "-g", gateway)

    with pytest.raises(GatewayError, match=gateway):
        provider_commands.run_secret_list(args)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z", id="rfc3339-zulu"),
        pytest.param(
            "2024-05-01T14:00:00+02:00", "2024-05-01T14:00:00+02:00", id="offset"
        ),
    ],
)
def test_since_time_passed_through(value: str, expected: str) -> None:
    assert provider_commands.parse_since(value) == expected


def test_since_duration_counts_back() -> None:
    since = datetime.fromisoformat(provider_commands.parse_since("10m"))

    age_s = (datetime.now(UTC) - since).total_seconds()

    assert 599 <= age_s <= 605


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yesterday", id="word"),
        pytest.param("2024-05-01T12:00:00", id="no-offset"),
        pytest.param("10", id="no-unit"),
    ],
)
def test_since_invalid_rejected(value: str) -> None:
    with pytest.raises(errors.SettingsError, match=repr(value)):
        provider_commands.parse_since(value)


def test_format_log_line_keeps_unparsable() -> None:
    assert provider_commands.format_log_line("not json") == "not json"
