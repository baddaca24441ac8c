"""Local access to the hub by other users of its machine, and the CLI's hints.

One `faashub up` in a non-default state folder serves the hub checks: the
provider token, the token of the embedded NATS server, the lockout exemption
of loopback, the FAASHUB_STATE_DIR hint and the rejection of unusable cron
schedules at deploy. The authenticator's lockout rules and the CLI's 401
message are checked directly, without a hub.
"""

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest

from faashub import constants, credentials, errors, jetstream
from faashub.cli.gateway_client import GatewayError, check_response
from faashub.credentials import Credentials
from faashub.settings import GatewaySettings
from gateway import auth
from tests.hub_support import RunningHub, descendants, faashub, running_hub

pytestmark = pytest.mark.timeout(120)

BAD_SCHEDULES = {
    "61 * * * *": "61 is outside 0-59",
    "@every 0s": "'0s'",
    "CRON_TZ=Mars/Base */5 * * * *": "'Mars/Base'",
    # No tick before the year 9999: the cron connector used to crash on it.
    "@every 9999999999h": "longer than 100 years",
    # Too large for a timedelta: the deploy check used to fail with a 500.
    "@every 99999999999999999999h": "longer than 100 years",
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir = tmp_path_factory.mktemp("doors")
    with running_hub(state_dir, auth=True) as running:
        yield running


def provider_url(hub: RunningHub) -> str:
    """Return the URL of the hub's local provider, from its command line."""
    for pid in descendants(hub.process.pid):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        arguments = raw.decode().split("\0")
        if "provider" in arguments and "local" in arguments:
            port = arguments[arguments.index("--port") + 1]
            return f"http://127.0.0.1:{port}"
    raise AssertionError("the hub runs no local provider process")


def deployment(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "service": name,
        "image": "local",
        "envProcess": "cat",
        "annotations": annotations,
    }


def test_provider_token_owner_only(hub: RunningHub) -> None:
    token_path = hub.state_dir / "credentials" / "provider-token"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert len(token_path.read_text().strip()) >= 32
    assert token_path.read_text().strip() not in "".join(hub.output)


def test_nats_token_owner_only(hub: RunningHub) -> None:
    token = hub.nats_token()
    token_path = hub.state_dir / "credentials" / "nats-token"
    config_path = hub.state_dir / "nats" / "nats-server.conf"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert token not in "".join(hub.output)
    for pid in descendants(hub.process.pid):
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        assert token not in command_line


async def test_nats_rejects_missing_token(hub: RunningHub) -> None:
    # The NATS protocol by hand: nats-py leaves a socket open when it fails.
    host, port = hub.nats_url().removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        info = connection.recv(4096)
        connection.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        answer = connection.recv(4096)
    assert b'"auth_required":true' in info
    assert answer.startswith(b"-ERR 'Authorization Violation'")

    client = await nats.connect(hub.nats_url(), token=hub.nats_token())
    try:
        info = await client.jetstream().stream_info(constants.CALLS_STREAM)
    finally:
        await client.close()
    assert info.config.name == constants.CALLS_STREAM


def test_provider_rejects_missing_token(hub: RunningHub) -> None:
    url = provider_url(hub)
    token = (hub.state_dir / "credentials" / "provider-token").read_text().strip()

    listed = httpx.get(f"{url}/system/functions")
    assert listed.status_code == 401
    assert listed.headers["www-authenticate"].startswith("Bearer")
    deployed = httpx.post(f"{url}/system/functions", json=deployment("intruder", {}))
    assert deployed.status_code == 401
    wrong = httpx.get(
        f"{url}/system/functions", headers={"Authorization": "Bearer wrong"}
    )
    assert wrong.status_code == 401
    logs = httpx.get(f"{url}/system/logs", params={"name": "intruder"})
    assert logs.status_code == 401

    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200
    allowed = httpx.get(
        f"{url}/system/functions", headers={"Authorization": f"Bearer {token}"}
    )
    assert allowed.status_code == 200
    assert all(item["name"] != "intruder" for item in allowed.json())


def test_gateway_sends_provider_token(hub: RunningHub) -> None:
    deployed = httpx.post(
        f"{hub.url}/system/functions",
        json=deployment("echo-doors", {}),
        auth=hub.auth,
        timeout=30,
    )
    assert deployed.status_code in (200, 202), deployed.text
    described = httpx.get(f"{hub.url}/system/function/echo-doors", auth=hub.auth)
    assert described.status_code == 200, described.text
    info = httpx.get(f"{hub.url}/system/info", auth=hub.auth)
    assert info.status_code == 200, info.text
    # The lookup of an async call and the sync proxy both reach the provider.
    invoked = httpx.post(f"{hub.url}/function/echo-doors", content=b"hi", timeout=30)
    assert invoked.status_code == 200, invoked.text
    assert invoked.content == b"hi"
    queued = httpx.post(f"{hub.url}/async-function/echo-doors", content=b"hi")
    assert queued.status_code == 202, queued.text


def test_loopback_never_locked_out(hub: RunningHub) -> None:
    for _ in range(12):
        refused = httpx.get(f"{hub.url}/system/functions", auth=("admin", "guess"))
        assert refused.status_code == 401
    allowed = httpx.get(f"{hub.url}/system/functions", auth=hub.auth)
    assert allowed.status_code == 200, allowed.text


def test_hub_prints_state_dir_export(hub: RunningHub) -> None:
    expected = f"export FAASHUB_STATE_DIR={hub.state_dir}"
    deadline = time.monotonic() + 10
    while expected not in "".join(hub.output) and time.monotonic() < deadline:
        time.sleep(0.1)
    announced = "".join(hub.output)
    assert expected in announced
    password = (hub.state_dir / "credentials" / "basic-auth-password").read_text()
    assert password not in announced


def test_state_dir_export_finds_gateway(hub: RunningHub) -> None:
    # The hub listens on a free port, not 8080: the exported folder alone
    # must lead the CLI to it, with its credentials.
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in ("OPENFAAS_URL", "FAASHUB_GATEWAY_USER")
    }
    environ["FAASHUB_STATE_DIR"] = str(hub.state_dir)
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "list"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert hub.port != 8080
    assert result.returncode == 0, result.stderr


def test_cli_401_names_state_dir(hub: RunningHub, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "list", "--gateway", hub.url],
        capture_output=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAASHUB_STATE_DIR": str(tmp_path),
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
        },
    )
    assert result.returncode == 2
    assert b"HTTP 401" in result.stderr
    assert b"faashub login" in result.stderr
    assert b"FAASHUB_STATE_DIR=DIR" in result.stderr


@pytest.mark.parametrize(("schedule", "named"), BAD_SCHEDULES.items())
def test_gateway_rejects_bad_schedule(
    hub: RunningHub, schedule: str, named: str
) -> None:
    body = deployment("bad-cron", {"topic": "cron-function", "schedule": schedule})
    for method in ("POST", "PUT"):
        response = httpx.request(
            method, f"{hub.url}/system/functions", json=body, auth=hub.auth
        )
        assert response.status_code == 400, response.text
        assert named in response.text
        assert "bad-cron" in response.text


def test_gateway_rejects_bad_zone(hub: RunningHub) -> None:
    annotations = {
        "topic": "kafka-topic, cron-function",
        "schedule": "*/5 * * * *",
        "com.faashub.cron.timezone": "Mars/Base",
    }
    response = httpx.post(
        f"{hub.url}/system/functions",
        json=deployment("bad-zone", annotations),
        auth=hub.auth,
    )
    assert response.status_code == 400, response.text
    assert "'Mars/Base' in com.faashub.cron.timezone" in response.text


def test_schedule_ignored_without_cron_topic(hub: RunningHub) -> None:
    annotations = {"topic": "orders", "schedule": "61 * * * *"}
    response = httpx.post(
        f"{hub.url}/system/functions",
        json=deployment("not-cron", annotations),
        auth=hub.auth,
        timeout=30,
    )
    assert response.status_code in (200, 202), response.text


@pytest.mark.parametrize(
    ("name", "schedule", "named"),
    [
        ("cli-cron", "61 * * * *", b"61 is outside 0-59"),
        ("cli-every", "@every 99999999999999999999h", b"longer than 100 years"),
    ],
)
def test_cli_deploy_rejects_bad_schedule(
    hub: RunningHub, name: str, schedule: str, named: bytes
) -> None:
    rejected = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        "cat",
        "--annotation",
        "topic=cron-function",
        "--annotation",
        f"schedule={schedule}",
        gateway=hub.url,
    )
    assert rejected.returncode != 0
    assert b"Deployed" not in rejected.stdout
    assert named in rejected.stderr
    assert b"Traceback" not in rejected.stderr
    listed = httpx.get(f"{hub.url}/system/functions", auth=hub.auth)
    assert name not in [item["name"] for item in listed.json()]

    accepted = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        "cat",
        "--annotation",
        "topic=cron-function",
        "--annotation",
        "schedule=@every 1h",
        gateway=hub.url,
    )
    assert accepted.returncode == 0, accepted.stderr.decode()


class SentResponse:
    """The status and headers an ASGI handler sent."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])


async def admit_from(
    authenticator: auth.Authenticator, address: str, authorization: str
) -> SentResponse:
    scope = {
        "type": "http",
        "path": "/system/functions",
        "client": (address, 40000),
        "headers": [(b"authorization", authorization.encode())],
    }
    sent = SentResponse()
    if await authenticator.admit(scope, sent):
        sent.status = 200
    return sent


def default_authenticator() -> auth.Authenticator:
    settings = GatewaySettings(auth_user="admin", auth_password="right")
    authenticator = auth.from_settings(settings)
    assert authenticator is not None
    return authenticator


async def test_lockout_still_applies_elsewhere() -> None:
    authenticator = default_authenticator()
    bad = Credentials("admin", "wrong").authorization()
    good = Credentials("admin", "right").authorization()
    for _ in range(10):
        refused = await admit_from(authenticator, "192.0.2.7", bad)
        assert refused.status == 401
    locked = await admit_from(authenticator, "192.0.2.7", good)
    assert locked.status == 429
    assert b"retry-after" in locked.headers


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"]
)
async def test_lockout_exempts_loopback(address: str) -> None:
    authenticator = default_authenticator()
    bad = Credentials("admin", "wrong").authorization()
    good = Credentials("admin", "right").authorization()
    for _ in range(15):
        refused = await admit_from(authenticator, address, bad)
        assert refused.status == 401
    allowed = await admit_from(authenticator, address, good)
    assert allowed.status == 200


async def test_lockout_exempt_empty_locks_loopback() -> None:
    settings = GatewaySettings(
        auth_user="admin", auth_password="right", auth_lockout_exempt=""
    )
    authenticator = auth.from_settings(settings)
    assert authenticator is not None
    bad = Credentials("admin", "wrong").authorization()
    for _ in range(10):
        await admit_from(authenticator, "127.0.0.1", bad)
    locked = await admit_from(authenticator, "127.0.0.1", bad)
    assert locked.status == 429


def test_lockout_exempt_rejects_bad_network() -> None:
    settings = GatewaySettings(
        auth_user="admin", auth_password="right", auth_lockout_exempt="10.0.0.0/33"
    )
    with pytest.raises(errors.SettingsError, match="'10.0.0.0/33'"):
        auth.from_settings(settings)


def test_401_message_names_state_dir() -> None:
    response = httpx.Response(401, request=httpx.Request("GET", "http://gw/"))
    with pytest.raises(GatewayError) as raised:
        check_response(response, "Listing functions")
    message = str(raised.value)
    assert "faashub login" in message
    assert "FAASHUB_STATE_DIR" in message


def test_provider_token_file_empty(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    settings = GatewaySettings(provider_token_file=empty)
    with pytest.raises(errors.SettingsError, match="is empty"):
        auth.provider_authorization(settings)
    missing = GatewaySettings(provider_token_file=tmp_path / "absent")
    with pytest.raises(errors.SettingsError, match="provider-token-file"):
        auth.provider_authorization(missing)
    assert auth.provider_authorization(GatewaySettings()) == ""


def test_nats_token_file_errors_name_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing-token"
    empty = tmp_path / "empty-token"
    empty.write_text("\n")

    assert credentials.read_nats_token(None) is None
    for path in (missing, empty):
        with pytest.raises(credentials.CredentialsError, match="--nats-token-file"):
            credentials.read_nats_token(path)


def test_nats_refusal_names_the_token_setting() -> None:
    refused = jetstream.describe_nats_error(nats.errors.AuthorizationError())
    other = jetstream.describe_nats_error(nats.errors.NoServersError())

    assert "--nats-token-file" in refused
    assert "FAASHUB_NATS_TOKEN_FILE" in refused
    assert "--nats-token-file" not in other
