"""The pull loop: fetch queued calls from JetStream, run them, acknowledge them.

A `Worker` binds the durable pull consumer of one queue (several workers may
share it) and keeps at most `max_inflight` calls running. It fetches only as
many messages as it has free slots, so no fetched message waits for a slot
while its ack_wait runs. Each message becomes one task, which:

1. reads the call (`QueuedCall.from_nats`); a message it cannot read is
   logged and terminated, so JetStream never delivers it again;
2. invokes the function through the gateway (`queue_worker.invoke`);
3. posts the result to the callback URL, if the call has one
   (`queue_worker.callback`);
4. acknowledges the message, which removes it from the work-queue stream.

While calls run, one task renews their leases (`in_progress`) every third of
ack_wait, so a call that runs longer than ack_wait is not handed to another
worker. A worker that dies stops renewing, and JetStream redelivers its calls
after ack_wait. NATS outages are logged once each and retried; the worker
exits only when it is stopped, or at start when its NATS URL is unusable.

Not here yet: retries of failed functions or callbacks, and a dead-letter
queue. The HTTP process around the worker is in `queue_worker.server`.
"""

import asyncio
import logging
import re
import time

import aiohttp
import nats.errors
import yarl
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from faashub import __version__, constants, errors, jetstream
from faashub.queued_call import QueuedCall, queue_filter_subject
from faashub.settings import WorkerSettings
from queue_worker import callback, invoke

logger = logging.getLogger(__name__)

USER_AGENT = f"faashub-queue-worker/{__version__}"

# Maximum batch size of one fetch. Larger batches do not drain faster:
# with nats-py, fetch(100) and fetch(1000) each drained about 32 k msg/s in one
# measurement on a 2-core machine.
MAX_FETCH_BATCH = 100
# How long an idle fetch waits for a message. Fetch returns as soon as one
# arrives, so this only sets how often an idle worker sends a pull request.
FETCH_TIMEOUT_S = 5.0
# Backoff between attempts after a NATS error, doubling up to the maximum.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
# Pause between attempts to reach a NATS server. Attempts never stop.
RECONNECT_WAIT_S = 1
# The consumer's max_ack_pending is max_inflight times this, and at least the
# minimum. JetStream stops delivering once that many calls are unacknowledged,
# so this many workers of the same size can share the consumer at full load.
ACK_PENDING_PER_SLOT = 16
MIN_MAX_ACK_PENDING = 1000

# A queue name becomes a NATS subject token and part of a consumer name.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# URL schemes that nats-py connects with.
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


class Worker:
    """Runs the queued calls of one queue until it is stopped.

    `run()` serves until `stop()` is called or the task running it is
    cancelled. Either way it stops fetching, waits up to ack_wait_s for the
    calls in flight to finish and be acknowledged, then closes its
    connections. A second cancel during that wait abandons the remaining
    calls, which JetStream redelivers after ack_wait.

    NB: workers that share a queue should use the same ack_wait_s, because
    the last one to start sets it on the shared consumer.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        _validate_queue_name(settings.queue)
        self._settings = settings
        self._nats_servers = nats_servers(settings.nats_url)
        self._function_base_url = function_base_url(settings.gateway_url)
        self._invoke_timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout_s)
        self._callback_timeout = aiohttp.ClientTimeout(
            total=settings.callback_timeout_s
        )
        self._durable = jetstream.worker_durable_name(settings.queue)
        self._lease_interval_s = settings.ack_wait_s / 3
        self._grace_s = settings.ack_wait_s

        self._nc = NatsClient()
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], Msg] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._retry_delay_s = RETRY_MIN_S
        self._outage_started_s: float | None = None

    @property
    def state(self) -> str:
        """Short description of what the worker can do now, "ready" when it works."""
        if self._stopping:
            return "stopping"
        if not self._nc.is_connected:
            return "not connected to nats"
        if self._subscription is None:
            return "consumer not bound"
        return "ready"

    @property
    def ready(self) -> bool:
        """True while connected, bound to the consumer and not stopping."""
        return self.state == "ready"

    async def run(self) -> None:
        """Serve calls until stopped, then drain in-flight calls and close."""
        if self._stopping:
            return
        self._session = _new_session(max_inflight=self._settings.max_inflight)
        self._fetcher = asyncio.create_task(self._fetch_calls())
        try:
            try:
                await asyncio.wait({self._fetcher})
            except asyncio.CancelledError:
                # A cancelled worker stops as stop() makes it, so that a
                # supervisor may use either. A second cancel interrupts _drain
                # and abandons the calls still running.
                self.stop()
                await asyncio.wait({self._fetcher})
                await self._drain()
                raise
            await self._drain()
        finally:
            await self._close()
        if not self._fetcher.cancelled():
            # The fetch loop only ends by itself on a bug: surface it.
            self._fetcher.result()

    def stop(self) -> None:
        """Stop fetching; `run()` then drains the calls in flight and returns."""
        if self._stopping:
            return
        self._stopping = True
        if self._fetcher is not None:
            self._fetcher.cancel()

    async def _fetch_calls(self) -> None:
        await self._connect()
        await self._bind_until_done()
        self._renewer = asyncio.create_task(self._renew_leases())
        while True:
            await self._wait_for_free_slot()
            assert self._subscription is not None
            batch = min(
                self._settings.max_inflight - len(self._running), MAX_FETCH_BATCH
            )
            try:
                messages = await self._subscription.fetch(
                    batch, timeout=FETCH_TIMEOUT_S
                )
            except TimeoutError:
                # No call arrived: normal for an idle queue.
                self._retry_delay_s = RETRY_MIN_S
                continue
            except nats.errors.Error as exc:
                # The consumer or the JetStream API is gone (deleted, or the
                # server lost its state): wait, then bind again.
                self._begin_outage(f"fetch failed: {_describe(exc)}")
                await self._pause_before_retry()
                await self._bind_until_done()
                continue
            self._retry_delay_s = RETRY_MIN_S
            for message in messages:
                self._start_call(message)

    async def _connect(self) -> None:
        try:
            await self._nc.connect(
                self._nats_servers,
                name="faashub-queue-worker",
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                error_cb=self._on_nats_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (nats.errors.Error, ValueError) as exc:
            # With unlimited reconnects, connect() raises only for a URL that
            # nats-py rejects, and nats_servers() already rejects most of those.
            url = callback.loggable_url(self._settings.nats_url)
            raise errors.SettingsError(
                f"Cannot use the NATS URL {url!r}: {_describe(exc)}. "
                "Set --nats-url to nats://HOST:PORT."
            ) from exc
        self._end_outage()
        logger.info(
            "connected to nats",
            extra={"ctx": {"url": callback.loggable_url(self._settings.nats_url)}},
        )

    async def _bind_until_done(self) -> None:
        while True:
            try:
                await self._bind()
            except (nats.errors.Error, TimeoutError) as exc:
                self._begin_outage(f"binding the consumer failed: {_describe(exc)}")
                await self._pause_before_retry()
                continue
            self._end_outage()
            return

    async def _bind(self) -> None:
        """Ensure the stream and the durable consumer, then subscribe to it."""
        js = self._nc.jetstream()
        await jetstream.ensure_calls_stream(js)
        config = jsapi.ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            filter_subject=queue_filter_subject(self._settings.queue),
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=max(
                self._settings.max_inflight * ACK_PENDING_PER_SLOT, MIN_MAX_ACK_PENDING
            ),
        )
        # add_consumer creates the consumer, or updates it to this config.
        await js.add_consumer(constants.CALLS_STREAM, config)
        await self._unsubscribe()
        self._subscription = await js.pull_subscribe_bind(
            self._durable, constants.CALLS_STREAM
        )
        logger.info(
            "consumer bound",
            extra={
                "ctx": {
                    "queue": self._settings.queue,
                    "consumer": self._durable,
                    "max_inflight": self._settings.max_inflight,
                    "ack_wait_s": self._settings.ack_wait_s,
                }
            },
        )

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except (nats.errors.Error, ValueError) as exc:
            logger.debug("unsubscribe failed: %s", _describe(exc))

    async def _wait_for_free_slot(self) -> None:
        while len(self._running) >= self._settings.max_inflight:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _start_call(self, message: Msg) -> None:
        task = asyncio.create_task(self._run_call(message))
        self._running[task] = message
        task.add_done_callback(self._on_call_done)

    def _on_call_done(self, task: asyncio.Task[None]) -> None:
        del self._running[task]
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            # A bug, since _run_call handles every failure it expects. The
            # message stays unacknowledged and comes back after ack_wait.
            logger.error("call task failed", exc_info=task.exception())

    async def _run_call(self, message: Msg) -> None:
        started_s = time.monotonic()
        try:
            call = QueuedCall.from_nats(message.headers, message.data)
        except errors.InvalidQueuedCall as exc:
            await self._reject(message, exc)
            return

        assert self._session is not None
        result = await invoke.invoke_function(
            self._session,
            call,
            function_base_url=self._function_base_url,
            http_timeout=self._invoke_timeout,
        )
        duration_s = time.monotonic() - started_s

        # The callback goes out before the ack: a worker that dies in between
        # makes JetStream redeliver the call rather than lose its result.
        callback_status: int | None = None
        if call.callback_url:
            callback_status = await callback.post_callback(
                self._session,
                call,
                result,
                duration_s=duration_s,
                http_timeout=self._callback_timeout,
            )
        await self._ack(message, call)
        if logger.isEnabledFor(logging.INFO):
            _log_finished(
                call, result, duration_s=duration_s, callback_status=callback_status
            )

    async def _reject(self, message: Msg, exc: errors.InvalidQueuedCall) -> None:
        logger.error(
            "invalid queued call terminated: %s",
            exc,
            extra={
                "ctx": {
                    "subject": message.subject,
                    "stream_seq": _stream_sequence(message),
                }
            },
        )
        try:
            await message.term()
        except nats.errors.Error as term_exc:
            logger.warning(
                "terminating an invalid queued call failed: %s", _describe(term_exc)
            )

    async def _ack(self, message: Msg, call: QueuedCall) -> None:
        try:
            await message.ack()
        except nats.errors.Error as exc:
            logger.warning(
                "ack failed, JetStream redelivers the call after ack_wait: %s",
                _describe(exc),
                extra={"ctx": {"function": str(call.ref), "call_id": call.call_id}},
            )

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_interval_s)
            for message in list(self._running.values()):
                if message.is_acked:
                    continue
                try:
                    await message.in_progress()
                except nats.errors.Error as exc:
                    # The call finished meanwhile, or NATS is away, in which
                    # case the outage is logged elsewhere.
                    logger.debug("lease renewal failed: %s", _describe(exc))

    async def _drain(self) -> None:
        await self._unsubscribe()
        if not self._running:
            return
        logger.info(
            "waiting up to %g s for %d calls in flight",
            self._grace_s,
            len(self._running),
        )
        _, pending = await asyncio.wait(set(self._running), timeout=self._grace_s)
        if pending:
            logger.warning(
                "abandoning %d calls still running after %g s (JetStream "
                "redelivers them after ack_wait)",
                len(pending),
                self._grace_s,
            )

    async def _close(self) -> None:
        self._stopping = True
        tasks = [*self._running, self._fetcher, self._renewer]
        remaining = {task for task in tasks if task is not None and not task.done()}
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.wait(remaining)
        if self._session is not None:
            await self._session.close()
        # close() flushes buffered acks before it disconnects.
        await self._nc.close()
        logger.info("queue-worker stopped")

    async def _pause_before_retry(self) -> None:
        await asyncio.sleep(self._retry_delay_s)
        self._retry_delay_s = min(self._retry_delay_s * 2, RETRY_MAX_S)

    def _begin_outage(self, reason: str) -> None:
        if self._outage_started_s is not None or self._stopping:
            return
        self._outage_started_s = time.monotonic()
        logger.warning("nats unavailable, retrying: %s", reason)

    def _end_outage(self) -> None:
        if self._outage_started_s is None:
            return
        lasted_s = time.monotonic() - self._outage_started_s
        self._outage_started_s = None
        logger.info("nats available again after %.1f s", lasted_s)

    async def _on_nats_error(self, exc: Exception) -> None:
        self._begin_outage(_describe(exc))

    async def _on_disconnected(self) -> None:
        self._begin_outage("disconnected")

    async def _on_reconnected(self) -> None:
        self._end_outage()


def function_base_url(gateway_url: str) -> str:
    """Return the gateway's `/function/` URL, or raise SettingsError."""
    try:
        url = yarl.URL(gateway_url)
    except (TypeError, ValueError) as exc:
        raise errors.SettingsError(
            f"Invalid gateway URL {gateway_url!r}: {exc}. "
            "Set --gateway-url to http://HOST:PORT."
        ) from exc
    if url.scheme not in ("http", "https") or not url.host or url.query_string:
        raise errors.SettingsError(
            f"Invalid gateway URL {gateway_url!r}: expected http://HOST:PORT or "
            "https://HOST:PORT, optionally with a path and without a query. "
            "Set --gateway-url."
        )
    return gateway_url.rstrip("/") + "/function/"


def nats_servers(nats_url: str) -> list[str]:
    """Split a comma-separated NATS URL list, or raise SettingsError.

    An entry without a scheme gets `nats://`, as nats-py itself assumes.
    """
    servers = []
    for entry in nats_url.split(","):
        server = entry.strip()
        if not server:
            continue
        if "://" not in server:
            server = "nats://" + server
        try:
            url = yarl.URL(server)
            valid = url.scheme in _NATS_SCHEMES and bool(url.host)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise errors.SettingsError(
                f"Invalid NATS URL {callback.loggable_url(server)!r}: expected "
                "nats://HOST:PORT (or tls://, ws://, wss://). Set --nats-url."
            )
        servers.append(server)
    if not servers:
        raise errors.SettingsError("The NATS URL is empty. Set --nats-url.")
    return servers


def _validate_queue_name(queue: str) -> None:
    if not _QUEUE_NAME.match(queue):
        raise errors.SettingsError(
            f"Invalid queue name {queue!r}: use only letters, digits, '-' and '_', "
            "because the name becomes part of a NATS subject and consumer name."
        )


def _new_session(*, max_inflight: int) -> aiohttp.ClientSession:
    # Each call uses at most one connection at a time (the invocation, then
    # the callback), so max_inflight connections always suffice.
    connector = aiohttp.TCPConnector(limit=max_inflight)
    return aiohttp.ClientSession(
        connector=connector,
        # Bodies pass through as the function encoded them, with their
        # Content-Encoding header.
        auto_decompress=False,
        # Cookies set by one function must not reach the next call.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        # Add none of aiohttp's default Accept, Accept-Encoding and
        # Content-Type headers: the function and the callback receiver get
        # the ones that the caller or the function sent.
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
    )


def _log_finished(
    call: QueuedCall,
    result: invoke.FunctionResult,
    *,
    duration_s: float,
    callback_status: int | None,
) -> None:
    context: dict[str, object] = {
        "function": str(call.ref),
        "call_id": call.call_id,
        "status": result.status,
        "duration_s": f"{duration_s:.3f}",
        "callback_status": _callback_text(call, callback_status),
    }
    if result.error:
        context["error"] = result.error
    logger.info("call finished", extra={"ctx": context})


def _callback_text(call: QueuedCall, callback_status: int | None) -> str:
    if not call.callback_url:
        return "none"
    if callback_status is None:
        return "failed"
    return str(callback_status)


def _stream_sequence(message: Msg) -> int | None:
    try:
        return message.metadata.sequence.stream
    except (nats.errors.Error, ValueError, IndexError):
        return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
