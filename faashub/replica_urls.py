"""Replica URLs of functions, so that a caller can invoke a replica directly.

A call that goes through the gateway makes two proxy hops (gateway, then
provider). In the queue-drain benchmark they cost about 40 % of the CPU time
per call. The provider reports where a function's replicas listen
(`GET /system/function-endpoints/NAME?namespace=NS`, which returns
`{"urls": [...], "ttl_s": ..., "exec_timeout_s": ...}`), and the gateway
forwards that route. `ReplicaUrlCache` keeps each report for the `ttl_s` it
carries, at most MAX_TTL_S, and hands out its replicas in turn. Two caches
are built on it:

* `ReplicaUrls` here, which the queue-worker (`queue_worker.handling`) and
  the event connectors (`connectors.core.invoker`) use. It requests reports
  from the gateway, with an Authorization header, and is keyed by
  `FunctionRef`. It also counts the calls that replicas received
  (`record_call`) and posts their number to the gateway's
  `/system/direct-invocations` every DIRECT_CALLS_REPORT_INTERVAL_S, so
  that the gateway's `invocationCount` includes them;
* `gateway.replica_urls.ReplicaUrls`, which the gateway's sync proxy uses to
  skip the provider's hop. It requests reports from the provider, is keyed
  by the function name as the caller wrote it, keeps a bounded number of
  reports and accepts only http:// and https:// URLs.

A direct call skips the provider, which applies the function's exec
timeout on its own route, so the caller applies it: `Replica.exec_timeout_s`
carries the report's `exec_timeout_s` (seconds, None for no limit or for a
provider that does not report it), and `exec_timeout_message` gives the
provider's text for a call that exceeds it.

`pick` (and `url_for`) returns None, so that the call takes its usual route,
in three cases. The report lists no URL (zero replicas, none responding yet, a
classic function, or a backend that reports none). The report failed, for
example with 404 for an unknown function. Or a failed report is less than
FAILED_REPORT_TTL_S old. `forget` drops a report after a URL refused the
connection. Lookups of one function share one request. This module does not
invoke functions (`queue_worker.invoke`, `connectors.core.invoker` and
`gateway.sync_proxy` do).
"""

import asyncio
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import aiohttp
import yarl

from faashub.logs import LimitedWarning
from faashub.names import FunctionRef

logger = logging.getLogger(__name__)

# How long one report request to the gateway may take, in seconds.
LOOKUP_TIMEOUT_S: Final = 5.0
# How long calls of a function take their usual route after the provider
# reported no replica URLs for it, or the report failed, in seconds.
FAILED_REPORT_TTL_S: Final = 5.0
# Maximum time a reported list of replica URLs is reused, whatever ttl_s the
# provider sent, in seconds. A replica that went away is noticed within this
# time even when no connection to it is refused.
MAX_TTL_S: Final = 30.0
# The gateway's route that counts calls sent straight to replicas. Its body
# is `{"NAME.NAMESPACE": COUNT, ...}`.
DIRECT_INVOCATIONS_PATH: Final = "/system/direct-invocations"
# Seconds between the first uncounted direct call and the report that
# carries it to the gateway.
DIRECT_CALLS_REPORT_INTERVAL_S: Final = 2.0
# Minimum seconds between two warnings about failed reports of direct calls.
DIRECT_CALLS_WARNING_INTERVAL_S: Final = 60.0

# The key of a cached report.
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Replica:
    """A reported replica: where to send a call, and how long it may run."""

    url: str
    """The base URL, without a trailing slash."""
    exec_timeout_s: float | None
    """The function's exec timeout in seconds, or None for no limit."""


@dataclass(slots=True)
class _Report:
    expires_at: float
    urls: tuple[str, ...]
    turn: Iterator[Replica] | None


def shorter_exec_timeout_s(replica: Replica, limit_s: float | None) -> float | None:
    """Return the replica's exec timeout if it ends a call before `limit_s`, else None.

    `limit_s` None means that the call has no other limit.
    """
    exec_timeout_s = replica.exec_timeout_s
    if exec_timeout_s is None or (limit_s is not None and exec_timeout_s >= limit_s):
        return None
    return exec_timeout_s


# Maximum number of call timeouts an ExecTimeouts keeps.
_MAX_CACHED_TIMEOUTS = 256


class ExecTimeouts:
    """aiohttp timeouts of direct calls, one per exec timeout, kept for reuse.

    Each timeout has the exec timeout as its total (None for no limit) and
    `sock_read_s` as its wait for each piece of the response. The few
    distinct values are kept, and the store starts over when it is full.
    """

    def __init__(self, *, sock_read_s: float | None = None) -> None:
        self._sock_read_s = sock_read_s
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def get(self, exec_timeout_s: float | None) -> aiohttp.ClientTimeout:
        """Return the timeout of a call with `exec_timeout_s`."""
        timeout = self._timeouts.get(exec_timeout_s)
        if timeout is None:
            if len(self._timeouts) >= _MAX_CACHED_TIMEOUTS:
                self._timeouts.clear()
            timeout = aiohttp.ClientTimeout(
                total=exec_timeout_s, sock_read=self._sock_read_s
            )
            self._timeouts[exec_timeout_s] = timeout
        return timeout


def exec_timeout_message(function: str, exec_timeout_s: float) -> str:
    """Return the 504 text for a call of `function` that exceeded its exec timeout.

    The provider's own route and every direct route send this text, so a
    caller sees the same message whichever route the call took.
    """
    return (
        f"Function {function} did not respond within its exec timeout of "
        f"{exec_timeout_s:g} s. Raise exec_timeout in its envVars if it needs "
        "longer, or set it to 0 for no timeout."
    )


class ReplicaUrlCache(Generic[K]):
    """A short-lived cache of each function's replica URLs, keyed by `K`.

    `server_url` is the gateway or provider that serves
    `/system/function-endpoints/`. `locate` returns the function name and
    namespace of a key for that request. `route` names the route calls
    take without a replica URL ("gateway" or "provider"), for the log.
    `authorization` is sent with each report request, never to a replica.
    With `max_reports`, a new key beyond that many reports first drops the
    expired ones, and all of them when none has expired. With
    `http_urls_only`, a report that lists a URL other than http:// or
    https:// fails as a whole.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        server_url: str,
        *,
        locate: Callable[[K], tuple[str, str]],
        route: str,
        timeout_s: float,
        authorization: str = "",
        max_reports: int | None = None,
        http_urls_only: bool = False,
        log: logging.Logger = logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._base_url = server_url.rstrip("/") + "/system/function-endpoints/"
        self._locate = locate
        self._route = route
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Authorization": authorization} if authorization else {}
        self._max_reports = max_reports
        self._http_urls_only = http_urls_only
        self._log = log
        self._clock = clock
        self._reports: dict[K, _Report] = {}
        self._pending: dict[K, asyncio.Task[_Report]] = {}

    async def pick(self, key: K) -> Replica | None:
        """Return the replica for the next call of `key`, or None.

        A failed report gives None, never an exception.
        """
        report = self._reports.get(key)
        if report is None or report.expires_at <= self._clock():
            report = await self._refresh(key)
        turn = report.turn
        if turn is None:
            return None
        return next(turn)

    async def url_for(self, key: K) -> str | None:
        """Return a replica's base URL for the next call of `key`, or None."""
        replica = await self.pick(key)
        return None if replica is None else replica.url

    def forget(self, key: K, url: str) -> None:
        """Drop the report of `key` after `url` refused a connection."""
        report = self._reports.get(key)
        if report is not None and url in report.urls:
            del self._reports[key]

    async def _refresh(self, key: K) -> _Report:
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._query(key))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded, so that one cancelled caller does not fail the others.
        report = await asyncio.shield(task)
        max_reports = self._max_reports
        if (
            max_reports is not None
            and len(self._reports) >= max_reports
            and key not in self._reports
        ):
            self._drop_expired(max_reports)
        self._reports[key] = report
        return report

    def _drop_expired(self, max_reports: int) -> None:
        now = self._clock()
        expired = [key for key, kept in self._reports.items() if kept.expires_at <= now]
        for key in expired:
            del self._reports[key]
        if len(self._reports) >= max_reports:
            # Every report is still fresh: start over rather than grow.
            self._reports.clear()

    async def _query(self, key: K) -> _Report:
        name, namespace = self._locate(key)
        url = yarl.URL(self._base_url + name).with_query(namespace=namespace)
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    # 404 is an unknown function, which the usual route
                    # reports properly. Another status is a provider that
                    # does not report replicas.
                    return self._failed(key, f"status {response.status}")
                document = json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return self._failed(key, str(exc) or type(exc).__name__)
        try:
            urls = tuple(self._checked_url(item) for item in document["urls"])
            ttl_s = float(document.get("ttl_s", FAILED_REPORT_TTL_S))
            exec_timeout_s = _exec_timeout_s(document.get("exec_timeout_s"))
        except (KeyError, TypeError, ValueError) as exc:
            return self._failed(key, f"unexpected report: {exc!r}")
        ttl_s = min(max(ttl_s, 0.0), MAX_TTL_S)
        replicas = [Replica(url, exec_timeout_s) for url in urls]
        turn = itertools.cycle(replicas) if replicas else None
        return _Report(self._clock() + ttl_s, urls, turn)

    def _checked_url(self, item: object) -> str:
        """Return a reported URL without a trailing slash.

        Raise ValueError for a URL other than http:// or https:// when
        `http_urls_only` is set.
        """
        if self._http_urls_only and (
            not isinstance(item, str) or not item.startswith(("http://", "https://"))
        ):
            raise ValueError(f"replica URL {item!r} is not an http:// or https:// URL")
        return str(item).rstrip("/")

    def _failed(self, key: K, reason: str) -> _Report:
        self._log.debug(
            "replica urls not reported; calls go through the %s: %s",
            self._route,
            reason,
            extra={"ctx": {"function": str(key)}},
        )
        return _Report(self._clock() + FAILED_REPORT_TTL_S, (), None)


def _exec_timeout_s(value: object) -> float | None:
    """Return a reported exec timeout in seconds; None and 0 mean no limit.

    Raise ValueError for a value that is not a number of seconds >= 0.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"invalid exec_timeout_s {value!r}: expected seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid exec_timeout_s {value!r}: expected 0 or more")
    return float(value) or None


class ReplicaUrls(ReplicaUrlCache[FunctionRef]):
    """The replica URL cache of the queue-worker and the connectors.

    It requests reports from the gateway at `gateway_url`, sending
    `authorization` with each request, and keeps one report for each
    function it calls.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        *,
        authorization: str = "",
        timeout_s: float = LOOKUP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        report_interval_s: float = DIRECT_CALLS_REPORT_INTERVAL_S,
    ) -> None:
        super().__init__(
            session,
            gateway_url,
            locate=_locate_ref,
            route="gateway",
            timeout_s=timeout_s,
            authorization=authorization,
            clock=clock,
        )
        self._direct_calls_url = gateway_url.rstrip("/") + DIRECT_INVOCATIONS_PATH
        self._report_interval_s = report_interval_s
        self._direct_calls: dict[FunctionRef, int] = {}
        # The task that waits for the next report, and the latest task that
        # waited or posts: `_report_later` clears the first before it posts.
        self._report_task: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._report_warnings = LimitedWarning(
            logger, interval_s=DIRECT_CALLS_WARNING_INTERVAL_S
        )

    def record_call(self, ref: FunctionRef) -> None:
        """Count one call of `ref` that a replica received, for the gateway.

        Call it inside the event loop. The count reaches the gateway within
        `report_interval_s`.
        """
        self._direct_calls[ref] = self._direct_calls.get(ref, 0) + 1
        if self._report_task is None:
            self._report_task = self._reporter = asyncio.get_running_loop().create_task(
                self._report_later()
            )

    async def close(self) -> None:
        """Report the calls counted since the last report, before the session closes.

        Call it once the last call has been recorded, while the session is
        still open. A report already being posted finishes first.
        """
        sleeping = self._report_task
        if sleeping is not None:
            sleeping.cancel()
        posting = self._reporter
        if posting is not None and not posting.done():
            await asyncio.wait({posting})
        if self._direct_calls:
            counts, self._direct_calls = self._direct_calls, {}
            await self._post_direct_calls(counts)

    async def _report_later(self) -> None:
        try:
            await asyncio.sleep(self._report_interval_s)
        finally:
            self._report_task = None
        counts, self._direct_calls = self._direct_calls, {}
        await self._post_direct_calls(counts)

    async def _post_direct_calls(self, counts: dict[FunctionRef, int]) -> None:
        """Post `counts` to the gateway; a failure drops them with a warning."""
        if self._session.closed:
            return
        document = {str(ref): count for ref, count in counts.items()}
        try:
            async with self._session.post(
                self._direct_calls_url,
                json=document,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        else:
            if status == 204:
                return
            error = f"status {status}"
        self._report_warnings.warning(
            "direct calls not reported to the gateway; its invocation counts miss them",
            ctx={"calls": sum(counts.values()), "error": error},
        )


def _locate_ref(ref: FunctionRef) -> tuple[str, str]:
    return ref.name, ref.namespace
