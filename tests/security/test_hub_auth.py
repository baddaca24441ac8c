"""`faashub up` with its generated credentials, the CLI, and the log canary.

One hub serves every check of this module, to keep the suite fast.
"""

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faashub import credentials
from tests.hub_support import RunningHub, faashub, running_hub

pytestmark = pytest.mark.timeout(120)

CANARY = "canary-7f3e9a1c5b"
READ_SECRET = "sh -c 'cat \"$OPENFAAS_SECRETS_DIR/canary-secret\" >/dev/null; echo ok'"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir = tmp_path_factory.mktemp("hub")
    with running_hub(state_dir, auth=True) as running:
        yield running


def run_ok(hub: RunningHub, *arguments: str, stdin: bytes = b"") -> str:
    result = faashub(*arguments, gateway=hub.url, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def login(
    hub: RunningHub, store: Path, *arguments: str, stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "faashub", "login", "--gateway", hub.url, *arguments],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "FAASHUB_AUTH_FILE": str(store)},
    )


def test_credentials_owner_only(hub: RunningHub) -> None:
    folder = hub.state_dir / "credentials"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("basic-auth-user", "basic-auth-password"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert len((folder / "basic-auth-password").read_text()) >= 32
    announced = "".join(hub.output)
    assert "gateway credentials: user 'admin'" in announced
    assert hub.auth is not None
    assert (folder / "basic-auth-password").read_text() not in announced


def test_system_needs_hub_credentials(hub: RunningHub) -> None:
    anonymous = httpx.get(f"{hub.url}/system/functions")
    authenticated = httpx.get(f"{hub.url}/system/functions", auth=hub.auth)
    assert anonymous.status_code == 401
    assert "www-authenticate" in anonymous.headers
    assert authenticated.status_code == 200


def test_cli_finds_hub_credentials(hub: RunningHub) -> None:
    # hub_support points FAASHUB_STATE_DIR at the hub, as the default state
    # folder would be for a hub started without --state-dir.
    listed = faashub("list", gateway=hub.url)
    assert listed.returncode == 0, listed.stderr.decode()


def test_cli_without_credentials_explains(hub: RunningHub, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "list", "--gateway", hub.url],
        capture_output=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "FAASHUB_STATE_DIR": str(tmp_path),
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
        },
    )
    assert result.returncode == 2
    assert b"HTTP 401" in result.stderr
    assert b"faashub login" in result.stderr


def run_cli(
    hub: RunningHub, *arguments: str, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """Run a user command against `hub` with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "faashub", *arguments, "--gateway", hub.url],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["describe", "any"], id="describe"),
        pytest.param(["namespaces"], id="namespaces"),
        pytest.param(["secret", "list"], id="secret-list"),
        pytest.param(["logs", "any"], id="logs"),
        pytest.param(["scale", "any", "--replicas", "1"], id="scale"),
        pytest.param(["dlq", "list"], id="dlq-list"),
    ],
)
def test_cli_wrong_env_password_explains(
    hub: RunningHub, tmp_path: Path, arguments: list[str]
) -> None:
    result = run_cli(
        hub,
        *arguments,
        env={
            "FAASHUB_GATEWAY_USER": "admin",
            "FAASHUB_GATEWAY_PASSWORD": "wrong",
            "FAASHUB_STATE_DIR": str(hub.state_dir),
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
        },
    )

    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "HTTP 401" in stderr
    assert f"the gateway at {hub.url} rejected the credentials of user 'admin'" in (
        stderr
    )
    assert "from FAASHUB_GATEWAY_USER and FAASHUB_GATEWAY_PASSWORD" in stderr
    assert "needs credentials" not in stderr
    assert "wrong" not in stderr


def test_cli_wrong_stored_login_explains(hub: RunningHub, tmp_path: Path) -> None:
    store = tmp_path / "auth.json"
    credentials.save_login(store, hub.url, credentials.Credentials("admin", "wrong"))

    result = run_cli(
        hub,
        "list",
        env={"FAASHUB_STATE_DIR": str(tmp_path), "FAASHUB_AUTH_FILE": str(store)},
    )

    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "rejected the credentials of user 'admin'" in stderr
    assert f"that 'faashub login' stored in {store}" in stderr
    assert f"Run 'faashub login --gateway {hub.url}' again" in stderr


def test_cli_wrong_hub_credentials_explains(hub: RunningHub, tmp_path: Path) -> None:
    # A state folder that recorded this gateway URL with other credentials, as
    # an older hub on the same port leaves it.
    state_dir = tmp_path / "old-hub"
    folder = credentials.hub_credentials_dir(state_dir)
    folder.mkdir(parents=True)
    (folder / credentials.USER_FILE).write_text("admin\n")
    (folder / credentials.PASSWORD_FILE).write_text("wrong\n")
    credentials.record_hub_gateway(state_dir, hub.url)

    result = run_cli(
        hub,
        "list",
        env={
            "FAASHUB_STATE_DIR": str(state_dir),
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
        },
    )

    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "rejected the credentials of user 'admin'" in stderr
    assert f"of the hub with the state folder {state_dir}" in stderr


def test_login_stores_checked_credentials(hub: RunningHub, tmp_path: Path) -> None:
    assert hub.auth is not None
    password = (hub.state_dir / "credentials" / "basic-auth-password").read_text()
    store = tmp_path / "auth.json"

    rejected = login(hub, store, "--password-stdin", stdin=b"wrong\n")
    assert rejected.returncode == 2
    assert b"rejected the credentials" in rejected.stderr
    assert not store.exists()

    accepted = login(hub, store, "--password-stdin", stdin=password.encode() + b"\n")
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    listed = subprocess.run(
        [sys.executable, "-m", "faashub", "list", "--gateway", hub.url],
        capture_output=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "FAASHUB_STATE_DIR": str(tmp_path),
            "FAASHUB_AUTH_FILE": str(store),
        },
    )
    assert listed.returncode == 0, listed.stderr.decode()


def test_login_password_options_exclusive(hub: RunningHub, tmp_path: Path) -> None:
    store = tmp_path / "auth.json"

    result = login(hub, store, "-p", "a", "-s", stdin=b"b\n")

    assert result.returncode == 2
    assert b"-s/--password-stdin: not allowed with argument -p/--password" in (
        result.stderr
    )
    assert not store.exists()


def test_login_rejects_colon_in_username(hub: RunningHub, tmp_path: Path) -> None:
    store = tmp_path / "auth.json"

    result = login(hub, store, "-u", "ad:min", "-s", stdin=b"secret\n")

    assert result.returncode == 2
    assert b"Invalid --username 'ad:min'" in result.stderr
    assert b"cannot carry a ':' in a user name" in result.stderr
    assert not store.exists()


def test_no_secret_in_any_log(hub: RunningHub) -> None:
    run_ok(hub, "secret", "create", "canary-secret", "--from-literal", CANARY)
    run_ok(
        hub,
        "deploy",
        "--name",
        "canary",
        "--fprocess",
        READ_SECRET,
        "--secret",
        "canary-secret",
    )
    invoked = httpx.post(
        f"{hub.url}/function/canary",
        content=b"body",
        headers={"Authorization": f"Bearer {CANARY}", "X-Api-Key": CANARY},
        timeout=30,
    )
    assert invoked.status_code == 200
    refused = httpx.get(f"{hub.url}/system/secrets", auth=("admin", CANARY))
    assert refused.status_code == 401
    assert CANARY not in refused.text
    secrets = httpx.get(f"{hub.url}/system/secrets", auth=hub.auth)
    assert CANARY not in secrets.text
    described = run_ok(hub, "describe", "canary")
    assert CANARY not in described

    assert hub.auth is not None
    password = (hub.state_dir / "credentials" / "basic-auth-password").read_text()
    logged = "".join(hub.output)
    for path in (hub.state_dir / "logs").rglob("*"):
        if path.is_file():
            logged += path.read_text(errors="replace")
    assert "authentication failed" in logged
    assert CANARY not in logged
    assert password not in logged


def test_cli_credentials_found_in_order(tmp_path: Path) -> None:
    store = tmp_path / "auth.json"
    state_dir = tmp_path / "hub"
    url = "http://127.0.0.1:8080"
    folder = credentials.hub_credentials_dir(state_dir)
    folder.mkdir(parents=True)
    (folder / credentials.USER_FILE).write_text("hub-user\n")
    (folder / credentials.PASSWORD_FILE).write_text("hub-password\n")
    credentials.record_hub_gateway(state_dir, url)
    environ = {"FAASHUB_STATE_DIR": str(state_dir), "FAASHUB_AUTH_FILE": str(store)}

    def find(extra: dict[str, str]) -> credentials.FoundCredentials | None:
        return credentials.find_cli_credentials(
            url, {**environ, **extra}, default_state_dir=tmp_path / "unused"
        )

    from_hub = find({})
    assert from_hub is not None
    assert from_hub.source == "state folder"
    assert from_hub.location == state_dir
    assert from_hub.credentials.user == "hub-user"

    credentials.save_login(store, url, credentials.Credentials("login-user", "x"))
    from_store = find({})
    assert from_store is not None
    assert from_store.source == "login store"
    assert from_store.location == store
    assert from_store.credentials.user == "login-user"

    variables = {"FAASHUB_GATEWAY_USER": "env-user", "FAASHUB_GATEWAY_PASSWORD": "y"}
    from_variables = find(variables)
    assert from_variables is not None
    assert from_variables.source == "variables"
    assert from_variables.location is None
    assert from_variables.credentials.user == "env-user"

    assert find({"FAASHUB_STATE_DIR": str(tmp_path / "other")}) is not None
    store.unlink()
    assert find({"FAASHUB_STATE_DIR": str(tmp_path / "other")}) is None
