"""The pull loop: fetch queued calls from JetStream and hand them to the handler.

A `Worker` binds the durable pull consumer of one queue (several workers may
share it), pulls from it through `queue_worker.pull`, and runs each
fetched message in a task of its own, which
`queue_worker.handling` takes to an ack, a nak or a term. The worker keeps
at most max_inflight calls running plus a small prefetch window of calls
waiting for a slot, and fetches only what fits, so no fetched message waits
long while its ack_wait runs.

While it holds messages, one task renews their leases (`in_progress`)
every third of ack_wait, so a call that runs longer than ack_wait, or
whose callback is being retried, is not handed to another worker. A worker
that dies stops renewing, and JetStream redelivers its calls after
ack_wait. Calls that wait for a retry or a delay are back in JetStream
(nak with a delay) and hold nothing here.

NATS outages are logged once each and retried. The worker reconnects by
itself, and exits only when it is stopped or, at start, when its NATS URL
is unusable. The HTTP process around the worker is in `queue_worker.server`.
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
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from faashub import callback_request, credentials, errors, http_sessions, jetstream
from faashub import constants as shared
from faashub.callback_guard import CallbackGuard, new_callback_session
from faashub.queued_call import queue_filter_subject
from faashub.replica_urls import ReplicaUrls
from faashub.settings import WorkerSettings
from queue_worker import callback, constants
from queue_worker.callback import CallbackOptions, CallbackSender
from queue_worker.dead_letters import DeadLetterWriter
from queue_worker.functions import FunctionLookup
from queue_worker.handling import CallHandler, HandlerServices
from queue_worker.messages import HeldMessage, delivery_of
from queue_worker.metrics import WorkerMetrics
from queue_worker.policy import PolicyReader, default_retry_policy
from queue_worker.pull import PullConsumer
from queue_worker.slots import Slots
from queue_worker.status import StatusStore
from queue_worker.status_reads import BatchedStatusReader
from queue_worker.status_writes import StatusWriter

logger = logging.getLogger(__name__)

# Calls named in one shutdown warning; the rest are only counted.
_NAMED_CALLS_MAX = 20

# A queue name becomes a NATS subject token and part of a consumer name.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# URL schemes that nats-py connects with.
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


class Worker:
    """Runs the queued calls of one queue until it is stopped.

    `run()` serves until `stop()` is called or the task running it is
    cancelled. Either way it stops fetching, hands back the calls that have
    not started, waits up to shutdown_grace_s for the running ones to finish
    and be acknowledged, then closes its connections. A second cancel during
    that wait abandons the remaining calls, which JetStream redelivers after
    ack_wait.

    NB: workers that share a queue should use the same ack_wait_s, because
    the last one to start sets it on the shared consumer.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        _validate_queue_name(settings.queue)
        self._settings = settings
        self._nats_servers = nats_servers(settings.nats_url)
        self._nats_token = credentials.read_nats_token(settings.nats_token_file)
        self._function_base_url = function_base_url(settings.gateway_url)
        self._default_policy = default_retry_policy(settings)
        self._durable = jetstream.worker_durable_name(settings.queue)
        # Log context of the lines about this worker rather than one call, so
        # that the lines of several workers in one process name their queue.
        self._log_context = {"queue": settings.queue}
        self._lease_interval_s = settings.ack_wait_s / 3
        self._prefetch = prefetch_size(settings.max_inflight)
        self._capacity = settings.max_inflight + self._prefetch
        self.metrics = WorkerMetrics(queue=settings.queue)

        self._nc = NatsClient()
        self._subscription: PullConsumer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._callback_session: aiohttp.ClientSession | None = None
        self._handler: CallHandler | None = None
        self._status_reader: BatchedStatusReader | None = None
        self._status_writer: StatusWriter | None = None
        self._slots = Slots(settings.max_inflight)
        self._fetcher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._held: dict[asyncio.Task[None], HeldMessage] = {}
        self._held_by_seq: dict[int, HeldMessage] = {}
        self._room_freed = asyncio.Event()
        self._stopping = False
        self._retry_delay_s = constants.RETRY_MIN_S
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
    def queue(self) -> str:
        """Name of the queue this worker serves."""
        return self._settings.queue

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
            # The fetch loop ends by itself when stopping, or on a bug: surface it.
            self._fetcher.result()

    def stop(self) -> None:
        """Stop fetching; `run()` then drains the calls in flight and returns."""
        if self._stopping:
            return
        self._stopping = True
        # Calls waiting for a slot give up and go back to JetStream.
        self._slots.close()
        self._room_freed.set()
        if self._handler is not None:
            # A callback that fails now is dead-lettered at once, so its call
            # is finished and acknowledged instead of run again after a restart.
            self._handler.stop_callbacks()
        if self._fetcher is not None:
            # NB: the fetch loop also checks _stopping on every turn, so that
            # it ends even if a library it awaits swallows the cancellation,
            # as asyncio.wait_for can on Python 3.11 (CPython gh-86296).
            self._fetcher.cancel()

    async def refresh_metrics(self) -> None:
        """Read the consumer's pending counts into the queue-depth gauges."""
        if not self.ready:
            return
        try:
            info = await self._nc.jetstream().consumer_info(
                shared.CALLS_STREAM,
                self._durable,
                timeout=constants.METRICS_REFRESH_TIMEOUT_S,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            logger.debug(
                "reading the consumer state failed: %s",
                _describe(exc),
                extra={"ctx": self._log_context},
            )
            return
        self.metrics.set_queue_state(
            pending=info.num_pending or 0, unacknowledged=info.num_ack_pending or 0
        )

    async def _fetch_calls(self) -> None:
        await self._connect()
        await self._bind_until_done()
        self._renewer = asyncio.create_task(self._renew_leases())
        while not self._stopping:
            await self._wait_for_room()
            if self._stopping:
                break
            assert self._subscription is not None
            batch = min(self._capacity - len(self._held), constants.MAX_FETCH_BATCH)
            try:
                # Calls start as they arrive (`_start_call`), so the request
                # may wait for the whole FETCH_TIMEOUT_S on an idle queue.
                await self._subscription.pull(
                    batch, expires_s=constants.FETCH_TIMEOUT_S
                )
            except nats.errors.Error as exc:
                # The consumer or the JetStream API is gone (deleted, or the
                # server lost its state): wait, then bind again.
                self._begin_outage(f"fetch failed: {_describe(exc)}")
                await self._pause_before_retry()
                await self._bind_until_done()
                continue
            self._retry_delay_s = constants.RETRY_MIN_S

    async def _connect(self) -> None:
        try:
            await self._nc.connect(
                self._nats_servers,
                name="faashub-queue-worker",
                token=self._nats_token,
                max_reconnect_attempts=-1,
                reconnect_time_wait=constants.RECONNECT_WAIT_S,
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
            extra={
                "ctx": {
                    **self._log_context,
                    "url": callback.loggable_url(self._settings.nats_url),
                }
            },
        )

    async def _bind_until_done(self) -> None:
        while not self._stopping:
            try:
                await self._bind()
            except (nats.errors.Error, TimeoutError) as exc:
                self._begin_outage(f"binding the consumer failed: {_describe(exc)}")
                await self._pause_before_retry()
                continue
            self._end_outage()
            return

    async def _bind(self) -> None:
        """Ensure the streams, buckets and durable consumer, then subscribe."""
        js = self._nc.jetstream()
        await jetstream.ensure_calls_stream(js)
        await jetstream.ensure_dead_letter_stream(js)
        status_bucket = await jetstream.ensure_status_bucket(js)
        bodies = await jetstream.ensure_bodies_bucket(js)
        if self._handler is None:
            self._handler = self._new_handler(js, status_bucket, bodies)
        await self._read_duplicate_window(js)
        config = jsapi.ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            filter_subject=queue_filter_subject(self._settings.queue),
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=self._settings.ack_wait_s,
            max_deliver=-1,
            # Unlimited: calls waiting for a retry or a delay stay unacknowledged
            # in JetStream, and a limit would stop new calls once that many
            # wait. Workers pull only what they have room for.
            max_ack_pending=-1,
        )
        # add_consumer creates the consumer, or updates it to this config.
        await js.add_consumer(shared.CALLS_STREAM, config)
        await self._unsubscribe()
        subscription = PullConsumer(
            self._nc,
            stream=shared.CALLS_STREAM,
            durable=self._durable,
            on_message=self._start_call,
        )
        await subscription.subscribe()
        self._subscription = subscription
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

    async def _read_duplicate_window(self, js: JetStreamContext) -> None:
        """Give the status store the calls stream's duplicate window.

        A repeated call id within the window is refused by the worker too
        (`queue_worker.status.repeats_earlier`), so both must use the same one.
        """
        assert self._handler is not None
        info = await js.stream_info(shared.CALLS_STREAM)
        window_s = info.config.duplicate_window
        if window_s:
            self._handler.status_store.duplicate_window_ns = int(window_s * 1e9)

    def _new_handler(
        self, js: JetStreamContext, status_bucket: KeyValue, bodies: ObjectStore
    ) -> CallHandler:
        settings = self._settings
        assert self._session is not None
        secrets = callback_request.secrets_of(
            settings.callback_signing_secret, settings.callback_signing_secret_previous
        )
        guard = CallbackGuard.from_settings(
            deny_networks=settings.callback_deny_networks,
            allow=settings.callback_allow,
        )
        # Callbacks get a session of their own whose resolver checks every
        # address, shared by all calls so that connections are reused.
        self._callback_session = new_callback_session(
            guard, limit=settings.max_inflight
        )
        authorization = credentials.gateway_authorization(
            secret_mount_path=settings.gateway_secret_mount_path,
            user=settings.gateway_user,
            password=settings.gateway_password.get_secret_value(),
        )
        callbacks = CallbackSender(
            self._callback_session,
            CallbackOptions(
                timeout_s=settings.callback_timeout_s,
                attempts=settings.callback_attempts,
                min_wait_s=min(settings.retry_min_wait_s, settings.callback_max_wait_s),
                max_wait_s=settings.callback_max_wait_s,
                jitter=settings.retry_jitter,
                secrets=secrets,
                guard=guard,
            ),
        )
        services = HandlerServices(
            session=self._session,
            functions=FunctionLookup(
                self._session,
                settings.gateway_url,
                policies=PolicyReader(self._default_policy),
                authorization=authorization,
            ),
            status=self._new_status_store(status_bucket),
            dead_letters=DeadLetterWriter(
                js, bodies, max_payload_bytes=lambda: self._nc.max_payload
            ),
            bodies=bodies,
            callbacks=callbacks,
            slots=self._slots,
            metrics=self.metrics,
            replicas=(
                ReplicaUrls(
                    self._session, settings.gateway_url, authorization=authorization
                )
                if settings.invoke_replicas
                else None
            ),
        )
        return CallHandler(
            settings,
            services,
            default_policy=self._default_policy,
            function_base_url=self._function_base_url,
            gateway_authorization=authorization,
        )

    def _new_status_store(self, bucket: KeyValue) -> StatusStore:
        """Return the status store, with batched reads from nats-server 2.11 on.

        nats-server 2.11 added the batched direct get. Against older servers
        the store reads and writes through nats-py's key-value client.
        """
        lease_s = self._settings.ack_wait_s
        version = self._nc.connected_server_version
        if (version.major, version.minor) < (2, 11):
            logger.info(
                "nats-server %s lacks the batched direct get, so status records "
                "are read one at a time",
                version,
                extra={"ctx": self._log_context},
            )
            return StatusStore(bucket, lease_s=lease_s)
        self._status_reader = BatchedStatusReader(
            self._nc,
            stream=f"KV_{shared.STATUS_BUCKET}",
            subject_prefix=f"$KV.{shared.STATUS_BUCKET}.",
            timeout_s=constants.STATUS_REQUEST_TIMEOUT_S,
            max_batch=constants.STATUS_READ_MAX_BATCH,
        )
        self._status_writer = StatusWriter(
            self._nc,
            subject_prefix=f"$KV.{shared.STATUS_BUCKET}.",
            timeout_s=constants.STATUS_REQUEST_TIMEOUT_S,
        )
        return StatusStore(
            bucket,
            lease_s=lease_s,
            reader=self._status_reader,
            writer=self._status_writer,
        )

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except (nats.errors.Error, ValueError) as exc:
            logger.debug(
                "unsubscribe failed: %s",
                _describe(exc),
                extra={"ctx": self._log_context},
            )

    async def _wait_for_room(self) -> None:
        # Refill a prefetch window at a time rather than slot by slot: one
        # fetch of 16 costs about what one fetch of 1 costs.
        while (
            not self._stopping
            and self._held
            and self._capacity - len(self._held) < self._prefetch
        ):
            self._room_freed.clear()
            await self._room_freed.wait()

    def _start_call(self, message: Msg) -> None:
        assert self._handler is not None
        delivery = delivery_of(message)
        stream_seq = delivery.stream_seq
        held = self._held_by_seq.get(stream_seq) if stream_seq is not None else None
        if held is not None:
            # Delivered again while a task still has it: that task goes on,
            # and acknowledges through this latest delivery.
            held.message = message
            logger.debug(
                "message delivered again while held",
                extra={"ctx": {**self._log_context, "stream_seq": stream_seq}},
            )
            return
        held = HeldMessage(message, delivery)
        task = asyncio.create_task(self._handler.handle(held))
        self._held[task] = held
        if stream_seq is not None:
            self._held_by_seq[stream_seq] = held
        task.add_done_callback(self._on_call_done)

    def _on_call_done(self, task: asyncio.Task[None]) -> None:
        held = self._held.pop(task)
        stream_seq = held.delivery.stream_seq
        if stream_seq is not None:
            self._held_by_seq.pop(stream_seq, None)
        self._room_freed.set()
        if not task.cancelled() and task.exception() is not None:
            # A bug, since the handler deals with every failure it expects.
            # The message stays unacknowledged and comes back after ack_wait.
            logger.error(
                "call task failed",
                exc_info=task.exception(),
                extra={"ctx": self._log_context},
            )

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_interval_s)
            for held in list(self._held.values()):
                message = held.message
                if message.is_acked:
                    continue
                try:
                    await message.in_progress()
                except nats.errors.Error as exc:
                    # The call finished meanwhile, or NATS is away, in which
                    # case the outage is logged elsewhere.
                    logger.debug(
                        "lease renewal failed: %s",
                        _describe(exc),
                        extra={"ctx": self._log_context},
                    )

    async def _drain(self) -> None:
        await self._unsubscribe()
        if not self._held:
            return
        grace_s = self._settings.shutdown_grace_s
        logger.info(
            "waiting up to %g s for %d calls in flight",
            grace_s,
            len(self._held),
            extra={"ctx": self._log_context},
        )
        _, pending = await asyncio.wait(set(self._held), timeout=grace_s)
        unfinished = [self._held[task] for task in pending]
        recording = [message for message in unfinished if message.recording]
        running = [message for message in unfinished if not message.recording]
        if recording:
            # Their callbacks are posted, but NATS did not take the final
            # status or the ack in time, as when nats-server is stopped first.
            logger.warning(
                "%d calls finished but not acknowledged after %g s, because "
                "NATS did not respond (JetStream redelivers them after "
                "ack_wait, and they run again): %s",
                len(recording),
                grace_s,
                _name_calls(recording),
                extra={"ctx": self._log_context},
            )
        if running:
            logger.warning(
                "abandoning %d calls still running after %g s (JetStream "
                "redelivers them after ack_wait): %s",
                len(running),
                grace_s,
                _name_calls(running),
                extra={"ctx": self._log_context},
            )

    async def _close(self) -> None:
        self._stopping = True
        self._slots.close()
        tasks = [*self._held, self._fetcher, self._renewer]
        remaining = {task for task in tasks if task is not None and not task.done()}
        for task in remaining:
            task.cancel()
        if remaining:
            _, stuck = await asyncio.wait(remaining, timeout=constants.CLOSE_TIMEOUT_S)
            if stuck:
                logger.warning(
                    "%d tasks did not stop within %g s; closing anyway",
                    len(stuck),
                    constants.CLOSE_TIMEOUT_S,
                    extra={"ctx": self._log_context},
                )
        if self._handler is not None:
            await self._handler.close()
        if self._status_reader is not None:
            reader = self._status_reader
            await reader.close()
            if self._status_writer is not None:
                await self._status_writer.close()
            logger.info(
                "status reads: %d in %d batched requests",
                reader.reads,
                reader.requests,
                extra={
                    "ctx": {
                        **self._log_context,
                        "requests_by_size": reader.batch_sizes,
                    }
                },
            )
        if self._session is not None:
            await self._session.close()
        if self._callback_session is not None:
            await self._callback_session.close()
        # close() flushes buffered acks before it disconnects.
        try:
            await self._nc.close()
        except RuntimeError as exc:
            # uvloop raises when nats-py flushes into a transport that the
            # lost server already closed. The buffered acks are lost anyway.
            logger.warning(
                "closing the nats connection failed: %s",
                _describe(exc),
                extra={"ctx": self._log_context},
            )
        logger.info("queue-worker stopped", extra={"ctx": self._log_context})

    async def _pause_before_retry(self) -> None:
        await asyncio.sleep(self._retry_delay_s)
        self._retry_delay_s = min(self._retry_delay_s * 2, constants.RETRY_MAX_S)

    def _begin_outage(self, reason: str) -> None:
        if self._outage_started_s is not None or self._stopping:
            return
        self._outage_started_s = time.monotonic()
        # The URL names the server to check; a worker started by hand beside
        # `faashub up` needs that hub's --nats-url and --nats-token-file.
        logger.warning(
            "nats unavailable, retrying: %s",
            reason,
            extra={
                "ctx": {
                    **self._log_context,
                    "nats_url": callback.loggable_url(self._settings.nats_url),
                }
            },
        )

    def _end_outage(self) -> None:
        if self._outage_started_s is None:
            return
        lasted_s = time.monotonic() - self._outage_started_s
        self._outage_started_s = None
        logger.info(
            "nats available again after %.1f s",
            lasted_s,
            extra={"ctx": self._log_context},
        )

    async def _on_nats_error(self, exc: Exception) -> None:
        self._begin_outage(jetstream.describe_nats_error(exc))

    async def _on_disconnected(self) -> None:
        self._begin_outage("disconnected")

    async def _on_reconnected(self) -> None:
        self._end_outage()


def prefetch_size(max_inflight: int) -> int:
    """Return how many calls a worker fetches beyond its free slots."""
    return min(
        max(max_inflight // constants.PREFETCH_DIVISOR, 1), constants.MAX_PREFETCH
    )


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
    return http_sessions.new_session(
        limit=max_inflight,
        # Bodies pass through as the function encoded them, with their
        # Content-Encoding header.
        auto_decompress=False,
        # Cookies set by one function must not reach the next call.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": constants.USER_AGENT},
        # Add none of aiohttp's default Accept, Accept-Encoding and
        # Content-Type headers: the function and the callback receiver get
        # the ones that the caller or the function sent.
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
        request_class=http_sessions.LeanRequest,
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _name_calls(held: list[HeldMessage]) -> str:
    """Name up to _NAMED_CALLS_MAX calls by function and call id, and count the rest."""
    ordered = sorted(held, key=lambda message: message.delivery.stream_seq or 0)
    names = []
    for message in ordered[:_NAMED_CALLS_MAX]:
        headers = message.message.headers or {}
        call_id = headers.get(shared.META_CALL_ID)
        if call_id is None:
            # Not a queued call that a gateway wrote.
            names.append(f"stream sequence {message.delivery.stream_seq}")
            continue
        function = headers.get(shared.META_FUNCTION, "")
        namespace = headers.get(shared.META_NAMESPACE, "")
        names.append(f"{function}.{namespace} call {call_id}")
    text = ", ".join(names)
    if len(ordered) > len(names):
        text += f" and {len(ordered) - len(names)} more"
    return text
