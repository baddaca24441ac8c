"""Gateway metrics: OpenFaaS names at /metrics, and invocationCount in listings."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from faashub import constants as shared
from gateway import metrics as gateway_metrics
from gateway.metrics import OTHER_FUNCTIONS_LABEL, GatewayMetrics
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import FakeProvider, GatewayFactory, wait_until_healthy

pytestmark = pytest.mark.timeout(30)

ECHO = "echo.openfaas-fn"
MISSING = "missing.openfaas-fn"
OTHER = OTHER_FUNCTIONS_LABEL


class ListingProvider(FakeProvider):
    """The fake provider, plus a function listing and namespaces."""

    listing: list[dict[str, object]]
    listings = 0

    async def _system(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/system/functions":
            self.listings += 1
            return web.json_response(self.listing)
        if request.method == "GET" and request.path == "/system/namespaces":
            return web.json_response([shared.DEFAULT_NAMESPACE])
        return await super()._system(request)

    async def _function(self, request: web.Request) -> web.StreamResponse:
        # Names that start with `nosuch` get the provider's 404, as `missing`.
        if request.match_info["tail"].startswith("nosuch"):
            return web.Response(status=404, text="function not found")
        return await super()._function(request)


@pytest.fixture
async def provider() -> AsyncIterator[ListingProvider]:
    fake = ListingProvider()
    fake.deploy("echo")
    fake.listing = [
        {
            "name": "echo",
            "namespace": "openfaas-fn",
            "replicas": 2,
            "invocationCount": 7,
        },
        {"name": "idle", "replicas": 1, "invocationCount": 4},
        # The local provider leaves replicas out at 0, as Go's omitempty does.
        {"name": "scaled-down", "invocationCount": 0},
    ]
    runner = web.AppRunner(fake.build_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    fake.url = f"http://{LOOPBACK}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of an exposition text by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def labels(function: str, code: str | None = None) -> tuple[tuple[str, str], ...]:
    pairs = [("function_name", function)]
    if code is not None:
        pairs.append(("code", code))
    return tuple(sorted(pairs))


async def test_sync_calls_counted_by_name_and_code(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        assert (await client.post("/function/echo", content=b"x")).status_code == 201
    assert (await client.get("/function/echo.openfaas-fn/path")).status_code == 201
    assert (await client.get("/function/missing")).status_code == 404
    assert (await client.get("/function/bad..name")).status_code == 400

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("gateway_function_invocation_total", labels(ECHO, "201"))] == 4
    assert found[("gateway_function_invocation_started", labels(ECHO))] == 4
    assert found[("gateway_functions_seconds_count", labels(ECHO, "201"))] == 4
    assert found[("gateway_functions_seconds_sum", labels(ECHO, "201"))] > 0
    # `missing` is in no listing and got the provider's 404: not a function.
    assert ("gateway_function_invocation_total", labels(MISSING, "404")) not in found
    assert found[("gateway_function_invocation_total", labels(OTHER, "404"))] == 1
    assert found[("gateway_function_invocation_started", labels(OTHER))] == 1
    assert not any("bad" in str(key) for key in found)


async def test_upstream_failure_counted_with_gateway_status(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, provider_url=f"http://{LOOPBACK}:{free_port()}"
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        assert (await client.get("/function/echo")).status_code == 503
        response = await client.get("/metrics")

    # The replica counts cannot be listed, and the scrape still succeeds. The
    # gateway made the 503, so it cannot tell that `echo` exists.
    assert response.status_code == 200
    found = samples(response.text)
    assert found[("gateway_function_invocation_total", labels(OTHER, "503"))] == 1
    assert ("gateway_function_invocation_total", labels(ECHO, "503")) not in found
    assert not any(name == "gateway_service_count" for name, _ in found)


async def test_service_count_from_listing(client: httpx.AsyncClient) -> None:
    found = samples((await client.get("/metrics")).text)

    assert found[("gateway_service_count", labels(ECHO))] == 2
    assert found[("gateway_service_count", labels("idle.openfaas-fn"))] == 1
    assert found[("gateway_service_count", labels("scaled-down.openfaas-fn"))] == 0


async def test_listing_gets_gateway_invocation_count(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await client.post("/function/echo", content=b"x")
    await client.get("/function/missing")

    response = await client.get("/system/functions")

    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(response.content))
    by_name = {entry["name"]: entry for entry in response.json()}
    assert by_name["echo"]["invocationCount"] == 3
    assert by_name["echo"]["replicas"] == 2
    # Never called through the gateway: the provider's own count stays.
    assert by_name["idle"]["invocationCount"] == 4


async def test_function_status_gets_listing_count(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await client.post("/function/echo", content=b"x")

    status = await client.get("/system/function/echo")
    listing = await client.get("/system/functions")

    assert status.status_code == 200
    assert status.headers["content-length"] == str(len(status.content))
    assert status.json()["invocationCount"] == 3
    by_name = {entry["name"]: entry for entry in listing.json()}
    assert by_name["echo"]["invocationCount"] == 3


async def test_direct_invocations_added_to_counts(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/function/echo", content=b"x")

    reported = await client.post(
        "/system/direct-invocations",
        json={"echo.openfaas-fn": 5, "idle": 2},
    )
    status = await client.get("/system/function/echo")
    listing = await client.get("/system/functions")
    found = samples((await client.get("/metrics")).text)

    assert reported.status_code == 204
    assert status.json()["invocationCount"] == 6
    by_name = {entry["name"]: entry for entry in listing.json()}
    assert by_name["echo"]["invocationCount"] == 6
    assert by_name["idle"]["invocationCount"] == 2
    direct = "faashub_gateway_direct_invocations_total"
    assert found[(direct, labels(ECHO))] == 5
    assert found[(direct, labels("idle.openfaas-fn"))] == 2
    assert found[("gateway_function_invocation_total", labels(ECHO, "201"))] == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(b"[1]", "must be a JSON object", id="list"),
        pytest.param(b"{", "must be a JSON object", id="not-json"),
        pytest.param(b'{"Bad_Name": 1}', "Invalid function 'Bad_Name'", id="name"),
        pytest.param(b'{"echo": 0}', "Invalid count 0", id="zero"),
        pytest.param(b'{"echo": 1.5}', "Invalid count 1.5", id="fraction"),
        pytest.param(b'{"echo": true}', "Invalid count True", id="boolean"),
    ],
)
async def test_direct_invocations_invalid_body(
    client: httpx.AsyncClient, body: bytes, problem: str
) -> None:
    response = await client.post("/system/direct-invocations", content=body)
    found = samples((await client.get("/metrics")).text)

    assert response.status_code == 400
    assert problem in response.text
    assert not any(
        name == "faashub_gateway_direct_invocations_total" for name, _ in found
    )


async def test_metrics_rejects_post(client: httpx.AsyncClient) -> None:
    response = await client.post("/metrics")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_service_count_drops_removed_functions() -> None:
    metrics = GatewayMetrics()
    metrics.set_service_counts({"a.ns": 1, "b.ns": 3}, complete=True)
    metrics.set_service_counts({"b.ns": 2}, complete=True)

    found = samples(metrics.render()[0].decode())

    assert ("gateway_service_count", labels("a.ns")) not in found
    assert found[("gateway_service_count", labels("b.ns"))] == 2


def test_counts_summed_over_codes() -> None:
    metrics = GatewayMetrics()
    metrics.invocation_finished("fn", 200, 0.01, function_responded=True)
    metrics.invocation_finished("fn.openfaas-fn", 500, 0.02, function_responded=True)
    metrics.invocation_finished("other.team", 200, 0.03, function_responded=True)

    counts = metrics.invocation_counts()

    assert counts == {"fn.openfaas-fn": 2.0, "other.team": 1.0}


async def test_concurrent_scrapes_list_once(
    client: httpx.AsyncClient, provider: ListingProvider
) -> None:
    responses = await asyncio.gather(*(client.get("/metrics") for _ in range(5)))

    assert [response.status_code for response in responses] == [200] * 5
    assert provider.listings == 1


async def test_made_up_names_add_no_series(client: httpx.AsyncClient) -> None:
    names = [f"nosuch{index:04d}" for index in range(200)]
    for name in names:
        assert (await client.post(f"/function/{name}")).status_code == 404
    assert (await client.get("/function/nosuch.team-a")).status_code == 404

    response = await client.get("/metrics")

    found = samples(response.text)
    function_labels = {
        dict(label_pairs)["function_name"]
        for name, label_pairs in found
        if name.startswith("gateway_function")
    }
    assert function_labels == {OTHER}
    assert found[("gateway_function_invocation_total", labels(OTHER, "404"))] == 201
    assert found[("gateway_function_invocation_started", labels(OTHER))] == 201
    assert len(response.content) < 20_000
    assert "_created" not in response.text


async def test_listed_function_own_404_counted(
    client: httpx.AsyncClient, provider: ListingProvider
) -> None:
    provider.listing.append({"name": "missing", "replicas": 1})
    await client.get("/metrics")  # the scrape lists the functions

    for _ in range(2):
        assert (await client.get("/function/missing")).status_code == 404
    found = samples((await client.get("/metrics")).text)

    assert found[("gateway_function_invocation_total", labels(MISSING, "404"))] == 2
    assert found[("gateway_function_invocation_started", labels(MISSING))] == 2
    assert ("gateway_function_invocation_total", labels(OTHER, "404")) not in found


async def test_caller_leaving_counted_499(
    client: httpx.AsyncClient, provider: ListingProvider
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/function/slow", content=b"x", timeout=0.5)

    # The function never responds (`release` is not set), so a 499 proves
    # that the gateway stopped waiting for it.
    for _ in range(50):
        found = samples((await client.get("/metrics")).text)
        key = ("gateway_function_invocation_total", labels(OTHER, "499"))
        if key in found:
            break
        await asyncio.sleep(0.1)
    assert found[key] == 1
    assert not any(
        dict(pairs).get("code") == "200"
        for name, pairs in found
        if "slow" in str(pairs)
    )
    assert not provider.release.is_set()


def test_function_labels_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_metrics, "MAX_FUNCTION_LABELS", 3)
    metrics = GatewayMetrics()
    for index in range(5):
        metrics.invocation_finished(
            f"fn{index}", 200, 0.01, function_responded=True, start_counted=False
        )

    found = samples(metrics.render()[0].decode())

    for index in range(3):
        label = labels(f"fn{index}.openfaas-fn", "200")
        assert found[("gateway_function_invocation_total", label)] == 1
    assert found[("gateway_function_invocation_total", labels(OTHER, "200"))] == 2
    assert found[("gateway_function_invocation_started", labels(OTHER))] == 2


def test_label_sets_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_metrics, "MAX_INVOCATION_LABEL_SETS", 4)
    metrics = GatewayMetrics()
    for code in range(200, 210):
        metrics.invocation_finished("fn", code, 0.01, function_responded=True)

    found = samples(metrics.render()[0].decode())

    per_function = [
        pairs
        for name, pairs in found
        if name == "gateway_function_invocation_total"
        and dict(pairs)["function_name"] == "fn.openfaas-fn"
    ]
    assert len(per_function) == 4
    assert found[("gateway_function_invocation_total", labels(OTHER, "209"))] == 1
