"""A watch-fed, in-memory copy of every function's Deployment.

`/system/functions`, `/system/function/NAME` and every invocation read this
cache instead of the API, so a listing of thousands of functions costs no
API call and an invocation learns about readiness without one. One thread
lists the Deployments labelled `faas_function`, then watches them from the
list's resourceVersion, and hands each event to the event loop. When the
watch ends (the server closes it, a read times out, the resourceVersion is
too old, or the API is unreachable), the thread lists again after a short
wait, so a missed deletion cannot linger.

The backend also writes its own API responses into the cache, so a create
or a scale is visible at once, before its watch event arrives. Code that
waits for a change (a scale from zero) awaits `changed()`.

While the list after a watch fails, because the API server is unreachable
or rejects it, `sync_failure()` returns the error and the time of the
cache's contents. The cache keeps its contents meanwhile, so invocations of
running functions go on.
"""

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import urllib3

from provider.kubernetes import objects
from provider.kubernetes.kube import ApiError, JsonObject, KubeApi

logger = logging.getLogger(__name__)

# The API server ends each watch after this many seconds, and the thread then
# lists again; a read that sees no event for WATCH_READ_TIMEOUT_S does too.
WATCH_SERVER_TIMEOUT_S: Final = 300
WATCH_READ_TIMEOUT_S: Final = 330.0
RELIST_DELAY_S: Final = 1.0
MAX_RELIST_DELAY_S: Final = 30.0

CacheKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """A list of the Deployments that failed, so the cache may miss changes.

    `synced_at` is when the cache last matched the API server: the last
    successful list, or the end of the last watch. `failed_at` is the first
    failed list of this outage, and `reason` the error of the latest one.
    """

    synced_at: datetime
    failed_at: datetime
    reason: str


class DeploymentCache:
    """The Deployments of functions by namespace and name, kept current by a watch.

    `namespace` limits the watch to one namespace; None watches them all.
    """

    def __init__(self, kube: KubeApi, *, namespace: str | None) -> None:
        self._kube = kube
        self._namespace = namespace
        self._items: dict[CacheKey, JsonObject] = {}
        self._changed = asyncio.Event()
        self._stopping = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._response_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The watch thread replaces these whole, and the event loop reads them.
        self._synced_at = datetime.now(UTC)
        self._sync_failure: SyncFailure | None = None

    async def start(self) -> None:
        """List the Deployments once, then keep watching them in a thread.

        Raise ApiError when the first list fails, so the provider does not
        report ready without knowing its functions.
        """
        self._loop = asyncio.get_running_loop()
        items, resource_version = await asyncio.to_thread(self._list)
        self._synced_at = datetime.now(UTC)
        self._replace_all(items)
        self._thread = threading.Thread(
            target=self._run,
            args=(resource_version,),
            name="deployment-watch",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "function cache synced",
            extra={
                "ctx": {"functions": len(items), "namespace": self._namespace or "*"}
            },
        )

    async def stop(self) -> None:
        """Stop the watch thread and wait for it to end."""
        self._stopping.set()
        with self._response_lock:
            if self._response is not None:
                self._response.shutdown()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    def get(self, name: str, namespace: str) -> JsonObject | None:
        """Return a function's Deployment, or None when the cache has none."""
        return self._items.get((namespace, name))

    def items(self, namespace: str) -> list[JsonObject]:
        """Return the Deployments of one namespace, sorted by function name."""
        return [self._items[key] for key in sorted(self._items) if key[0] == namespace]

    def all(self) -> list[JsonObject]:
        """Return every cached Deployment."""
        return list(self._items.values())

    def sync_failure(self) -> SyncFailure | None:
        """Return the failure of the latest list, or None while the cache is current."""
        return self._sync_failure

    def changed(self) -> asyncio.Event:
        """Return the event that is set at the next change to the cache."""
        return self._changed

    def store(self, deployment: JsonObject) -> None:
        """Put a Deployment that the API returned into the cache."""
        key = _key(deployment)
        if key is not None and objects.is_function(deployment):
            self._items[key] = deployment
            self._notify()

    def discard(self, name: str, namespace: str) -> None:
        """Remove a Deployment that the provider deleted."""
        if self._items.pop((namespace, name), None) is not None:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _replace_all(self, items: list[JsonObject]) -> None:
        replacement: dict[CacheKey, JsonObject] = {}
        for item in items:
            key = _key(item)
            if key is not None and objects.is_function(item):
                replacement[key] = item
        self._items = replacement
        self._notify()

    def _apply_event(self, event_type: str, item: JsonObject) -> None:
        key = _key(item)
        if key is None:
            return
        if event_type == "DELETED" or not objects.is_function(item):
            self._items.pop(key, None)
        else:
            self._items[key] = item
        self._notify()

    def _list(self) -> tuple[list[JsonObject], str]:
        if self._namespace is None:
            body = self._kube.call_sync(
                self._kube.apps.list_deployment_for_all_namespaces,
                label_selector=objects.FUNCTION_LABEL,
            )
        else:
            body = self._kube.call_sync(
                self._kube.apps.list_namespaced_deployment,
                self._namespace,
                label_selector=objects.FUNCTION_LABEL,
            )
        resource_version = str(body.get("metadata", {}).get("resourceVersion") or "")
        return list(body.get("items") or []), resource_version

    def _run(self, resource_version: str) -> None:
        """Watch, and list again whenever a watch ends, until `stop`."""
        delay_s = RELIST_DELAY_S
        while not self._stopping.is_set():
            try:
                if resource_version:
                    self._watch(resource_version)
                    delay_s = RELIST_DELAY_S
            except ApiError as exc:
                logger.warning("function watch failed: %s", exc)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stopping.is_set():
                    break
                logger.debug("function watch ended: %s", exc)
            if self._stopping.wait(delay_s):
                break
            try:
                items, resource_version = self._list()
            except ApiError as exc:
                logger.warning(
                    "function list failed, retrying: %s",
                    exc,
                    extra={"ctx": {"retry_in_s": delay_s}},
                )
                self._record_failure(exc)
                resource_version = ""
                delay_s = min(delay_s * 2, MAX_RELIST_DELAY_S)
                continue
            self._record_sync()
            self._call_in_loop(self._replace_all, items)

    def _record_failure(self, exc: ApiError) -> None:
        previous = self._sync_failure
        self._sync_failure = SyncFailure(
            synced_at=self._synced_at,
            failed_at=datetime.now(UTC) if previous is None else previous.failed_at,
            reason=str(exc),
        )

    def _record_sync(self) -> None:
        self._synced_at = datetime.now(UTC)
        failure = self._sync_failure
        self._sync_failure = None
        if failure is not None:
            logger.info(
                "function list succeeded again",
                extra={
                    "ctx": {
                        "failed_since": format_utc(failure.failed_at),
                        "namespace": self._namespace or "*",
                    }
                },
            )

    def _watch(self, resource_version: str) -> None:
        kwargs: dict[str, Any] = {
            "label_selector": objects.FUNCTION_LABEL,
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SERVER_TIMEOUT_S,
            "_request_timeout": (5.0, WATCH_READ_TIMEOUT_S),
        }
        if self._namespace is None:
            response = self._kube.open_stream(
                self._kube.apps.list_deployment_for_all_namespaces, **kwargs
            )
        else:
            response = self._kube.open_stream(
                self._kube.apps.list_namespaced_deployment, self._namespace, **kwargs
            )
        with self._response_lock:
            self._response = response
        try:
            if self._stopping.is_set():
                return
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._handle_line(line)
        finally:
            with self._response_lock:
                self._response = None
            response.release_conn()
            # The watch delivered every change until it ended.
            self._synced_at = datetime.now(UTC)

    def _handle_line(self, line: bytes) -> None:
        event = json.loads(line)
        event_type = event.get("type", "")
        item = event.get("object") or {}
        if event_type == "ERROR":
            # Usually 410 Gone: the resourceVersion is too old, so list again.
            raise ApiError(
                int(item.get("code") or 0),
                str(item.get("reason") or "Error"),
                str(item.get("message") or "the watch reported an error"),
            )
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            self._call_in_loop(self._apply_event, event_type, item)

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop closed while the provider stopped.
            self._stopping.set()


def _key(deployment: JsonObject) -> CacheKey | None:
    metadata = deployment.get("metadata") or {}
    name = metadata.get("name")
    namespace = metadata.get("namespace")
    if not name or not namespace:
        return None
    return (str(namespace), str(name))


def format_utc(moment: datetime) -> str:
    """Return `moment` as an RFC 3339 UTC time to the second."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
