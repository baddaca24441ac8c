"""The management API `/system/...`, `/healthz` and the OpenAPI document."""

import json
import logging
import platform
from collections.abc import Callable

import httpx
import pytest
from aiohttp import web

from faashub import __version__
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import (
    PROVIDER_INFO,
    FakeProvider,
    GatewayFactory,
    NatsServer,
    wait_until_healthy,
)

pytestmark = pytest.mark.timeout(30)


async def test_system_forwards_request(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.post(
        "/system/functions?namespace=team-a&x=%20y",
        json={"service": "echo", "image": "echo:1"},
        headers={"X-Custom": "value"},
    )

    assert response.status_code == 202
    assert response.headers["X-Provider"] == "fake"
    assert response.json() == {
        "method": "POST",
        "path": "/system/functions",
        "query": "namespace=team-a&x=%20y",
        "body": json.dumps(
            {"service": "echo", "image": "echo:1"}, separators=(",", ":")
        ),
    }
    received = provider.received[0]
    assert received.headers["X-Custom"] == "value"
    assert received.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        pytest.param("/system/functions?namespace=Team_A", "'Team_A'", id="upper"),
        pytest.param(
            "/system/logs?name=echo&namespace=bad.ns", "'bad.ns'", id="logs-dot"
        ),
        pytest.param(
            "/system/secrets?namespace=openfaas-fn&namespace=x_y", "'x_y'", id="second"
        ),
        pytest.param(
            "/system/functions?namespace=" + "a" * 300,
            "'" + "a" * 80 + "...'",
            id="long-cut",
        ),
    ],
)
async def test_system_invalid_namespace_query_400(
    client: httpx.AsyncClient, provider: FakeProvider, path: str, shown: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 400
    assert response.text.startswith(f"Invalid namespace {shown}: use at most 63 ")
    assert "a" * 81 not in response.text
    assert provider.received == []


async def test_system_valid_namespace_query_forwarded(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.get("/system/functions?namespace=team-a&namespace=")

    # The fake provider returns 202 for every /system/ request.
    assert response.status_code == 202, response.text
    assert provider.received[0].query == "namespace=team-a&namespace="


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_system_keeps_method(
    client: httpx.AsyncClient, provider: FakeProvider, method: str
) -> None:
    response = await client.request(method, "/system/secrets", content=b"{}")

    assert response.status_code == 202
    assert provider.received[0].method == method
    assert provider.received[0].path == "/system/secrets"


async def test_system_streams_logs(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    async with client.stream("GET", "/system/logs?name=echo&follow=true") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        lines = response.aiter_lines()
        # The first line arrives before the provider has sent the second.
        assert json.loads(await anext(lines)) == {"text": "first"}
        provider.release.set()
        rest = [json.loads(line) async for line in lines if line]

    assert rest == [{"text": "second"}]
    assert provider.received[0].query == "name=echo&follow=true"


async def test_system_stopped_provider_502(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(nats_url=nats_url, provider_url=dead_url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        listed = await http_client.get("/system/functions")
        info = await http_client.get("/system/info")

    assert listed.status_code == 502
    assert dead_url in listed.text
    assert listed.headers["X-OpenFaaS-Internal"] == "gateway"
    assert info.status_code == 502
    assert dead_url in info.text


async def test_stopped_provider_warns_once_per_interval(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(nats_url=nats_url, provider_url=dead_url)

    with caplog.at_level(logging.DEBUG, logger="gateway.system"):
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            answers = [await http_client.get("/system/functions") for _ in range(5)]

    assert [answer.status_code for answer in answers] == [502] * 5
    lines = [r for r in caplog.records if r.getMessage() == "cannot reach provider"]
    assert [r.levelno for r in lines] == [logging.WARNING] + [logging.DEBUG] * 4


async def test_system_info_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/system/info")

    assert response.status_code == 200
    assert response.json() == {
        "provider": PROVIDER_INFO,
        "version": {"release": __version__, "sha": "", "commit_message": ""},
        "arch": platform.machine(),
    }


async def test_healthz_waits_for_nats(
    nats_server_factory: Callable[..., NatsServer], start_gateway: GatewayFactory
) -> None:
    nats_server = nats_server_factory()
    gateway = await start_gateway(nats_url=nats_server.url)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        before = await http_client.get("/healthz")
        nats_server.start()
        await wait_until_healthy(gateway.url)
        after = await http_client.get("/healthz")

    assert before.status_code == 503
    assert nats_server.url in before.text
    assert after.status_code == 200
    assert after.text == "OK"


async def test_healthz_rejects_post(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz")

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_root_redirects_to_console(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, "/")

    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


async def test_openapi_lists_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    docs_page = await client.get("/docs")

    paths = document["paths"]
    for path in (
        "/system/info",
        "/system/{path}",
        "/function/{name}",
        "/function/{name}/{path}",
        "/async-function/{name}",
        "/async-calls/{call_id}",
        "/system/dead-letters",
        "/system/dead-letters/redrive",
        "/system/dead-letters/{call_id}",
        "/healthz",
    ):
        assert path in paths, path
    assert set(paths["/async-function/{name}"]) == {
        "get",
        "post",
        "put",
        "patch",
        "delete",
    }
    assert set(paths["/async-calls/{call_id}"]) == {"get", "delete"}
    assert docs_page.status_code == 200


async def test_logs_go_to_logs_provider_url(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    queries: list[str] = []

    async def logs(request: web.Request) -> web.Response:
        queries.append(request.query_string)
        return web.Response(
            text='{"text":"from the log provider"}\n',
            content_type="application/x-ndjson",
        )

    app = web.Application()
    app.router.add_get("/system/logs", logs)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        gateway = await start_gateway(
            nats_url=nats_url, logs_provider_url=f"http://{LOOPBACK}:{port}/"
        )
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            logged = await http_client.get("/system/logs?name=echo&tail=5")
            secrets = await http_client.get("/system/secrets")
    finally:
        await runner.cleanup()

    assert logged.status_code == 200
    assert logged.json() == {"text": "from the log provider"}
    assert queries == ["name=echo&tail=5"]
    assert secrets.status_code == 202  # the fake provider accepts everything
    assert [received.path for received in provider.received] == ["/system/secrets"]
