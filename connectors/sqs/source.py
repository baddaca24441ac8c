"""The SQS source: queues whose messages invoke the subscribed functions.

`SqsSource.run(connector)` works in this order:

1. wait for the first topic map, so no message is received before the
   connector can route it. With `--dead-letter-queue`, look that queue up
   too, retrying with logs while SQS rejects the request, so no message is
   received before a failure has somewhere to go;
2. look each configured queue up (URL, FIFO, redrive policy), all at the
   same time, retrying with logs while SQS rejects the request. Then
   long-poll it with ReceiveMessage while a function subscribes to it. A
   queue no function subscribes to is not polled, so its messages wait in
   SQS;
3. run each message (`connectors.sqs.dispatch`): standard queues in
   parallel, FIFO queues one message at a time per message group, with at
   most max_inflight messages held;
4. settle each message (`_handle`): delete it once every subscribed
   function has a final outcome, or hide it for a backoff after a temporary
   failure, so SQS hands it out again (`connectors.sqs.delivery` explains
   what happens with several functions);
5. while a function runs, extend the visibility of the messages held, so no
   other consumer gets them.

A function fails for good on a status that is not retried, or at the last
attempt: the retry_attempts-th delivery, or the maxReceiveCount-th when the
queue's redrive policy allows fewer, because SQS moves the message away
after that one. The message then ends in one of three ways. With
`--dead-letter-queue`, each failed function gets a copy there and the
message is deleted. Else, when the queue has a redrive policy, the message
goes back to the queue at once, without another invocation, until SQS moves
it to the policy's dead-letter queue. Else an ERROR line is logged and the
message is deleted.

On stop the pollers stop, the messages in flight get up to drain_timeout_s,
and every message still held becomes visible again at once.
"""

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from connectors.core import constants as core_constants
from connectors.core.connector import Connector
from connectors.core.invoker import InvocationResult
from connectors.core.outage import Outage
from connectors.core.retry import is_retryable
from connectors.core.source import until_stopped
from connectors.sqs import constants
from connectors.sqs.dead_letters import DeadLetterQueue
from connectors.sqs.delivery import OutcomeMemory, Outcomes, SqsConnector
from connectors.sqs.dispatch import Capacity, Dispatcher
from connectors.sqs.messages import ReceivedMessage, function_message, received_message
from connectors.sqs.queues import (
    Queue,
    QueueError,
    call,
    open_client,
    queue_name,
    resolve_queue,
)
from connectors.sqs.settle import QueueSettler
from faashub import errors
from faashub.connector_settings import (
    SQS_MAX_VISIBILITY_S,
    SqsConnectorSettings,
    sqs_queue_list,
)
from faashub.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class SqsSource:
    """Polls the configured queues and delivers each message through a Connector."""

    def __init__(self, settings: SqsConnectorSettings) -> None:
        self._settings = settings
        self._entries = sqs_queue_list(settings.sqs_queues)
        if not self._entries:
            raise errors.SettingsError(
                "No SQS queue is configured: set --sqs-queues to queue URLs or names, "
                "comma-separated."
            )
        self._connector: SqsConnector | None = None
        self._client: Any = None
        self._dead_letters: DeadLetterQueue | None = None
        self._dispatcher: Dispatcher | None = None
        self._capacity = Capacity(settings.max_inflight)
        self._memory = OutcomeMemory()
        self._queues: dict[str, Queue] = {}
        self._settlers: dict[str, QueueSettler] = {}
        # Messages received and not settled yet, per queue URL and id().
        self._held: dict[str, dict[int, ReceivedMessage]] = {}
        # Serializes visibility changes of a queue, so that an extension in
        # flight cannot undo a retry's backoff.
        self._visibility_locks: dict[str, asyncio.Lock] = {}
        self._queue_problems: dict[str, str] = {}
        self._unrouted_warned_s: dict[str, float] = {}
        self._stop_requested = asyncio.Event()
        self._state = "waiting to start"

    @property
    def state(self) -> str:
        """Return "ready" while every queue is polled, else what is missing."""
        if self._dead_letters is not None and self._dead_letters.problem:
            return f"not polling: {self._dead_letters.problem}"
        if self._state != "ready":
            return self._state
        for entry in self._entries:
            if entry not in self._queues:
                problem = self._queue_problems.get(entry, "looking it up")
                return f"queue {queue_name(entry)} not available: {problem}"
        return "ready"

    @property
    def held(self) -> int:
        """Messages received and not settled yet."""
        return sum(len(messages) for messages in self._held.values())

    def stop(self) -> None:
        """Ask `run()` to stop polling, drain the messages in flight and return."""
        self._stop_requested.set()

    async def run(self, connector: Connector) -> None:
        """Poll and deliver until `stop()`; see the module docstring."""
        if not isinstance(connector, SqsConnector):
            raise TypeError(
                f"SqsSource needs an SqsConnector, not {type(connector).__name__}."
            )
        self._connector = connector
        self._state = "waiting for the first topic map from the gateway"
        if not await self._until_stopped(connector.wait_until_ready()):
            return
        async with open_client(self._settings) as client:
            self._client = client
            if self._settings.dead_letter_queue:
                self._dead_letters = DeadLetterQueue(
                    client, self._settings.dead_letter_queue, metrics=connector.metrics
                )
                self._state = "looking the dead-letter queue up"
                if not await self._until_stopped(self._resolve_dead_letters()):
                    return
            self._dispatcher = Dispatcher(
                handle=self._handle, release=self._release, capacity=self._capacity
            )
            await self._run_pollers()

    async def _run_pollers(self) -> None:
        assert self._dispatcher is not None
        pollers = [asyncio.create_task(self._poll(entry)) for entry in self._entries]
        extender = asyncio.create_task(self._extend_visibility())
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            self._state = "ready"
            logger.info("sqs connector polling", extra={"ctx": self._summary()})
            await asyncio.wait({stop, *pollers}, return_when=asyncio.FIRST_COMPLETED)
            _raise_if_failed(pollers)
            self._state = "stopping"
            await _cancel(pollers)
            self._dispatcher.stop()
            await self._drain()
        except BaseException:
            # A second signal, or a poller that failed on a bug: abandon the
            # messages in flight at once and give them back to their queues.
            self._state = "stopping"
            await _cancel(pollers)
            await _cancel(list(self._dispatcher.tasks))
            await asyncio.shield(self._release_held())
            raise
        finally:
            await _cancel([extender, stop])
            for settler in self._settlers.values():
                await settler.close()

    async def _resolve_dead_letters(self) -> None:
        assert self._dead_letters is not None
        queue = await self._dead_letters.resolve()
        logger.info(
            "dead-letter queue found",
            extra={"ctx": {"queue": queue.name, "url": queue.url, "fifo": queue.fifo}},
        )

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> bool:
        """Await `awaitable` unless stop() comes first; return whether it finished."""
        return await until_stopped(awaitable, self._stop_requested)

    # Polling ------------------------------------------------------------------

    async def _poll(self, entry: str) -> None:
        """Look the queue up, then receive its messages until cancelled."""
        assert self._connector is not None and self._dispatcher is not None
        queue = await self._resolve(entry)
        connector, dispatcher = self._connector, self._dispatcher
        outage = Outage(f"sqs queue {queue.name}", consequence="not polling it")
        wait_s = constants.QUEUE_RETRY_MIN_S
        while True:
            if not connector.subscribers(queue):
                await self._wait_for_subscribers(queue)
                continue
            count = await self._capacity.reserve(self._settings.batch_size)
            try:
                response = await call(
                    self._client.receive_message,
                    f"queue {queue.name}",
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=count,
                    WaitTimeSeconds=self._settings.wait_time_s,
                    VisibilityTimeout=self._settings.visibility_timeout_s,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except QueueError as exc:
                self._capacity.release(count)
                outage.begin(str(exc))
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, constants.QUEUE_RETRY_MAX_S)
                continue
            except BaseException:
                # Cancelled during the long poll: messages SQS handed out in
                # that moment stay hidden until their visibility timeout.
                self._capacity.release(count)
                raise
            outage.end()
            wait_s = constants.QUEUE_RETRY_MIN_S
            raw_messages = response.get("Messages", [])
            self._capacity.release(count - len(raw_messages))
            if raw_messages:
                connector.metrics.consumed(queue.name, len(raw_messages))
            now_s = time.monotonic()
            held = self._held[queue.url]
            for raw in raw_messages:
                message = received_message(
                    raw, queue_url=queue.url, queue_name=queue.name, now_s=now_s
                )
                message.visible_at_s = now_s + self._settings.visibility_timeout_s
                held[id(message)] = message
                dispatcher.submit(message)

    async def _resolve(self, entry: str) -> Queue:
        """Look a queue up, retrying with logs for as long as SQS refuses."""
        outage = Outage(f"sqs queue {queue_name(entry)}", consequence="not polling it")
        wait_s = constants.QUEUE_RETRY_MIN_S
        while True:
            try:
                queue = await resolve_queue(self._client, entry)
            except QueueError as exc:
                self._queue_problems[entry] = str(exc)
                outage.begin(str(exc))
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, constants.QUEUE_RETRY_MAX_S)
                continue
            outage.end()
            break

        self._settlers[queue.url] = QueueSettler(self._client, queue)
        self._held[queue.url] = {}
        self._visibility_locks[queue.url] = asyncio.Lock()
        self._queues[entry] = queue
        self._queue_problems.pop(entry, None)
        self._warn_about_redrive(queue)
        logger.info(
            "polling queue",
            extra={
                "ctx": {
                    "queue": queue.name,
                    "url": queue.url,
                    "fifo": queue.fifo,
                    "max_receive_count": queue.max_receive_count or "none",
                }
            },
        )
        return queue

    def _warn_about_redrive(self, queue: Queue) -> None:
        limit = queue.max_receive_count
        attempts = self._settings.retry_attempts
        if limit is not None and limit < attempts:
            logger.warning(
                "the queue's redrive policy allows fewer receives than "
                "retry_attempts; it caps the attempts",
                extra={
                    "ctx": {
                        "queue": queue.name,
                        "max_receive_count": limit,
                        "retry_attempts": attempts,
                    }
                },
            )

    async def _wait_for_subscribers(self, queue: Queue) -> None:
        assert self._connector is not None
        topic_maps = self._connector.topic_maps
        try:
            async with asyncio.timeout(self._settings.rebuild_interval_s):
                await topic_maps.wait_for_change(topic_maps.version)
        except TimeoutError:
            pass

    # Handling -----------------------------------------------------------------

    async def _handle(self, message: ReceivedMessage) -> bool:
        """Deliver and settle one message; return False if it went back unfinished."""
        try:
            return await self._deliver_and_settle(message)
        except QueueError as exc:
            self._held[message.queue_url].pop(id(message), None)
            logger.warning(
                "message not settled; it returns after its visibility timeout",
                extra={"ctx": {**message.context, "error": str(exc)}},
            )
            return False
        except Exception:
            self._held[message.queue_url].pop(id(message), None)
            logger.exception(
                "message handling failed; it returns after its visibility timeout",
                extra={"ctx": message.context},
            )
            return False

    async def _deliver_and_settle(self, message: ReceivedMessage) -> bool:
        assert self._connector is not None
        connector = self._connector
        queue = self._queues_by_url(message.queue_url)
        functions = connector.subscribers(queue)
        if not functions:
            # The last subscriber went away after the receive.
            self._log_unrouted(message)
            await self._release([message])
            return False

        # Invoke only the functions without a final outcome for this message.
        outcomes = self._memory.get(queue.url, message.message_id)
        pending = outcomes.pending(functions)
        retries: list[InvocationResult] = []
        newly_failed = False
        if pending:
            function_request = function_message(message)
            report = await connector.deliver_to(function_request, pending)
            final_attempt = message.receive_count >= self._max_attempts(queue)
            for result in report.results:
                if result.attempts:
                    # The invoker sends one request per delivery, so the
                    # receive count is the attempt number.
                    result = dataclasses.replace(result, attempts=message.receive_count)
                if result.succeeded:
                    outcomes.succeeded.add(result.function)
                elif is_retryable(result.status) and not final_attempt:
                    retries.append(result)
                    continue
                else:
                    outcomes.failed[result.function] = result
                    newly_failed = True
                connector.record_final(result, function_request)

        if retries:
            self._memory.keep(queue.url, message.message_id, outcomes)
            await self._retry_later(message, retries)
            return False
        return await self._finish(queue, message, outcomes, newly_failed=newly_failed)

    async def _finish(
        self,
        queue: Queue,
        message: ReceivedMessage,
        outcomes: Outcomes,
        *,
        newly_failed: bool,
    ) -> bool:
        """Settle a message whose functions all have a final outcome."""
        if outcomes.failed and self._dead_letters is not None:
            for result in outcomes.failed.values():
                await self._dead_letters.send(message, result)
        elif outcomes.failed and queue.max_receive_count is not None:
            # The queue's redrive policy moves the message once its receive
            # count passes maxReceiveCount. Until then it comes back here, and
            # goes back at once without another invocation.
            self._memory.keep(queue.url, message.message_id, outcomes)
            if newly_failed:
                logger.warning(
                    "message failed for good, left to the queue's redrive policy",
                    extra={
                        "ctx": {
                            **message.context,
                            "functions": _function_list(outcomes),
                            "max_receive_count": queue.max_receive_count,
                        }
                    },
                )
            await self._release([message])
            return False
        elif outcomes.failed:
            logger.error(
                "message failed for good and deleted: no dead-letter queue is "
                "configured and the queue has no redrive policy",
                extra={
                    "ctx": {**message.context, "functions": _function_list(outcomes)}
                },
            )
        await self._delete(message)
        return True

    def _max_attempts(self, queue: Queue) -> int:
        attempts = self._settings.retry_attempts
        if queue.max_receive_count is not None:
            # SQS's redrive moves the message after its maxReceiveCount-th
            # delivery, so that one is the last: it gets the final log line
            # and metrics, and a dead letter when one is configured.
            return min(attempts, queue.max_receive_count)
        return attempts

    async def _retry_later(
        self, message: ReceivedMessage, results: list[InvocationResult]
    ) -> None:
        """Hide the message for the backoff of its failed functions."""
        assert self._connector is not None
        visibility_s = self._retry_visibility_s(message, results)
        for result in results:
            self._connector.metrics.retried(str(result.function))
            logger.warning(
                "invocation failed, retrying after the visibility timeout",
                extra={
                    "ctx": {
                        "function": str(result.function),
                        "status": result.status,
                        "error": result.error,
                        "attempt": message.receive_count,
                        "visibility_s": visibility_s,
                        "call_id": result.call_id,
                        **message.context,
                    }
                },
            )
        await self._change_visibility(message, visibility_s)

    def _retry_visibility_s(
        self, message: ReceivedMessage, results: list[InvocationResult]
    ) -> int:
        """Return the whole seconds to hide a message before its next attempt.

        The wait grows with the receive count, as `RetryPolicy` computes it,
        and honours a Retry-After within retry_max_wait_s. SQS takes whole
        seconds, at most 12 hours since the receive, so the wait is rounded
        and capped there.
        """
        assert self._connector is not None
        policy = self._connector.visibility_retry
        longest_s = 1
        for result in results:
            retry_after_s = policy.retry_after_s(
                result.status, result.headers.get("Retry-After")
            )
            wait_s = policy.wait_s(message.receive_count, retry_after_s=retry_after_s)
            seconds = max(1, round(wait_s))
            if retry_after_s is not None:
                seconds = max(seconds, math.ceil(min(retry_after_s, policy.max_wait_s)))
            longest_s = max(longest_s, seconds)
        in_flight_s = math.ceil(time.monotonic() - message.received_s)
        return max(0, min(longest_s, SQS_MAX_VISIBILITY_S - in_flight_s))

    def _log_unrouted(self, message: ReceivedMessage) -> None:
        now_s = time.monotonic()
        last_s = self._unrouted_warned_s.get(message.queue_url)
        if last_s is not None and now_s - last_s < core_constants.WARNING_INTERVAL_S:
            return
        self._unrouted_warned_s[message.queue_url] = now_s
        logger.warning(
            "no function subscribes to the queue any more, message returned",
            extra={"ctx": message.context},
        )

    # Settling ---------------------------------------------------------------

    def _queues_by_url(self, url: str) -> Queue:
        for queue in self._queues.values():
            if queue.url == url:
                return queue
        raise KeyError(url)

    async def _delete(self, message: ReceivedMessage) -> None:
        self._held[message.queue_url].pop(id(message), None)
        self._memory.forget(message.queue_url, message.message_id)
        await self._settlers[message.queue_url].delete(message)

    async def _change_visibility(
        self, message: ReceivedMessage, timeout_s: int
    ) -> None:
        async with self._visibility_locks[message.queue_url]:
            self._held[message.queue_url].pop(id(message), None)
            await self._settlers[message.queue_url].change_visibility(
                message, timeout_s
            )

    async def _release(self, messages: list[ReceivedMessage]) -> None:
        """Make messages visible again at once, so SQS hands them out again."""
        by_queue: dict[str, list[ReceivedMessage]] = {}
        for message in messages:
            by_queue.setdefault(message.queue_url, []).append(message)
        for url, queue_messages in by_queue.items():
            async with self._visibility_locks[url]:
                held = self._held[url]
                for message in queue_messages:
                    held.pop(id(message), None)
                await self._settlers[url].change_visibilities(
                    [(message, 0) for message in queue_messages]
                )

    async def _extend_visibility(self) -> None:
        """Keep the held messages hidden while their functions run."""
        timeout_s = self._settings.visibility_timeout_s
        check_s = min(
            constants.EXTEND_CHECK_MAX_S,
            max(0.1, timeout_s * constants.EXTEND_CHECK_SHARE),
        )
        threshold_s = timeout_s * constants.EXTEND_WHEN_REMAINING
        while True:
            await asyncio.sleep(check_s)
            for url, held in self._held.items():
                now_s = time.monotonic()
                due = [m for m in held.values() if m.visible_at_s - now_s < threshold_s]
                if not due:
                    continue
                async with self._visibility_locks[url]:
                    # Settled while this loop waited for the lock.
                    due = [message for message in due if id(message) in held]
                    # NOTE: SQS rejects an extension past 12 hours since the
                    # receive; the message then comes back to the queue.
                    extended = await self._settlers[url].change_visibilities(
                        [(message, timeout_s) for message in due]
                    )
                for message in extended:
                    message.visible_at_s = now_s + timeout_s
                if extended:
                    logger.debug(
                        "visibility extended",
                        extra={
                            "ctx": {"queue": queue_name(url), "count": len(extended)}
                        },
                    )

    # Stop -------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self._dispatcher is not None
        tasks = set(self._dispatcher.tasks)
        if tasks:
            logger.info(
                "draining: waiting up to %g s for messages in flight",
                self._settings.drain_timeout_s,
                extra={"ctx": {"messages": self.held}},
            )
            _, unfinished = await asyncio.wait(
                tasks, timeout=self._settings.drain_timeout_s
            )
            await _cancel(list(unfinished))
        await self._release_held()

    async def _release_held(self) -> None:
        """Make every message still held visible again at once."""
        remaining = [
            message for held in self._held.values() for message in held.values()
        ]
        if not remaining:
            return
        await self._release(remaining)
        logger.info(
            "unfinished messages returned to their queues",
            extra={"ctx": {"messages": len(remaining)}},
        )

    def _summary(self) -> dict[str, object]:
        settings = self._settings
        return {
            "queues": ",".join(queue_name(entry) for entry in self._entries),
            "endpoint": settings.endpoint_url or "aws",
            "invocation": "async" if settings.async_invocation else "sync",
            "max_inflight": settings.max_inflight,
            "visibility_timeout_s": settings.visibility_timeout_s,
            "dead_letter_queue": settings.dead_letter_queue or "redrive policy",
        }


def _function_list(outcomes: Outcomes) -> str:
    return ",".join(sorted(str(function) for function in outcomes.failed))


def _raise_if_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled():
            # Pollers run until cancelled; an end is a bug worth surfacing.
            task.result()


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    await cancel_and_wait(tasks)
