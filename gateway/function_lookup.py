"""Checks that a function exists before the gateway queues a call for it.

The async accept path queries the provider (`GET /system/function/NAME
?namespace=NS`), so that a call to an unknown function fails at once with 404
instead of failing later in the worker. A function that was found is trusted
for `function_cache_ttl_s`. An unknown one is never cached, so a function
can be invoked the moment it is deployed. Concurrent lookups of the same
function share one request to the provider.

This module does not check that the function is ready or has replicas. The
provider deals with that when the worker invokes the function.
"""

import asyncio
import logging
import time

import aiohttp
import yarl

from faashub.names import FunctionRef
from gateway import constants, errors

logger = logging.getLogger(__name__)


class FunctionLookup:
    """A cache of functions known to exist, in front of the provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        ttl_s: float,
        timeout_s: float = constants.LOOKUP_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._provider_url = provider_url.rstrip("/")
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._found_until: dict[FunctionRef, float] = {}
        self._pending: dict[FunctionRef, asyncio.Task[bool]] = {}

    async def exists(self, ref: FunctionRef) -> bool:
        """Return whether the function exists, from the cache or the provider.

        Raises ProviderUnavailable when the provider cannot be reached or
        returns a status other than 200 or 404.
        """
        found_until = self._found_until.get(ref)
        if found_until is not None and found_until > time.monotonic():
            return True
        task = self._pending.get(ref)
        if task is None:
            task = asyncio.create_task(self._query(ref))
            self._pending[ref] = task
            task.add_done_callback(lambda done: self._forget(ref, done))
        # Shielded, so a caller that goes away does not cancel the lookup for
        # the other callers that wait for the same function.
        return await asyncio.shield(task)

    def _forget(self, ref: FunctionRef, task: asyncio.Task[bool]) -> None:
        self._pending.pop(ref, None)
        if not task.cancelled():
            # Mark the error as retrieved, because the waiting callers handle it.
            task.exception()

    async def _query(self, ref: FunctionRef) -> bool:
        url = yarl.URL(f"{self._provider_url}/system/function/{ref.name}").with_query(
            namespace=ref.namespace
        )
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.ProviderUnavailable(
                f"Cannot look up function {ref.name!r} in namespace "
                f"{ref.namespace!r}: the request to the provider at "
                f"{self._provider_url} failed ({self._describe(exc)}). Check that the "
                "provider is running."
            ) from exc
        if status == 404:
            logger.debug("function not found", extra={"ctx": {"function": str(ref)}})
            return False
        if status != 200:
            raise errors.ProviderUnavailable(
                f"Cannot look up function {ref.name!r} in namespace "
                f"{ref.namespace!r}: the provider at {self._provider_url} returned "
                f"status {status}. Check the provider's log."
            )
        if self._ttl_s > 0:
            self._found_until[ref] = time.monotonic() + self._ttl_s
        return True

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"timed out after {self._timeout_s:g} s"
        return str(exc) or repr(exc)
