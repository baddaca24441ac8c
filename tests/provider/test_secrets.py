"""Secrets: the /system/secrets API, the files functions read, and their updates."""

import base64
import logging
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from tests.provider.conftest import (
    RunningProvider,
    deploy,
    process_gone,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

# An http-mode function that returns the file $OPENFAAS_SECRETS_DIR/<path>,
# read again on every request.
SECRET_SERVER_SCRIPT = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/_/health":
            body = b"ok"
        else:
            folder = os.environ["OPENFAAS_SECRETS_DIR"]
            with open(os.path.join(folder, self.path.strip("/")), "rb") as file:
                body = file.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

READ_SECRET = "sh -c 'cat \"$OPENFAAS_SECRETS_DIR/$Http_Query\"'"


def create_secret(
    client: httpx.Client, name: str, value: str, *, method: str = "POST"
) -> httpx.Response:
    return client.request(
        method, "/system/secrets", json={"name": name, "value": value}
    )


def delete_secret(client: httpx.Client, name: str, **params: str) -> httpx.Response:
    return client.request(
        "DELETE", "/system/secrets", params=params, json={"name": name}
    )


def read_secret(client: httpx.Client, function: str, secret: str) -> httpx.Response:
    return client.post(f"/function/{function}?{secret}", content=b"")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_folder(settings: LocalProviderSettings) -> Path:
    return settings.state_dir.absolute() / "secrets"


def test_create_returns_202_and_lists_names_only(client: httpx.Client) -> None:
    response = create_secret(client, "api-key", "s3cr3t-value")

    assert response.status_code == 202
    listed = client.get("/system/secrets")
    assert listed.status_code == 200
    assert listed.json() == [{"name": "api-key", "namespace": "openfaas-fn"}]
    assert "s3cr3t-value" not in listed.text


def test_list_sorted_by_name(client: httpx.Client) -> None:
    for name in ("zeta", "alpha", "mid"):
        assert create_secret(client, name, "x").status_code == 202

    listed = client.get("/system/secrets", params={"namespace": "openfaas-fn"})

    assert [secret["name"] for secret in listed.json()] == ["alpha", "mid", "zeta"]


def test_create_duplicate_returns_409(client: httpx.Client) -> None:
    assert create_secret(client, "twice", "one").status_code == 202

    response = create_secret(client, "twice", "two")

    assert response.status_code == 409
    assert "'twice'" in response.text
    assert "PUT" in response.text


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Upper", id="uppercase"),
        pytest.param("under_score", id="underscore"),
        pytest.param("../escape", id="path"),
        pytest.param("x" * 64, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
def test_create_invalid_name_returns_400(client: httpx.Client, name: str) -> None:
    response = create_secret(client, name, "value")

    assert response.status_code == 400
    assert repr(name) in response.text
    assert client.get("/system/secrets").json() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"name": "s"}, "has no value", id="neither"),
        pytest.param({"name": "s", "value": ""}, "has no value", id="empty-value"),
        pytest.param(
            {"name": "s", "value": "a", "rawValue": "Yg=="},
            "both value and rawValue",
            id="both",
        ),
        pytest.param(
            {"name": "s", "rawValue": "not base64!"}, "not valid base64", id="bad-b64"
        ),
        pytest.param({"value": "v"}, "Secret", id="no-name"),
    ],
)
def test_create_invalid_value_returns_400(
    client: httpx.Client, body: dict[str, Any], expected: str
) -> None:
    response = client.post("/system/secrets", json=body)

    assert response.status_code == 400
    assert expected in response.text
    assert client.get("/system/secrets").json() == []


def test_create_too_large_returns_400(client: httpx.Client) -> None:
    response = create_secret(client, "huge", "x" * (1024 * 1024 + 1))

    assert response.status_code == 400
    assert "1048576" in response.text


def test_size_limit_from_settings(tmp_path: Path) -> None:
    settings = LocalProviderSettings(state_dir=tmp_path / "state", max_secret_bytes=8)
    running = start_provider(settings)
    try:
        with running.client() as client:
            fits = create_secret(client, "small", "12345678")
            created = create_secret(client, "big", "123456789")
            updated = create_secret(client, "small", "123456789", method="PUT")
            listed = client.get("/system/secrets").json()
    finally:
        running.stop()

    assert fits.status_code == 202
    assert created.status_code == 400
    assert "'big' has 9 bytes, more than the 8 bytes" in created.text
    assert updated.status_code == 400
    assert "'small' has 9 bytes" in updated.text
    assert listed == [{"name": "small", "namespace": "openfaas-fn"}]
    assert (secrets_folder(settings) / "values" / "small").read_bytes() == b"12345678"


def test_create_other_namespace_returns_404(client: httpx.Client) -> None:
    response = client.post(
        "/system/secrets", json={"name": "s", "namespace": "team-a", "value": "v"}
    )

    assert response.status_code == 404
    assert "Namespace 'team-a' not found" in response.text


def test_list_other_namespace_returns_404(client: httpx.Client) -> None:
    response = client.get("/system/secrets", params={"namespace": "team-a"})

    assert response.status_code == 404
    assert "'team-a'" in response.text


def test_update_and_delete_unknown_return_404(client: httpx.Client) -> None:
    updated = create_secret(client, "ghost", "v", method="PUT")
    deleted = delete_secret(client, "ghost")

    assert updated.status_code == 404
    assert "Secret 'ghost' not found" in updated.text
    assert deleted.status_code == 404
    assert "Secret 'ghost' not found" in deleted.text


def test_delete_returns_202_then_404(client: httpx.Client) -> None:
    assert create_secret(client, "brief", "v").status_code == 202

    first = delete_secret(client, "brief", namespace="openfaas-fn")
    second = delete_secret(client, "brief")

    assert first.status_code == 202
    assert second.status_code == 404
    assert client.get("/system/secrets").json() == []


def test_stored_with_owner_only_modes(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    assert create_secret(client, "api-key", "value").status_code == 202
    assert deploy(client, "reader", READ_SECRET, secrets=["api-key"]).status_code == 202

    folder = secrets_folder(settings)
    function_folder = folder / "functions" / "reader.openfaas-fn"
    assert mode_of(folder) == 0o700
    assert mode_of(folder / "values") == 0o700
    assert mode_of(folder / "values" / "api-key") == 0o600
    assert (folder / "values" / "api-key").read_bytes() == b"value"
    assert mode_of(function_folder) == 0o700
    assert mode_of(function_folder / "api-key") == 0o400
    assert not [path for path in folder.rglob("*.tmp")]


def test_classic_function_reads_secret_file(client: httpx.Client) -> None:
    assert create_secret(client, "api-key", "hunter2").status_code == 202
    assert deploy(client, "reader", READ_SECRET, secrets=["api-key"]).status_code == 202

    response = read_secret(client, "reader", "api-key")

    assert response.status_code == 200
    assert response.text == "hunter2"


def test_raw_value_bytes_reach_function(client: httpx.Client) -> None:
    raw = bytes(range(256))
    body = {"name": "blob", "rawValue": base64.b64encode(raw).decode()}
    assert client.post("/system/secrets", json=body).status_code == 202
    assert deploy(client, "reader", READ_SECRET, secrets=["blob"]).status_code == 202

    response = read_secret(client, "reader", "blob")

    assert response.content == raw


def test_secrets_dir_env_is_stable_path(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    assert create_secret(client, "api-key", "v").status_code == 202
    command = "sh -c 'printf %s \"$OPENFAAS_SECRETS_DIR\"'"
    env = {"OPENFAAS_SECRETS_DIR": "/elsewhere"}
    assert (
        deploy(client, "where", command, secrets=["api-key"], envVars=env).status_code
        == 202
    )

    response = client.post("/function/where", content=b"")

    expected = secrets_folder(settings) / "functions" / "where.openfaas-fn"
    assert response.text == str(expected)


def test_no_secrets_no_secrets_dir_env(client: httpx.Client) -> None:
    command = "sh -c 'printf %s \"${OPENFAAS_SECRETS_DIR-unset}\"'"
    assert deploy(client, "plain", command).status_code == 202

    assert client.post("/function/plain", content=b"").text == "unset"


def test_update_reaches_classic_function(client: httpx.Client) -> None:
    assert create_secret(client, "token", "old").status_code == 202
    assert deploy(client, "reader", READ_SECRET, secrets=["token"]).status_code == 202
    assert read_secret(client, "reader", "token").text == "old"

    response = create_secret(client, "token", "new", method="PUT")

    assert response.status_code == 202
    assert read_secret(client, "reader", "token").text == "new"


def test_update_reaches_http_function_without_restart(
    client: httpx.Client, tmp_path: Path
) -> None:
    script = tmp_path / "secret_server.py"
    script.write_text(SECRET_SERVER_SCRIPT)
    assert create_secret(client, "token", "old").status_code == 202
    deployed = deploy(
        client,
        "server",
        f"{sys.executable} {script}",
        secrets=["token"],
        envVars={"mode": "http"},
    )
    assert deployed.status_code == 202
    assert client.get("/function/server/token").text == "old"

    assert create_secret(client, "token", "new", method="PUT").status_code == 202

    assert client.get("/function/server/token").text == "new"


def test_deploy_missing_secret_names_it(client: httpx.Client) -> None:
    assert create_secret(client, "present", "v").status_code == 202

    response = deploy(client, "needy", "cat", secrets=["present", "absent"])

    assert response.status_code == 400
    assert "'absent'" in response.text
    assert "'present'" not in response.text
    assert client.get("/system/function/needy").status_code == 404


def test_deploy_invalid_secret_name_returns_400(client: httpx.Client) -> None:
    response = deploy(client, "needy", "cat", secrets=["../../etc/passwd"])

    assert response.status_code == 400
    assert "'../../etc/passwd'" in response.text


def test_update_missing_secret_keeps_function(client: httpx.Client) -> None:
    assert deploy(client, "steady", "cat").status_code == 202

    response = deploy(client, "steady", "wc -c", method="PUT", secrets=["absent"])

    assert response.status_code == 400
    assert "'absent'" in response.text
    assert client.get("/system/function/steady").json()["envProcess"] == "cat"


def test_redeploy_without_secret_removes_file(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    for name in ("keep", "drop"):
        assert create_secret(client, name, name).status_code == 202
    assert (
        deploy(client, "reader", READ_SECRET, secrets=["keep", "drop"]).status_code
        == 202
    )

    response = deploy(client, "reader", READ_SECRET, method="PUT", secrets=["keep"])

    assert response.status_code == 202
    function_folder = secrets_folder(settings) / "functions" / "reader.openfaas-fn"
    assert sorted(path.name for path in function_folder.iterdir()) == ["keep"]
    assert read_secret(client, "reader", "drop").status_code == 500


def test_redeploy_without_secrets_removes_folder(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    assert create_secret(client, "only", "v").status_code == 202
    assert deploy(client, "reader", READ_SECRET, secrets=["only"]).status_code == 202
    assert deploy(client, "plain", "cat").status_code == 202
    functions_folder = secrets_folder(settings) / "functions"
    assert (functions_folder / "reader.openfaas-fn").is_dir()

    response = deploy(client, "reader", READ_SECRET, method="PUT")

    assert response.status_code == 202
    assert not (functions_folder / "reader.openfaas-fn").exists()
    assert not (functions_folder / "plain.openfaas-fn").exists()
    assert delete_secret(client, "only").status_code == 202


def test_delete_in_use_returns_409_naming_functions(client: httpx.Client) -> None:
    assert create_secret(client, "shared", "v").status_code == 202
    for function in ("first", "second"):
        assert deploy(client, function, "cat", secrets=["shared"]).status_code == 202

    response = delete_secret(client, "shared")

    assert response.status_code == 409
    assert "used by functions 'first', 'second'." in response.text
    assert "Remove it from the secrets of those functions" in response.text
    assert client.get("/system/secrets").json()[0]["name"] == "shared"


def test_delete_in_use_by_one_function_singular(client: httpx.Client) -> None:
    assert create_secret(client, "single", "v").status_code == 202
    assert deploy(client, "reader", "cat", secrets=["single"]).status_code == 202

    response = delete_secret(client, "single")

    assert response.status_code == 409
    assert "used by function 'reader'." in response.text
    assert "Remove it from the secrets of that function and deploy it again" in (
        response.text
    )
    assert "those" not in response.text


def test_delete_after_function_removed(
    client: httpx.Client, settings: LocalProviderSettings
) -> None:
    assert create_secret(client, "shared", "v").status_code == 202
    assert deploy(client, "user", "cat", secrets=["shared"]).status_code == 202
    removed = client.request(
        "DELETE", "/system/functions", json={"functionName": "user"}
    )
    assert removed.status_code == 202

    response = delete_secret(client, "shared")

    assert response.status_code == 202
    functions_folder = secrets_folder(settings) / "functions"
    assert not (functions_folder / "user.openfaas-fn").exists()
    assert not (secrets_folder(settings) / "values" / "shared").exists()


def test_value_never_logged(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    value = "do-not-log-this-value"
    with caplog.at_level(logging.DEBUG):
        assert create_secret(client, "quiet", value).status_code == 202
        assert (
            create_secret(client, "quiet", value + "2", method="PUT").status_code == 202
        )
        assert (
            deploy(client, "reader", READ_SECRET, secrets=["quiet"]).status_code == 202
        )
        assert read_secret(client, "reader", "quiet").status_code == 200
        assert delete_secret(client, "quiet").status_code == 409

    assert [r for r in caplog.records if r.getMessage() == "secret created"]
    for record in caplog.records:
        assert value not in record.getMessage()
        assert value not in str(record.__dict__.get("ctx", ""))


def test_secrets_survive_restart(
    settings: LocalProviderSettings, echo_command: str
) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            assert create_secret(client, "kept", "still-here").status_code == 202
            assert (
                deploy(client, "reader", READ_SECRET, secrets=["kept"]).status_code
                == 202
            )
    finally:
        first.stop()
    # A lost function copy is written again from the stored value on start.
    copy = secrets_folder(settings) / "functions" / "reader.openfaas-fn" / "kept"
    copy.unlink()

    second: RunningProvider = start_provider(settings)
    try:
        with second.client() as client:
            listed = client.get("/system/secrets").json()
            response = read_secret(client, "reader", "kept")
    finally:
        second.stop()

    assert listed == [{"name": "kept", "namespace": "openfaas-fn"}]
    assert response.text == "still-here"


def test_http_function_stopped_on_delete_with_secret(
    client: httpx.Client, tmp_path: Path
) -> None:
    script = tmp_path / "secret_server.py"
    script.write_text(SECRET_SERVER_SCRIPT)
    assert create_secret(client, "token", "v").status_code == 202
    command = f"{sys.executable} {script}"
    deployed = deploy(
        client, "server", command, secrets=["token"], envVars={"mode": "http"}
    )
    assert deployed.status_code == 202
    assert client.get("/function/server/token").text == "v"
    pids = [
        int(path.name)
        for path in Path("/proc").iterdir()
        if path.name.isdigit() and _runs(path, str(script))
    ]
    assert pids

    removed = client.request(
        "DELETE", "/system/functions", json={"functionName": "server"}
    )

    assert removed.status_code == 202
    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), timeout_s=5, what="the process")


def _runs(proc_entry: Path, needle: str) -> bool:
    try:
        return needle in (proc_entry / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_failed_save_removes_secret_files(settings: LocalProviderSettings) -> None:
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert create_secret(client, "api-key", "v").status_code == 202
            functions = settings.state_dir / "functions"
            functions.rmdir()
            functions.write_text("a file where the folder should be")
            response = deploy(client, "unsaved", READ_SECRET, secrets=["api-key"])
    finally:
        running.stop()

    assert response.status_code == 500
    copies = secrets_folder(settings) / "functions" / "unsaved.openfaas-fn"
    assert not copies.exists()


def test_lost_secret_logged_on_start(
    settings: LocalProviderSettings, caplog: pytest.LogCaptureFixture
) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            assert create_secret(client, "fragile", "v").status_code == 202
            assert (
                deploy(client, "reader", READ_SECRET, secrets=["fragile"]).status_code
                == 202
            )
    finally:
        first.stop()
    (secrets_folder(settings) / "values" / "fragile").unlink()

    with caplog.at_level(logging.WARNING, logger="provider.local.backend"):
        second = start_provider(settings)
    try:
        with second.client() as client:
            status = client.get("/system/function/reader")
    finally:
        second.stop()

    assert status.status_code == 200
    [warning] = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert warning.__dict__["ctx"]["secrets"] == "fragile"
