"""A function's log, read from its pods through the Kubernetes API.

`PodLogStream` is the `LogStream` that `/system/logs` sends. It finds the
function's pods by the label `faas_function=<name>` (or the one pod that
`instance` names) and reads each pod's log with timestamps in a thread of
its own, because the client's streaming reads block. Each line becomes one
ndjson `logs.Message` (`name`, `namespace`, `instance` = the pod,
`timestamp` as the kubelet wrote it, `text`).

Without `follow` the stream ends when every pod's log is read. With
`follow` it also looks for new pods every POD_POLL_INTERVAL_S, so a rollout
or a scale-up keeps streaming, and it ends when the function is deleted or
the client goes away. Without `tail` and `since`, only the last
DEFAULT_HISTORY_S of each pod's log is read, as faas-netes does. The lines
of different pods are interleaved in the order they arrive.

A pod whose log the API server does not return, such as one whose image
fails to pull, gets one message whose `text` starts with "faashub" and
gives the API server's reason. The reason goes in the stream because the
status is sent before the pod logs are read, and other pods may still have
lines to send. A followed pod gets the message again only when the reason
changes. An `instance` that no pod of the function has raises
InstanceNotFound before the stream starts.

Messages of the same kind, with an empty `instance`, report the function as
a whole. A function without pods, such as one scaled to zero, gets one.
Without `follow` the stream then ends, and with `follow` it goes on and
streams the pods that start later. A followed log also gets one when a poll
of the pod list fails, such as while the API server is unreachable, and one
when a poll succeeds again. It goes on following: a pod whose log stream
broke off is read again from its last line, and lines up to that line's
timestamp are not sent twice.
"""

import asyncio
import contextlib
import json
import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import urllib3

from faashub.logs import LimitedWarning
from provider.backend import FunctionNotFound
from provider.kubernetes import objects
from provider.kubernetes.kube import (
    FAILURE_WARNING_INTERVAL_S,
    TIMED_OUT,
    ApiError,
    JsonObject,
    KubeApi,
)
from provider.logs_api import parse_rfc3339
from provider.types import LogRequest

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_S: Final = 300
POD_POLL_INTERVAL_S: Final = 2.0
# A followed pod log may stay silent for long; a read that waits longer than
# this ends that pod's stream.
FOLLOW_READ_TIMEOUT_S: Final = 24 * 3600.0
# A client that falls this many chunks of lines behind has its stream ended,
# so a reader that stops reading cannot make the provider buffer without limit.
MAX_BACKLOG_CHUNKS: Final = 10_000

# Each follower polls the pod list, so one failing API server would
# otherwise log one line per follower per poll interval.
pod_list_failed = LimitedWarning(logger, interval_s=FAILURE_WARNING_INTERVAL_S)


class InstanceNotFound(FunctionNotFound):
    """No pod of the function has the name that the log request's `instance` gives.

    It is a FunctionNotFound, so the provider API sends 404.
    """


class PodLogStream:
    """Chunks of ndjson log lines from the pods of one function."""

    def __init__(
        self,
        kube: KubeApi,
        request: LogRequest,
        *,
        namespace: str,
        function_exists: Callable[[], bool],
        poll_interval_s: float = POD_POLL_INTERVAL_S,
    ) -> None:
        self._kube = kube
        self._request = request
        self._namespace = namespace
        self._function_exists = function_exists
        self._poll_interval_s = poll_interval_s
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stopping = threading.Event()
        self._readers: dict[str, threading.Thread] = {}
        self._finished: set[str] = set()
        # The last reason sent for each pod whose log could not be read.
        self._unreadable: dict[str, str] = {}
        # The timestamp of the last line sent for each pod, and for a reader
        # started again, the timestamp up to which it skips lines because
        # they were sent before. Only the pod's own reader thread writes them.
        self._last_stamps: dict[str, datetime] = {}
        self._resume_after: dict[str, datetime] = {}
        self._pod_list_failing = False
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._responses_lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._ended = False

    async def start(self) -> None:
        """List the pods and start reading their logs.

        Raise ApiError when the pods cannot be listed, and InstanceNotFound
        when the request names an `instance` that no pod of the function has.
        """
        await self._start_new_readers()
        request = self._request
        if request.instance and not self._readers:
            raise InstanceNotFound(
                f"Function {request.name!r} in namespace {self._namespace!r} has no "
                f"pod named {request.instance!r}. List its pods with 'kubectl get "
                f"pods -n {self._namespace} -l {objects.FUNCTION_LABEL}="
                f"{request.name}', or leave out instance to read the log of every "
                "pod."
            )
        if not self._readers:
            following = " Their logs follow once they start." if request.follow else ""
            self._report(
                "faashub found no pods of this function. It may be scaled to "
                f"zero, or its pods are not created yet.{following}"
            )
        if request.follow:
            self._poller = asyncio.create_task(
                self._poll_pods(), name=f"pod-logs-{request.name}"
            )
        elif not self._readers:
            self._queue.put_nowait(None)

    def __aiter__(self) -> "PodLogStream":
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        chunk = await self._queue.get()
        if chunk is None:
            self._ended = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop every reader thread and the pod poller."""
        self._stopping.set()
        with self._responses_lock:
            for response in self._responses:
                response.shutdown()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll_pods(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self._poll_interval_s)
            if not self._function_exists():
                self._queue.put_nowait(None)
                return
            try:
                await self._start_new_readers()
            except ApiError as exc:
                pod_list_failed.warning(
                    "pod list for logs failed: %s",
                    exc,
                    ctx={"function": self._request.name},
                )
                if not self._pod_list_failing:
                    self._pod_list_failing = True
                    reason = _unreadable_reason(exc).rstrip(".")
                    self._report(
                        f"faashub could not list the pods of this function: {reason}. "
                        "Following goes on when the pod list succeeds again."
                    )
                continue
            if self._pod_list_failing:
                self._pod_list_failing = False
                self._report(
                    "faashub listed the pods of this function again and goes on "
                    "following their logs."
                )

    async def _start_new_readers(self) -> None:
        body = await self._kube.call(
            self._kube.core.list_namespaced_pod,
            self._namespace,
            label_selector=f"{objects.FUNCTION_LABEL}={self._request.name}",
        )
        for pod in body.get("items") or []:
            pod_name = self._pod_name(pod)
            if pod_name and pod_name not in self._readers:
                thread = threading.Thread(
                    target=self._read_pod,
                    args=(pod_name,),
                    name=f"pod-log-{pod_name}",
                    daemon=True,
                )
                self._readers[pod_name] = thread
                thread.start()

    def _pod_name(self, pod: JsonObject) -> str:
        """Return the pod's name if it belongs to the request, else ""."""
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        name = str(metadata.get("name") or "")
        # NB: the label selector is checked here too, so a server that ignores
        # it cannot mix another function's pods into this log.
        if labels.get(objects.FUNCTION_LABEL) != self._request.name:
            return ""
        if self._request.instance and name != self._request.instance:
            return ""
        return name

    def _log_arguments(self, pod_name: str) -> dict[str, Any]:
        request = self._request
        arguments: dict[str, Any] = {
            "container": request.name,
            "follow": request.follow,
            "timestamps": True,
        }
        last_stamp = self._last_stamps.get(pod_name)
        if last_stamp is not None:
            # The API takes whole seconds, so the lines up to last_stamp that
            # this returns again are skipped by `_message`.
            self._resume_after[pod_name] = last_stamp
            elapsed_s = (datetime.now(UTC) - last_stamp).total_seconds()
            arguments["since_seconds"] = max(1, math.ceil(elapsed_s))
            return arguments
        if request.tail > 0:
            arguments["tail_lines"] = request.tail
        if request.since is not None:
            elapsed_s = (datetime.now(UTC) - request.since).total_seconds()
            arguments["since_seconds"] = max(1, math.ceil(elapsed_s))
        elif request.tail <= 0:
            arguments["since_seconds"] = DEFAULT_HISTORY_S
        return arguments

    def _read_pod(self, pod_name: str) -> None:
        """Read one pod's log into the queue; runs in a thread of its own."""
        try:
            response = self._kube.open_stream(
                self._kube.core.read_namespaced_pod_log,
                pod_name,
                self._namespace,
                _request_timeout=(5.0, FOLLOW_READ_TIMEOUT_S),
                **self._log_arguments(pod_name),
            )
        except (ApiError, ValueError) as exc:
            # A pod whose container has not started yet has no log to read.
            # With follow, the next poll tries it again.
            logger.info(
                "pod log not readable: %s",
                exc,
                extra={"ctx": {"function": self._request.name, "pod": pod_name}},
            )
            self._call_in_loop(
                self._report_unreadable, pod_name, _unreadable_reason(exc)
            )
            self._call_in_loop(self._reader_done, pod_name, True)
            return
        with self._responses_lock:
            self._responses.add(response)
        broken_off = False
        try:
            if not self._stopping.is_set():
                self._pump(pod_name, response)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._stopping.is_set():
                broken_off = True
                logger.info(
                    "pod log stream ended: %s",
                    exc,
                    extra={"ctx": {"function": self._request.name, "pod": pod_name}},
                )
        finally:
            with self._responses_lock:
                self._responses.discard(response)
            response.release_conn()
        # A stream that broke off, as when the API server went away, is read
        # again by the next poll, while one that ended normally is not.
        self._call_in_loop(self._reader_done, pod_name, broken_off)

    def _pump(self, pod_name: str, response: urllib3.BaseHTTPResponse) -> None:
        buffer = b""
        for chunk in response.stream(amt=None, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            self._send_lines(pod_name, lines)
            if self._stopping.is_set():
                return
        if buffer:
            self._send_lines(pod_name, [buffer])

    def _send_lines(self, pod_name: str, lines: list[bytes]) -> None:
        messages = [self._message(pod_name, line) for line in lines if line]
        data = b"".join(message for message in messages if message)
        if data:
            self._call_in_loop(self._enqueue, data)

    def _message(self, pod_name: str, line: bytes) -> bytes:
        """Return one ndjson message for a `TIMESTAMP TEXT` line, or b"" to skip it."""
        text = line.decode("utf-8", "replace").rstrip("\r")
        timestamp, _, message = text.partition(" ")
        since = self._request.since
        try:
            stamped_at = parse_rfc3339(timestamp)
        except ValueError:
            timestamp, message = "", text
        else:
            if since is not None and stamped_at < since:
                return b""
            resume_after = self._resume_after.get(pod_name)
            if resume_after is not None:
                if stamped_at <= resume_after:
                    return b""
                del self._resume_after[pod_name]
            self._last_stamps[pod_name] = stamped_at
        record = {
            "name": self._request.name,
            "namespace": self._namespace,
            "instance": pod_name,
            "timestamp": timestamp,
            "text": message,
        }
        return json.dumps(record, ensure_ascii=False).encode() + b"\n"

    def _report_unreadable(self, pod_name: str, reason: str) -> None:
        """Send the message that `pod_name`'s log cannot be read, once per reason."""
        if self._unreadable.get(pod_name) == reason:
            return
        self._unreadable[pod_name] = reason
        self._report(
            f"faashub could not read the log of this pod: {reason}", pod_name=pod_name
        )

    def _report(self, text: str, *, pod_name: str = "") -> None:
        """Send a faashub message about one pod, or with no pod about the function."""
        record = {
            "name": self._request.name,
            "namespace": self._namespace,
            "instance": pod_name,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "text": text,
        }
        self._enqueue(json.dumps(record, ensure_ascii=False).encode() + b"\n")

    def _enqueue(self, data: bytes) -> None:
        if self._queue.qsize() >= MAX_BACKLOG_CHUNKS:
            logger.warning(
                "log reader fell behind, ending its stream",
                extra={"ctx": {"function": self._request.name}},
            )
            self._stopping.set()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(data)

    def _reader_done(self, pod_name: str, failed: bool) -> None:
        if self._request.follow:
            if failed:
                # Forget the pod, so the next poll reads it again: once its
                # container runs, or once the API server responds.
                self._readers.pop(pod_name, None)
            return
        self._finished.add(pod_name)
        if len(self._finished) == len(self._readers):
            self._queue.put_nowait(None)

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            self._stopping.set()


def _unreadable_reason(exc: ApiError | ValueError) -> str:
    """Return why a pod's log could not be read, in words for the log's reader."""
    if not isinstance(exc, ApiError):
        return str(exc)
    if exc.status == 0 and exc.reason == TIMED_OUT:
        return "the Kubernetes API server did not respond in time."
    if exc.status == 0:
        return "the Kubernetes API server could not be reached."
    return (
        f"the Kubernetes API server returned {exc.status} {exc.reason}: {exc.message}"
    )
