"""Deployed functions survive a provider restart on the same state folder."""

import json
import logging
from pathlib import Path

import pytest

from faashub.settings import LocalProviderSettings
from tests.provider.conftest import (
    deploy,
    log_context,
    process_gone,
    start_provider,
    wait_until,
)

pytestmark = pytest.mark.timeout(40)


def functions_folder(settings: LocalProviderSettings) -> Path:
    return settings.state_dir / "functions"


def test_functions_survive_restart(
    settings: LocalProviderSettings, echo_command: str
) -> None:
    first = start_provider(settings)
    try:
        with first.client() as client:
            assert deploy(client, "wc", "wc -c").status_code == 202
            response = deploy(client, "echo", echo_command, envVars={"mode": "http"})
            assert response.status_code == 202
            created_at = client.get("/system/function/wc").json()["createdAt"]
            old_pid = client.post("/function/echo", content=b"").json()["pid"]
    finally:
        first.stop()
    assert process_gone(old_pid)

    second = start_provider(settings)
    try:
        with second.client() as client:
            listed = client.get("/system/functions").json()
            classic = client.post("/function/wc", content=b"hello")
            http_mode = client.post("/function/echo/again", content=b"")
            status = client.get("/system/function/wc").json()
    finally:
        second.stop()

    assert [function["name"] for function in listed] == ["echo", "wc"]
    assert classic.text.strip() == "5"
    assert http_mode.status_code == 200
    assert http_mode.json()["path"] == "/again"
    assert http_mode.json()["pid"] != old_pid
    assert status["createdAt"] == created_at


def test_stop_terminates_http_processes(
    settings: LocalProviderSettings, echo_command: str
) -> None:
    running = start_provider(settings)
    try:
        with running.client() as client:
            for name in ("one", "two"):
                response = deploy(client, name, echo_command, envVars={"mode": "http"})
                assert response.status_code == 202
            pids = [
                client.post(f"/function/{name}", content=b"").json()["pid"]
                for name in ("one", "two")
            ]
    finally:
        running.stop()

    for pid in pids:
        assert process_gone(pid)


def test_deploy_writes_one_file_per_function(settings: LocalProviderSettings) -> None:
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "kept", "cat", labels={"a": "b"}).status_code == 202
            assert deploy(client, "dropped", "cat").status_code == 202
            response = client.request(
                "DELETE", "/system/functions", json={"functionName": "dropped"}
            )
            assert response.status_code == 202
    finally:
        running.stop()

    files = sorted(path.name for path in functions_folder(settings).iterdir())
    assert files == ["kept.openfaas-fn.json"]
    stored = json.loads((functions_folder(settings) / files[0]).read_text())
    assert stored["deployment"]["service"] == "kept"
    assert stored["deployment"]["namespace"] == "openfaas-fn"
    assert stored["deployment"]["labels"] == {"a": "b"}


def test_corrupt_file_skipped_on_start(
    settings: LocalProviderSettings, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "healthy", "cat").status_code == 202
    finally:
        running.stop()
    corrupt = functions_folder(settings) / "broken.openfaas-fn.json"
    corrupt.write_text('{"deployment": {"service": ')
    invalid = functions_folder(settings) / "invalid.openfaas-fn.json"
    invalid.write_text(
        json.dumps(
            {
                "deployment": {"service": "invalid", "envProcess": ""},
                "created_at": "2024-01-01T00:00:00Z",
            }
        )
    )

    with caplog.at_level(logging.WARNING):
        restarted = start_provider(settings)
    try:
        with restarted.client() as client:
            names = [
                function["name"] for function in client.get("/system/functions").json()
            ]
            health = client.get("/healthz")
    finally:
        restarted.stop()

    assert names == ["healthy"]
    assert health.status_code == 200
    skipped = {
        log_context(r)["path"] for r in caplog.records if "skipped" in r.getMessage()
    }
    assert skipped == {str(corrupt), str(invalid)}


def test_stale_temp_file_removed_on_start(settings: LocalProviderSettings) -> None:
    folder = functions_folder(settings)
    folder.mkdir(parents=True)
    stale = folder / ".crashed.openfaas-fn.json.abc123.tmp"
    stale.write_text("{")

    running = start_provider(settings)
    running.stop()

    assert not stale.exists()


def test_unwritable_state_dir_fails_create(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    settings = LocalProviderSettings(state_dir=state_dir)
    running = start_provider(settings)
    try:
        folder = state_dir / "functions"
        folder.rmdir()
        folder.write_text("a file where the folder should be")
        with running.client() as client, caplog.at_level(logging.ERROR):
            response = deploy(client, "unsaved", "cat")
            listed = client.get("/system/functions").json()
    finally:
        running.stop()

    assert response.status_code == 500
    assert "Cannot save function 'unsaved'." in response.text
    assert "log has the details" in response.text
    assert str(tmp_path) not in response.text
    assert listed == []
    [failure] = [r for r in caplog.records if "storage failed" in r.getMessage()]
    assert str(folder) in failure.getMessage()


def test_invocation_count_resets_on_restart(settings: LocalProviderSettings) -> None:
    running = start_provider(settings)
    try:
        with running.client() as client:
            assert deploy(client, "counted", "cat").status_code == 202
            client.post("/function/counted", content=b"x")
    finally:
        running.stop()

    restarted = start_provider(settings)
    try:
        with restarted.client() as client:
            wait_until(lambda: client.get("/healthz").status_code == 200, what="ready")
            status = client.get("/system/function/counted").json()
    finally:
        restarted.stop()

    # The invocation count is kept in memory only.
    assert "invocationCount" not in status


def test_corrupt_file_log_omits_content(
    settings: LocalProviderSettings, caplog: pytest.LogCaptureFixture
) -> None:
    token = "ENVTOKEN-0a1b2c"
    running = start_provider(settings)
    try:
        with running.client() as client:
            response = deploy(client, "leaky", "cat", envVars={"API_TOKEN": token})
            assert response.status_code == 202
    finally:
        running.stop()
    path = functions_folder(settings) / "leaky.openfaas-fn.json"
    text = path.read_text()
    # Cut the file right after the value, so that the end of the input is it.
    path.write_text(text[: text.index(token) + len(token)])

    with caplog.at_level(logging.DEBUG):
        restarted = start_provider(settings)
    restarted.stop()

    [skipped] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert log_context(skipped)["path"] == str(path)
    assert "EOF while parsing a string at line" in skipped.getMessage()
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in str(record.__dict__.get("ctx", {}))


def test_stored_file_loads_despite_new_checks(
    settings: LocalProviderSettings,
) -> None:
    """A file stored before the deploy checks were added still loads as it was."""
    folder = functions_folder(settings)
    folder.mkdir(parents=True)
    deployment = {
        "service": "old",
        "envProcess": "cat",
        "namespace": "openfaas-fn",
        "secrets": [],
        "limits": {"memory": "abc"},
        "requests": {"cpu": "-1"},
        "readOnlyRootFilesystem": "yes",
    }
    (folder / "old.openfaas-fn.json").write_text(
        json.dumps({"deployment": deployment, "created_at": "2024-01-01T00:00:00Z"})
    )

    running = start_provider(settings)
    try:
        with running.client() as client:
            status = client.get("/system/function/old")
            call = client.post("/function/old", content=b"still here")
    finally:
        running.stop()

    assert status.status_code == 200
    assert status.json()["limits"] == {"memory": "abc"}
    assert status.json()["requests"] == {"cpu": "-1"}
    assert status.json()["readOnlyRootFilesystem"] is True
    assert call.text == "still here"
