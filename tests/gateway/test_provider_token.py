"""How the gateway reports a provider that rejects its provider token.

The provider is the real local provider, served in a thread with its own
token, and the gateway gets a different token, or none.
"""

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from faashub import constants as shared
from faashub.settings import LocalProviderSettings
from gateway.provider_token import ProviderTokenRejections
from tests.gateway.conftest import GatewayFactory, wait_until_healthy
from tests.provider.conftest import RunningProvider, start_provider

pytestmark = pytest.mark.timeout(60)

PROVIDER_TOKEN = "provider-token-0123456789abcdef"
WRONG_TOKEN = "wrong-token-fedcba9876543210"
USER = "admin"
PASSWORD = "adminpw1234"


@pytest.fixture
async def real_provider(tmp_path: Path) -> AsyncIterator[RunningProvider]:
    """The local provider, which requires PROVIDER_TOKEN on its /system/ API."""
    token_file = tmp_path / "provider-token"
    token_file.write_text(PROVIDER_TOKEN)
    settings = LocalProviderSettings(
        state_dir=tmp_path / "provider-state", auth_token_file=token_file
    )
    running = await asyncio.to_thread(start_provider, settings)
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def start_with_token(
    start_gateway: GatewayFactory,
    nats_url: str,
    provider: RunningProvider,
    token_file: Path | None,
) -> str:
    """Start a gateway with basic auth in front of `provider` and return its URL."""
    gateway = await start_gateway(
        nats_url=nats_url,
        provider_url=provider.url,
        provider_token_file=token_file,
        auth_user=USER,
        auth_password=PASSWORD,
    )
    await wait_until_healthy(gateway.url)
    return gateway.url


def token_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.provider_token"]


def gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("gateway.") and r.levelno >= logging.WARNING
    ]


async def test_wrong_token_is_502(
    nats_url: str,
    start_gateway: GatewayFactory,
    real_provider: RunningProvider,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text(WRONG_TOKEN)
    url = await start_with_token(start_gateway, nats_url, real_provider, wrong_file)

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        async with httpx.AsyncClient(
            base_url=url, auth=(USER, PASSWORD), timeout=10
        ) as client:
            listing = await client.get("/system/functions")
            info = await client.get("/system/info")
            queued = await client.post("/async-function/echo", content=b"hi")
            metrics = await client.get("/metrics")
            health = await client.get("/healthz")

    for response in (listing, info, queued):
        assert response.status_code == 502, response.text
        assert "rejected the gateway's provider token" in response.text
        assert "provider_token_file" in response.text
        assert "--provider-token-file" in response.text
        assert real_provider.url in response.text
        assert WRONG_TOKEN not in response.text
        assert PROVIDER_TOKEN not in response.text
    assert listing.headers[shared.OPENFAAS_INTERNAL] == "gateway"
    assert info.headers[shared.OPENFAAS_INTERNAL] == "gateway"
    assert "GET /system/functions" in listing.text
    assert "GET /system/info" in info.text
    assert "GET /system/function/echo" in queued.text
    # /healthz stays 200, because sync invocations go to the provider's
    # /function/ route, which needs no token.
    assert health.status_code == 200
    assert metrics.status_code == 200

    # One WARNING for the four requests that reached the provider's /system/
    # API (the /metrics scrape lists namespaces first), and no other warning.
    warnings = gateway_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "gateway.provider_token"
    assert warnings[0].getMessage() == "provider rejected the gateway's provider token"
    assert len(token_records(caplog)) == 4
    for record in caplog.records:
        assert WRONG_TOKEN not in record.getMessage()
        assert WRONG_TOKEN not in repr(record.__dict__.get("ctx"))


async def test_right_token_is_200(
    nats_url: str,
    start_gateway: GatewayFactory,
    real_provider: RunningProvider,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "right-token"
    token_file.write_text(PROVIDER_TOKEN)
    url = await start_with_token(start_gateway, nats_url, real_provider, token_file)

    async with httpx.AsyncClient(
        base_url=url, auth=(USER, PASSWORD), timeout=10
    ) as client:
        listing = await client.get("/system/functions")
        info = await client.get("/system/info")

    assert listing.status_code == 200
    assert listing.json() == []
    assert info.status_code == 200


async def test_missing_token_names_setting(
    nats_url: str,
    start_gateway: GatewayFactory,
    real_provider: RunningProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await start_with_token(start_gateway, nats_url, real_provider, None)

    with caplog.at_level(logging.WARNING, logger="gateway"):
        async with httpx.AsyncClient(
            base_url=url, auth=(USER, PASSWORD), timeout=10
        ) as client:
            listing = await client.get("/system/namespaces")

    assert listing.status_code == 502
    assert "the gateway sends none" in listing.text
    assert "provider_token_file" in listing.text
    assert "is not set" in listing.text
    records = token_records(caplog)
    assert [r.getMessage() for r in records] == [
        "provider requires a token; provider_token_file is not set"
    ]


async def test_cli_message_for_wrong_token(
    nats_url: str,
    start_gateway: GatewayFactory,
    real_provider: RunningProvider,
    tmp_path: Path,
) -> None:
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text(WRONG_TOKEN)
    url = await start_with_token(start_gateway, nats_url, real_provider, wrong_file)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "faashub", "list", "--gateway", url],
        capture_output=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAASHUB_STATE_DIR": str(tmp_path),
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
            "FAASHUB_GATEWAY_USER": USER,
            "FAASHUB_GATEWAY_PASSWORD": PASSWORD,
        },
    )

    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "HTTP 502" in stderr
    assert "rejected the gateway's provider token" in stderr
    assert "provider_token_file" in stderr
    assert "Run 'faashub login'" not in stderr
    assert WRONG_TOKEN not in stderr


def test_rejection_warning_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    rejections = ProviderTokenRejections(
        "http://127.0.0.1:1/", token_sent=True, clock=lambda: now[0]
    )

    with caplog.at_level(logging.DEBUG, logger="gateway.provider_token"):
        first = rejections.rejected("GET /system/functions")
        now[0] += 59.0
        rejections.rejected("GET /system/info")
        now[0] += 1.0
        rejections.rejected("GET /system/functions")

    levels = [r.levelno for r in token_records(caplog)]
    assert levels == [logging.WARNING, logging.DEBUG, logging.WARNING]
    assert caplog.records[2].__dict__["ctx"]["repeats_held_back"] == 1
    assert caplog.records[0].__dict__["ctx"] == {
        "provider_url": "http://127.0.0.1:1",
        "request": "GET /system/functions",
    }
    assert "http://127.0.0.1:1 rejected" in str(first)
