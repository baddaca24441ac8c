"""`faashub.replica_urls.ReplicaUrlCache` against a real report server.

The server is a small aiohttp app on the loopback interface that responds to
`/system/function-endpoints/NAME` as the provider and the gateway do. These
tests cover the constructor parameters. The worker, connector and gateway
tests cover the calls that use the cache.
"""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from faashub.names import FunctionRef
from faashub.replica_urls import (
    DIRECT_INVOCATIONS_PATH,
    FAILED_REPORT_TTL_S,
    MAX_TTL_S,
    ExecTimeouts,
    Replica,
    ReplicaUrlCache,
    ReplicaUrls,
    shorter_exec_timeout_s,
)
from tests.conftest import LOOPBACK, wait_until

pytestmark = pytest.mark.timeout(20)


@dataclass
class ReportServer:
    """A report server that returns `reports[NAME]` and records each request."""

    reports: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path and query, Authorization header) of each request."""
    url: str = ""
    direct_calls: list[tuple[Any, str | None]] = field(default_factory=list)
    """(JSON body, Authorization header) of each report of direct calls."""
    direct_calls_status: int = 204

    async def count_direct_calls(self, request: web.Request) -> web.Response:
        self.direct_calls.append(
            (await request.json(), request.headers.get("Authorization"))
        )
        return web.Response(status=self.direct_calls_status)

    async def report(self, request: web.Request) -> web.Response:
        self.requests.append((request.path_qs, request.headers.get("Authorization")))
        name = request.match_info["name"]
        if name not in self.reports:
            return web.Response(status=404, text="not found")
        return web.json_response(self.reports[name])


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def server() -> AsyncIterator[ReportServer]:
    reports = ReportServer()
    app = web.Application()
    app.router.add_get("/system/function-endpoints/{name}", reports.report)
    app.router.add_post(DIRECT_INVOCATIONS_PATH, reports.count_direct_calls)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    reports.url = f"http://{LOOPBACK}:{port}/"
    yield reports
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def split_key(key: str) -> tuple[str, str]:
    name, _, namespace = key.partition("/")
    return name, namespace


def new_cache(
    session: aiohttp.ClientSession,
    server: ReportServer,
    clock: FakeClock,
    **options: Any,
) -> ReplicaUrlCache[str]:
    return ReplicaUrlCache(
        session,
        server.url,
        locate=split_key,
        route="provider",
        timeout_s=5.0,
        clock=clock,
        **options,
    )


async def test_urls_handed_out_in_turn(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    server.reports["echo"] = {"urls": ["http://a:1/", "http://b:2"], "ttl_s": 10}
    cache = new_cache(session, server, FakeClock())

    urls = [await cache.url_for("echo/team") for _ in range(3)]

    assert urls == ["http://a:1", "http://b:2", "http://a:1"]
    assert server.requests == [("/system/function-endpoints/echo?namespace=team", None)]


@pytest.mark.parametrize(
    ("report", "expected_url", "kept_s"),
    [
        pytest.param(
            {"urls": ["http://a:1"], "ttl_s": 3600},
            "http://a:1",
            MAX_TTL_S,
            id="ttl-capped",
        ),
        pytest.param(
            {"urls": ["http://a:1"], "ttl_s": 2},
            "http://a:1",
            2.0,
            id="ttl-reported",
        ),
        pytest.param(None, None, FAILED_REPORT_TTL_S, id="failed"),
    ],
)
async def test_report_kept_for_ttl(
    server: ReportServer,
    session: aiohttp.ClientSession,
    report: dict[str, Any] | None,
    expected_url: str | None,
    kept_s: float,
) -> None:
    if report is not None:
        server.reports["echo"] = report
    clock = FakeClock()
    cache = new_cache(session, server, clock)

    first = await cache.url_for("echo/")
    clock.now_s += kept_s - 0.1
    second = await cache.url_for("echo/")
    requests_within_ttl = len(server.requests)
    clock.now_s += 0.2
    await cache.url_for("echo/")

    assert first == expected_url
    assert second == expected_url
    assert requests_within_ttl == 1
    assert len(server.requests) == 2


async def test_forget_drops_report(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    server.reports["echo"] = {"urls": ["http://a:1"], "ttl_s": 10}
    cache = new_cache(session, server, FakeClock())

    url = await cache.url_for("echo/")
    cache.forget("echo/", "http://other:9")
    await cache.url_for("echo/")
    requests_after_other_url = len(server.requests)
    assert url is not None
    cache.forget("echo/", url)
    await cache.url_for("echo/")

    assert requests_after_other_url == 1
    assert len(server.requests) == 2


async def test_authorization_sent_to_server(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    server.reports["echo"] = {"urls": ["http://a:1"], "ttl_s": 10}
    cache = ReplicaUrls(
        session, server.url, authorization="Bearer secret", clock=FakeClock()
    )

    url = await cache.url_for(FunctionRef("echo", "team"))

    assert url == "http://a:1"
    assert server.requests == [
        ("/system/function-endpoints/echo?namespace=team", "Bearer secret")
    ]


@pytest.mark.parametrize(
    ("http_urls_only", "expected"),
    [
        pytest.param(False, "ftp://a:1", id="any-scheme"),
        pytest.param(True, None, id="http-only"),
    ],
)
async def test_scheme_check_follows_option(
    server: ReportServer,
    session: aiohttp.ClientSession,
    http_urls_only: bool,
    expected: str | None,
) -> None:
    server.reports["echo"] = {"urls": ["ftp://a:1"], "ttl_s": 10}
    cache = new_cache(session, server, FakeClock(), http_urls_only=http_urls_only)

    assert await cache.url_for("echo/") == expected


async def test_max_reports_drops_expired_first(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    server.reports["short"] = {"urls": ["http://s:1"], "ttl_s": 1}
    server.reports["long"] = {"urls": ["http://l:1"], "ttl_s": 10}
    server.reports["new"] = {"urls": ["http://n:1"], "ttl_s": 10}
    server.reports["last"] = {"urls": ["http://x:1"], "ttl_s": 10}
    clock = FakeClock()
    cache = new_cache(session, server, clock, max_reports=2)

    await cache.url_for("short/")
    await cache.url_for("long/")
    clock.now_s += 2
    # "short" has expired, so "new" takes its place and "long" stays.
    await cache.url_for("new/")
    await cache.url_for("long/")
    await cache.url_for("new/")
    requested_before_last = len(server.requests)
    # Both kept reports are fresh, so "last" replaces them.
    await cache.url_for("last/")
    await cache.url_for("long/")

    requested = [path.split("?")[0] for path, _ in server.requests]
    assert requested_before_last == 3
    assert requested == [
        "/system/function-endpoints/short",
        "/system/function-endpoints/long",
        "/system/function-endpoints/new",
        "/system/function-endpoints/last",
        "/system/function-endpoints/long",
    ]


async def test_max_reports_clears_when_all_fresh(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    for name in ("a", "b", "c"):
        server.reports[name] = {"urls": [f"http://{name}:1"], "ttl_s": 10}
    cache = new_cache(session, server, FakeClock(), max_reports=2)

    await cache.url_for("a/")
    await cache.url_for("b/")
    await cache.url_for("c/")
    await cache.url_for("c/")
    await cache.url_for("a/")

    requested = [path.split("?")[0] for path, _ in server.requests]
    assert requested == [
        "/system/function-endpoints/a",
        "/system/function-endpoints/b",
        "/system/function-endpoints/c",
        "/system/function-endpoints/a",
    ]


async def test_unbounded_without_max_reports(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    names = [f"f{index}" for index in range(50)]
    for name in names:
        server.reports[name] = {"urls": [f"http://{name}:1"], "ttl_s": 10}
    cache = new_cache(session, server, FakeClock())

    for name in names:
        await cache.url_for(f"{name}/")
    for name in names:
        await cache.url_for(f"{name}/")

    assert len(server.requests) == len(names)


async def test_failure_logged_with_route(
    server: ReportServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.replica_url_cache")
    caplog.set_level(logging.DEBUG, logger=log.name)
    server.reports["echo"] = {"ttl_s": 10}
    cache = new_cache(session, server, FakeClock(), log=log)

    assert await cache.url_for("echo/") is None

    [record] = [r for r in caplog.records if r.name == log.name]
    assert record.getMessage().startswith(
        "replica urls not reported; calls go through the provider: unexpected report"
    )
    assert "KeyError('urls')" in record.getMessage()
    assert record.__dict__["ctx"] == {"function": "echo/"}


@pytest.mark.parametrize(
    ("reported", "expected_s"),
    [
        pytest.param({"exec_timeout_s": 3}, 3.0, id="seconds"),
        pytest.param({"exec_timeout_s": 0.5}, 0.5, id="fraction"),
        pytest.param({"exec_timeout_s": None}, None, id="no-limit"),
        pytest.param({"exec_timeout_s": 0}, None, id="zero"),
        pytest.param({}, None, id="older-provider"),
    ],
)
async def test_exec_timeout_comes_with_replica(
    server: ReportServer,
    session: aiohttp.ClientSession,
    reported: dict[str, Any],
    expected_s: float | None,
) -> None:
    server.reports["echo"] = {"urls": ["http://a:1", "http://b:2"], **reported}
    cache = new_cache(session, server, FakeClock())

    replicas = [await cache.pick("echo/") for _ in range(2)]

    assert replicas == [
        Replica("http://a:1", expected_s),
        Replica("http://b:2", expected_s),
    ]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-1, id="negative"),
        pytest.param("3", id="text"),
        pytest.param(True, id="boolean"),
        pytest.param(float("inf"), id="infinite"),
    ],
)
async def test_invalid_exec_timeout_fails_report(
    server: ReportServer, session: aiohttp.ClientSession, value: object
) -> None:
    server.reports["echo"] = {"urls": ["http://a:1"], "exec_timeout_s": value}
    cache = new_cache(session, server, FakeClock())

    assert await cache.pick("echo/") is None


async def test_direct_calls_reported_to_gateway(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    cache = ReplicaUrls(
        session, server.url, authorization="Basic abc", report_interval_s=0.1
    )
    echo = FunctionRef("echo", "team")

    for _ in range(3):
        cache.record_call(echo)
    cache.record_call(FunctionRef("other", "openfaas-fn"))
    await wait_until(lambda: len(server.direct_calls) == 1)
    cache.record_call(echo)
    await wait_until(lambda: len(server.direct_calls) == 2)

    assert server.direct_calls == [
        ({"echo.team": 3, "other.openfaas-fn": 1}, "Basic abc"),
        ({"echo.team": 1}, "Basic abc"),
    ]


async def test_close_reports_calls_not_yet_reported(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    cache = ReplicaUrls(session, server.url, report_interval_s=60.0)

    cache.record_call(FunctionRef("echo", "team"))
    cache.record_call(FunctionRef("echo", "team"))
    await cache.close()

    assert server.direct_calls == [({"echo.team": 2}, None)]


async def test_close_without_calls_posts_nothing(
    server: ReportServer, session: aiohttp.ClientSession
) -> None:
    cache = ReplicaUrls(session, server.url, report_interval_s=0.05)
    cache.record_call(FunctionRef("echo", "team"))
    await wait_until(lambda: len(server.direct_calls) == 1)

    await cache.close()

    assert len(server.direct_calls) == 1


async def test_failed_direct_calls_report_warns(
    server: ReportServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.direct_calls_status = 500
    cache = ReplicaUrls(session, server.url, report_interval_s=0.05)

    with caplog.at_level(logging.WARNING, logger="faashub.replica_urls"):
        cache.record_call(FunctionRef("echo", "team"))
        await wait_until(lambda: len(server.direct_calls) == 1)
        await wait_until(lambda: bool(caplog.records))

    [record] = caplog.records
    assert "direct calls not reported to the gateway" in record.getMessage()
    assert record.__dict__["ctx"] == {"calls": 1, "error": "status 500"}


@pytest.mark.parametrize(
    ("exec_timeout_s", "limit_s", "applied"),
    [
        pytest.param(3.0, 300.0, 3.0, id="shorter"),
        pytest.param(3.0, None, 3.0, id="no-other-limit"),
        pytest.param(300.0, 300.0, None, id="equal"),
        pytest.param(600.0, 300.0, None, id="longer"),
        pytest.param(None, 300.0, None, id="none-reported"),
    ],
)
def test_shorter_exec_timeout_cases(
    exec_timeout_s: float | None, limit_s: float | None, applied: float | None
) -> None:
    replica = Replica("http://127.0.0.1:1", exec_timeout_s)

    assert shorter_exec_timeout_s(replica, limit_s) == applied


def test_exec_timeouts_reused_per_value() -> None:
    timeouts = ExecTimeouts(sock_read_s=30.0)

    first = timeouts.get(3.0)

    assert timeouts.get(3.0) is first
    assert first.total == 3.0
    assert first.sock_read == 30.0
    assert timeouts.get(None).total is None
    assert ExecTimeouts().get(5.0).sock_read is None
