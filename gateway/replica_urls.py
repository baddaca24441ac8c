"""Replica URLs of functions, so the sync proxy can skip the provider's hop.

Through the provider, a sync call makes two proxy hops (gateway, then
provider), and each hop costs about as much CPU as the other. The provider
reports where a function's replicas listen (`GET
/system/function-endpoints/NAME?namespace=NS`, answering `{"urls": [...],
"ttl_s": ...}`). This cache keeps each report for the `ttl_s` it carries,
capped at MAX_TTL_S, and hands out its URLs in turn.

`url_for` returns None, so that the call goes to the provider's
`/function/` as before, in three cases. The report lists no URL: the
function has zero replicas (the provider's own route scales it up), is a
classic function, or its backend reports none. The report failed, for
example with 404 for an unknown function. Or a failed report is less than
FAILED_REPORT_TTL_S old.
`forget` drops a report after one of its URLs refused a connection. Lookups
of one function share one request. Cached reports are keyed by the function
reference as the caller wrote it (`NAME` or `NAME.NS`), and at most
MAX_REPORTS are kept. This module does not send invocations
(`gateway.sync_proxy` does).
"""

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import aiohttp
import yarl

from gateway import constants

logger = logging.getLogger(__name__)

# Upper bound on a report's lifetime, whatever ttl_s the provider sends, so a
# replica that went away is noticed within this time even without a refusal.
MAX_TTL_S: Final = 30.0
# How long a failed or malformed report keeps calls on the provider's route
# before the gateway requests a new one.
FAILED_REPORT_TTL_S: Final = 5.0
# Reports kept at most. Each distinct name a caller sends costs one entry,
# so the cache is bounded against callers that invent names.
MAX_REPORTS: Final = 4096


@dataclass(slots=True)
class _Report:
    expires_at: float
    urls: tuple[str, ...]
    turn: Iterator[str] | None


class ReplicaUrls:
    """A short-lived cache of each function's replica URLs, in front of the provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        timeout_s: float = constants.LOOKUP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._provider_url = provider_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._reports: dict[str, _Report] = {}
        self._pending: dict[str, asyncio.Task[_Report]] = {}

    async def url_for(self, function: str) -> str | None:
        """Return a replica's base URL for the next call of `function`, or None.

        `function` is `NAME` or `NAME.NAMESPACE`, already validated. This
        coroutine does not raise on provider errors: they give None.
        """
        report = self._reports.get(function)
        if report is None or report.expires_at <= self._clock():
            report = await self._refresh(function)
        turn = report.turn
        if turn is None:
            return None
        return next(turn)

    def forget(self, function: str, url: str) -> None:
        """Drop the report of `function` after `url` refused a connection."""
        report = self._reports.get(function)
        if report is not None and url in report.urls:
            del self._reports[function]

    async def _refresh(self, function: str) -> _Report:
        task = self._pending.get(function)
        if task is None:
            task = asyncio.create_task(self._query(function))
            self._pending[function] = task
            task.add_done_callback(lambda _: self._pending.pop(function, None))
        # Shielded, so that one caller that goes away does not fail the others.
        report = await asyncio.shield(task)
        if len(self._reports) >= MAX_REPORTS and function not in self._reports:
            self._drop_expired()
        self._reports[function] = report
        return report

    def _drop_expired(self) -> None:
        now = self._clock()
        for name in [
            name for name, kept in self._reports.items() if kept.expires_at <= now
        ]:
            del self._reports[name]
        if len(self._reports) >= MAX_REPORTS:
            # Every report is still fresh: start over rather than grow.
            self._reports.clear()

    async def _query(self, function: str) -> _Report:
        name, dot, namespace = function.rpartition(".")
        if not dot:
            name, namespace = function, ""
        url = yarl.URL(
            f"{self._provider_url}/system/function-endpoints/{name}"
        ).with_query(namespace=namespace)
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    # 404 is an unknown function, which the provider's route
                    # reports properly. Another status is a provider that does
                    # not report replicas.
                    return self._failed(function, f"status {response.status}")
                document = json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return self._failed(function, str(exc) or type(exc).__name__)
        try:
            urls = tuple(_checked_url(item) for item in document["urls"])
            ttl_s = float(document.get("ttl_s", FAILED_REPORT_TTL_S))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return self._failed(function, f"unexpected report: {exc}")
        ttl_s = min(max(ttl_s, 0.0), MAX_TTL_S)
        turn = itertools.cycle(urls) if urls else None
        return _Report(self._clock() + ttl_s, urls, turn)

    def _failed(self, function: str, reason: str) -> _Report:
        logger.debug(
            "replica urls not reported; calls go through the provider: %s",
            reason,
            extra={"ctx": {"function": function}},
        )
        return _Report(self._clock() + FAILED_REPORT_TTL_S, (), None)


def _checked_url(item: object) -> str:
    """Return a report's URL without a trailing slash; raise ValueError unless HTTP."""
    if not isinstance(item, str) or not item.startswith(("http://", "https://")):
        raise ValueError(f"replica URL {item!r} is not an http:// or https:// URL")
    return item.rstrip("/")
