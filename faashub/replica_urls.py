"""Replica URLs of functions, so gateway clients can invoke a replica directly.

The queue-worker (`queue_worker.handling`) and the event connectors
(`connectors.core.invoker`) use this cache. The gateway has its own, keyed
and bounded differently, in front of the provider (`gateway.replica_urls`).

Through the gateway, a call makes two proxy hops (gateway, then provider),
which cost the queue-drain benchmark about 40 % of its CPU time per call.
The provider reports where a function's replicas listen
(`GET /system/function-endpoints/NAME?namespace=NS`, which the gateway
forwards). This cache keeps each report for the `ttl_s` it carries, at most
MAX_TTL_S, and hands out its URLs in turn.

`url_for` returns None, so that the call goes through the gateway as before,
in three cases. The report lists no URL (zero replicas, none responding yet,
a classic function, or a backend that reports none). The report failed. Or
a failed report is less than FAILED_REPORT_TTL_S old. `forget` drops a
report after a URL refused the connection. Lookups of one function share one
request. This module does not invoke functions (`queue_worker.invoke` and
`connectors.core.invoker` do).
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

from faashub.names import FunctionRef

logger = logging.getLogger(__name__)

# How long one report request to the gateway may take, in seconds.
LOOKUP_TIMEOUT_S: Final = 5.0
# How long calls of a function go through the gateway after the provider
# reported no replica URLs for it, or the report failed, in seconds.
FAILED_REPORT_TTL_S: Final = 5.0
# Maximum time a reported list of replica URLs is reused, whatever ttl_s the
# provider sent, in seconds.
MAX_TTL_S: Final = 30.0


@dataclass(slots=True)
class _Report:
    expires_at: float
    urls: tuple[str, ...]
    turn: Iterator[str] | None


class ReplicaUrls:
    """A short-lived cache of each function's replica URLs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        *,
        authorization: str = "",
        timeout_s: float = LOOKUP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        # Sent to the gateway's /system route only, never to a replica.
        self._headers = {"Authorization": authorization} if authorization else {}
        self._base_url = gateway_url.rstrip("/") + "/system/function-endpoints/"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._reports: dict[FunctionRef, _Report] = {}
        self._pending: dict[FunctionRef, asyncio.Task[_Report]] = {}

    async def url_for(self, ref: FunctionRef) -> str | None:
        """Return a replica's base URL for the next call of `ref`, or None."""
        report = self._reports.get(ref)
        if report is None or report.expires_at <= self._clock():
            task = self._pending.get(ref)
            if task is None:
                task = asyncio.create_task(self._query(ref))
                self._pending[ref] = task
                task.add_done_callback(lambda _: self._pending.pop(ref, None))
            # Shielded, so that one cancelled caller does not fail the others.
            report = await asyncio.shield(task)
            self._reports[ref] = report
        if report.turn is None:
            return None
        return next(report.turn)

    def forget(self, ref: FunctionRef, url: str) -> None:
        """Drop the report of `ref` after `url` refused a connection."""
        report = self._reports.get(ref)
        if report is not None and url in report.urls:
            del self._reports[ref]

    async def _query(self, ref: FunctionRef) -> _Report:
        url = yarl.URL(self._base_url + ref.name).with_query(namespace=ref.namespace)
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout
            ) as response:
                if response.status != 200:
                    # 404 is a function deleted meanwhile, which the gateway
                    # path reports properly. Any other status is a provider
                    # that does not report replicas.
                    return self._failed(ref, f"status {response.status}")
                document = json.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return self._failed(ref, str(exc) or type(exc).__name__)
        try:
            urls = tuple(str(item).rstrip("/") for item in document["urls"])
            ttl_s = float(document.get("ttl_s", FAILED_REPORT_TTL_S))
        except (KeyError, TypeError, ValueError) as exc:
            return self._failed(ref, f"unexpected report: {exc!r}")
        ttl_s = min(max(ttl_s, 0.0), MAX_TTL_S)
        turn = itertools.cycle(urls) if urls else None
        return _Report(self._clock() + ttl_s, urls, turn)

    def _failed(self, ref: FunctionRef, reason: str) -> _Report:
        logger.debug(
            "replica urls not reported; calls go through the gateway: %s",
            reason,
            extra={"ctx": {"function": str(ref)}},
        )
        return _Report(self._clock() + FAILED_REPORT_TTL_S, (), None)
