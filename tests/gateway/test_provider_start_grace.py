"""How the gateway logs a provider it cannot reach while the provider starts."""

import asyncio
import logging

import httpx
import pytest

from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(30)


def system_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "gateway.system"]


async def test_unreachable_provider_within_grace_is_debug(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(
        nats_url=nats_url, provider_url=dead_url, provider_start_grace_s=30.0
    )

    with caplog.at_level(logging.DEBUG, logger="gateway.system"):
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            namespaces = await http_client.get("/system/namespaces")
            info = await http_client.get("/system/info")

    assert namespaces.status_code == 502
    assert dead_url in namespaces.text
    assert info.status_code == 502
    records = system_records(caplog)
    assert [record.levelno for record in records] == [logging.DEBUG] * 2
    assert {record.getMessage() for record in records} == {"cannot reach provider yet"}


async def test_unreachable_provider_after_grace_warns(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(
        nats_url=nats_url, provider_url=dead_url, provider_start_grace_s=1.0
    )

    with caplog.at_level(logging.DEBUG, logger="gateway.system"):
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            within = await http_client.get("/system/functions")
            await asyncio.sleep(1.1)
            after = await http_client.get("/system/functions")

    assert within.status_code == 502
    assert after.status_code == 502
    records = system_records(caplog)
    assert [record.levelno for record in records] == [logging.DEBUG, logging.WARNING]
    assert records[1].getMessage() == "cannot reach provider"
