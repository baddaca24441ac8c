"""Replica URLs of functions, so the sync proxy can skip the provider's hop.

Through the provider, a sync call makes two proxy hops (gateway, then
provider), and each hop costs about as much CPU as the other. This cache
requests from the provider where a function's replicas listen, with the
mechanism of `faashub.replica_urls.ReplicaUrlCache`: reports kept for their
`ttl_s`, at most MAX_TTL_S, failed reports kept for FAILED_REPORT_TTL_S, URLs
handed out in turn.

`url_for` returns None, so that the call goes to the provider's
`/function/` as before, when the report lists no URL (the provider's own
route scales a function at zero replicas up) or failed (for example with 404
for an unknown function). Reports are keyed by the function reference as the
caller wrote it (`NAME` or `NAME.NS`), and at most MAX_REPORTS are kept. A
report that lists a URL other than http:// or https:// fails as a whole, so
the gateway never proxies to another scheme. This module does not send
invocations (`gateway.sync_proxy` does).
"""

import logging
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from faashub.replica_urls import FAILED_REPORT_TTL_S, MAX_TTL_S, ReplicaUrlCache
from gateway import constants

__all__ = ["FAILED_REPORT_TTL_S", "MAX_REPORTS", "MAX_TTL_S", "ReplicaUrls"]

logger = logging.getLogger(__name__)

# Reports kept at most. Each distinct name a caller sends costs one entry,
# so the cache is bounded against callers that invent names.
MAX_REPORTS: Final = 4096


class ReplicaUrls(ReplicaUrlCache[str]):
    """A short-lived cache of each function's replica URLs, in front of the provider.

    Keys are `NAME` or `NAME.NAMESPACE`, already validated.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        timeout_s: float = constants.LOOKUP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            session,
            provider_url,
            locate=_split_function,
            route="provider",
            timeout_s=timeout_s,
            max_reports=MAX_REPORTS,
            http_urls_only=True,
            log=logger,
            clock=clock,
        )


def _split_function(function: str) -> tuple[str, str]:
    """Return the name and namespace of `function`, with "" for no namespace."""
    name, dot, namespace = function.rpartition(".")
    if not dot:
        return function, ""
    return name, namespace
