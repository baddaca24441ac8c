"""Function lookups through the gateway, for each call the worker receives.

Before a call runs, the worker requests the function from the gateway
(`GET /system/function/NAME?namespace=NS`). A 404 means the function was
deleted after the call was accepted. Otherwise the annotations give the
function's retry policy and concurrency limit (`queue_worker.policy`). A function that
was found is trusted for FUNCTION_CACHE_TTL_S. One that was not found is
never cached, so a redeployed function is seen at once. Concurrent lookups
of one function share one request.

Any other status, or no response, raises GatewayUnavailable, and the call
is delivered again later without counting an attempt. Lookups that keep
failing for LOOKUP_WARN_AFTER_S are logged once as a warning, and their
recovery at INFO. Shorter failures, such as the gateway starting after the
worker in `faashub up`, are logged at DEBUG.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import yarl

from faashub.names import FunctionRef
from queue_worker import constants, errors
from queue_worker.policy import FunctionPolicy, PolicyReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """The facts about a function that the worker needs to run its calls."""

    ref: FunctionRef
    policy: FunctionPolicy


class FunctionLookup:
    """A short-lived cache of functions, in front of the gateway."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateway_url: str,
        *,
        policies: PolicyReader,
        authorization: str = "",
        ttl_s: float = constants.FUNCTION_CACHE_TTL_S,
        timeout_s: float = constants.LOOKUP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        # Sent on /system lookups only, never to a function.
        self._headers = {"Authorization": authorization} if authorization else {}
        self._system_url = gateway_url.rstrip("/") + "/system/function/"
        self._gateway_url = gateway_url
        self._policies = policies
        self._ttl_s = ttl_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._found: dict[FunctionRef, tuple[float, FunctionInfo]] = {}
        self._pending: dict[FunctionRef, asyncio.Task[FunctionInfo | None]] = {}
        self._failing_since: float | None = None
        self._warned = False

    async def get(self, ref: FunctionRef) -> FunctionInfo | None:
        """Return the function, or None if the gateway does not know it.

        Raises GatewayUnavailable when the gateway returns no usable response.
        """
        cached = self._found.get(ref)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        task = self._pending.get(ref)
        if task is None:
            task = asyncio.create_task(self._query(ref))
            self._pending[ref] = task
            task.add_done_callback(lambda done: self._forget(ref, done))
        # Shielded, so that one cancelled caller does not fail the others.
        return await asyncio.shield(task)

    def _forget(
        self, ref: FunctionRef, task: asyncio.Task[FunctionInfo | None]
    ) -> None:
        self._pending.pop(ref, None)
        if not task.cancelled():
            # Mark the error as retrieved: the waiting callers handle it.
            task.exception()

    async def _query(self, ref: FunctionRef) -> FunctionInfo | None:
        url = yarl.URL(self._system_url + ref.name).with_query(namespace=ref.namespace)
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout
            ) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise self._failed(ref, reason or type(exc).__name__) from exc
        if status == 404:
            self._recovered()
            return None
        if status != 200:
            raise self._failed(ref, f"status {status}")
        try:
            annotations = _annotations(json.loads(body))
        except ValueError as exc:
            raise self._failed(ref, f"invalid JSON ({exc})") from exc
        self._recovered()
        info = FunctionInfo(ref, self._policies.read(ref, annotations))
        self._found[ref] = (self._clock() + self._ttl_s, info)
        return info

    def _failed(self, ref: FunctionRef, reason: str) -> errors.GatewayUnavailable:
        message = (
            f"Cannot look up function {ref} through the gateway at "
            f"{self._gateway_url}: {reason}. Check that the gateway is running."
        )
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        if self._warned:
            return errors.GatewayUnavailable(message)
        if now - self._failing_since >= constants.LOOKUP_WARN_AFTER_S:
            self._warned = True
            logger.warning(
                "function lookups failing for %.1f s, calls wait: %s",
                now - self._failing_since,
                message,
            )
        else:
            logger.debug("function lookup failed, the call waits: %s", message)
        return errors.GatewayUnavailable(message)

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        lasted_s = self._clock() - self._failing_since
        warned, self._warned = self._warned, False
        self._failing_since = None
        if warned:
            logger.info("function lookups work again after %.1f s", lasted_s)
        else:
            logger.debug("function lookups work again after %.1f s", lasted_s)


def _annotations(status: object) -> dict[str, str]:
    """Return the annotations of a FunctionStatus object, or raise ValueError."""
    if not isinstance(status, dict):
        raise ValueError("expected a JSON object")
    annotations = status.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ValueError("'annotations' is not an object")
    return {str(key): str(value) for key, value in annotations.items()}
