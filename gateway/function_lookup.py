"""Looks functions up on the provider before the gateway queues a call for them.

The async accept path queries the provider (`GET /system/function/NAME
?namespace=NS`), so that a call to an unknown function fails at once with 404
instead of failing later in the worker. The response also contains the
function's annotations, and the annotation `com.openfaas.queue` picks the
named queue its calls go to. A function that was found is trusted, with its
annotations, for `function_cache_ttl_s`. An unknown one is never cached, so
a function can be invoked the moment it is deployed. Concurrent lookups of
the same function share one request to the provider.

This module does not check that the function is ready or has replicas. The
provider deals with that when the worker invokes the function.
"""

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import yarl

from faashub import constants as shared
from faashub.names import FunctionRef
from faashub.queued_call import is_valid_token
from gateway import constants, errors
from gateway.provider_token import ProviderTokenRejections

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A deployed function, as far as the async path needs it."""

    ref: FunctionRef
    annotations: Mapping[str, str]
    queue: str
    """The queue its calls go to: a valid `com.openfaas.queue`, or the default."""


class FunctionLookup:
    """A cache of functions known to exist, in front of the provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        ttl_s: float,
        token_rejections: ProviderTokenRejections,
        timeout_s: float = constants.LOOKUP_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._token_rejections = token_rejections
        self._provider_url = provider_url.rstrip("/")
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._found: dict[FunctionRef, tuple[float, FunctionInfo]] = {}
        self._pending: dict[FunctionRef, asyncio.Task[FunctionInfo | None]] = {}
        self._warned_queues: set[tuple[FunctionRef, str]] = set()

    def cached(self, ref: FunctionRef) -> FunctionInfo | None:
        """Return the function's info if the cache still trusts it, else None."""
        cached = self._found.get(ref)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    async def find(self, ref: FunctionRef) -> FunctionInfo | None:
        """Return the function's info, from the cache or the provider; None if unknown.

        Raises ProviderUnavailable when the provider cannot be reached or
        returns a status other than 200 or 404, or a body that is not JSON,
        and its subclass ProviderTokenRejected for a 401.
        """
        info = self.cached(ref)
        if info is not None:
            return info
        task = self._pending.get(ref)
        if task is None:
            task = asyncio.create_task(self._query(ref))
            self._pending[ref] = task
            task.add_done_callback(lambda done: self._forget(ref, done))
        # Shielded, so a caller that goes away does not cancel the lookup for
        # the other callers that wait for the same function.
        return await asyncio.shield(task)

    def _forget(
        self, ref: FunctionRef, task: asyncio.Task[FunctionInfo | None]
    ) -> None:
        self._pending.pop(ref, None)
        if not task.cancelled():
            # Mark the error as retrieved, because the waiting callers handle it.
            task.exception()

    async def _query(self, ref: FunctionRef) -> FunctionInfo | None:
        url = yarl.URL(f"{self._provider_url}/system/function/{ref.name}").with_query(
            namespace=ref.namespace
        )
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.ProviderUnavailable(
                f"Cannot look up function {ref.name!r} in namespace "
                f"{ref.namespace!r}: the request to the provider at "
                f"{self._provider_url} failed ({self._describe(exc)}). Check that the "
                "provider is running."
            ) from exc
        if status == 404:
            logger.debug("function not found", extra={"ctx": {"function": str(ref)}})
            return None
        if status == 401:
            raise self._token_rejections.rejected(f"GET /system/function/{ref.name}")
        if status != 200:
            raise errors.ProviderUnavailable(
                f"Cannot look up function {ref.name!r} in namespace "
                f"{ref.namespace!r}: the provider at {self._provider_url} returned "
                f"status {status}. Check the provider's log."
            )
        info = self._parse(ref, body)
        if self._ttl_s > 0:
            self._found[ref] = (time.monotonic() + self._ttl_s, info)
        return info

    def _parse(self, ref: FunctionRef, body: bytes) -> FunctionInfo:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise errors.ProviderUnavailable(
                f"Cannot look up function {ref.name!r} in namespace "
                f"{ref.namespace!r}: the provider at {self._provider_url} returned a "
                "body that is not JSON. Check the provider's log."
            ) from exc
        raw = document.get("annotations") if isinstance(document, dict) else None
        annotations = (
            {str(key): str(value) for key, value in raw.items()}
            if isinstance(raw, dict)
            else {}
        )
        return FunctionInfo(
            ref=ref, annotations=annotations, queue=self._queue(ref, annotations)
        )

    def _queue(self, ref: FunctionRef, annotations: Mapping[str, str]) -> str:
        value = annotations.get(shared.ANNOTATION_QUEUE)
        if value is None or value == "":
            return shared.DEFAULT_QUEUE
        if is_valid_token(value):
            return value
        # Logged once per function and value, not once per lookup.
        if (ref, value) not in self._warned_queues:
            self._warned_queues.add((ref, value))
            logger.warning(
                "invalid queue annotation; using the default queue",
                extra={
                    "ctx": {
                        "function": str(ref),
                        "annotation": shared.ANNOTATION_QUEUE,
                        "value": value,
                        "expected": "letters, digits, '-' or '_', at most 128",
                    }
                },
            )
        return shared.DEFAULT_QUEUE

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"timed out after {self._timeout_s:g} s"
        return str(exc) or repr(exc)
