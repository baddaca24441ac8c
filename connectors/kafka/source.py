"""The Kafka source: a consumer group whose records invoke functions.

`KafkaSource.run(connector)` works in this order:

1. wait for the first topic map, so no record is consumed before the
   connector can route it;
2. connect the consumer (and the producer for dead letters and replies),
   retrying with logs for as long as no broker responds;
3. subscribe to the selected topics (`connectors.kafka.subscription`), and
   subscribe again whenever the topic map or the cluster's topics change;
4. fetch records from the partitions with room in their buffer and hand
   them to the dispatcher, which runs them in the configured ordering
   (`connectors.kafka.dispatch`). Handling a record means delivering it to
   every subscribed function, then writing a dead letter for each function
   that failed for good, and a reply for each success when a reply topic
   applies;
5. commit, every commit interval, the highest offset of each partition
   below which every record is final (`connectors.kafka.offsets`).

An offset is committed only once every record before it is final, so a
crash repeats at most the records that were in flight or that finished
after the last commit; it never skips one. When partitions are revoked in a
rebalance, their running records get up to drain_timeout_s and their final
offsets are committed before the partitions go. Stopping works the same way
for every partition.

A change of the subscribed topics revokes every partition, because the
group rebalances. aiokafka 0.14's `subscribe()` drops the assignment before
it calls `on_partitions_revoked`, and `commit()` then raises
`IllegalStateError`. So the source drains and commits the partitions itself
before it calls `subscribe()`, and the listener finds nothing left to do.

While the broker is lost after start (listing topics or fetching fails),
`state` names the failure, so `/healthz` returns 503, and the lag gauges
are removed rather than left at their last value.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from connectors.core.connector import Connector
from connectors.core.outage import Outage
from connectors.core.source import until_stopped
from connectors.kafka import client_config, constants
from connectors.kafka.client_logs import limited_client_logs
from connectors.kafka.dispatch import Dispatcher, PartitionWork, Record
from connectors.kafka.publisher import RecordPublisher, dead_letter_matcher
from connectors.kafka.records import record_message
from connectors.kafka.subscription import TopicSelection, select_topics
from connectors.kafka.unreadable import UnreadableRecords
from faashub import __version__
from faashub.connector_settings import KafkaConnectorSettings, topic_list
from faashub.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# Seconds a commit may take. A reachable broker completes a commit in
# milliseconds, but while no broker responds, aiokafka 0.14 looks for the
# group coordinator without a deadline, which would block a revoke or a stop.
COMMIT_TIMEOUT_S = 10.0


class KafkaSource:
    """Consumes the selected topics and delivers each record through a Connector."""

    def __init__(self, settings: KafkaConnectorSettings) -> None:
        self._settings = settings
        self._client_options = client_config.client_options(settings)
        self._explicit_topics = topic_list(settings.topics)
        self._dead_letter_topics = dead_letter_matcher(settings.dead_letter_topic)

        self._connector: Connector | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._publisher: RecordPublisher | None = None
        self._dispatcher: Dispatcher | None = None
        self._unreadable = UnreadableRecords(group_id=settings.group_id)
        self._subscribed: frozenset[str] = frozenset()
        self._paused: set[TopicPartition] = set()
        self._missing_warned: set[str] = set()
        self._invalid_warned: set[tuple[str, tuple[str, str]]] = set()
        self._reserved_warned: set[str] = set()
        self._subscription_changed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._revoke_lock = asyncio.Lock()
        self._revoking: asyncio.Task[None] | None = None
        self._revoking_works: list[PartitionWork] = []
        self._broker_failure = ""
        self._state = "waiting to start"
        self._broker_outage = Outage("kafka", consequence="not consuming")
        self._commit_outage = Outage(
            "kafka offset commit", consequence="holding offsets"
        )

    @property
    def state(self) -> str:
        """Return "ready" while consuming, else what the source is doing."""
        if self._state == "ready" and self._broker_outage.active:
            return f"kafka unavailable: {self._broker_failure}"
        return self._state

    def stop(self) -> None:
        """Ask `run()` to stop fetching, drain the records in flight and return."""
        self._stop_requested.set()

    async def run(self, connector: Connector) -> None:
        """Consume and deliver until `stop()`; see the module docstring."""
        with limited_client_logs():
            await self._run(connector)

    async def _run(self, connector: Connector) -> None:
        self._connector = connector
        self._state = "waiting for the first topic map from the gateway"
        if not await self._until_stopped(connector.wait_until_ready()):
            return
        if not await self._connect():
            return
        helpers: list[asyncio.Task[None]] = []
        try:
            self._dispatcher = Dispatcher(
                ordering=self._settings.ordering,
                max_inflight=self._settings.max_inflight,
                handle=self._handle_record,
            )
            helpers = [
                asyncio.create_task(self._maintain_subscription(connector)),
                asyncio.create_task(self._commit_periodically()),
            ]
            self._state = "ready"
            logger.info("kafka connector consuming", extra={"ctx": self._summary()})
            await self._fetch_until_stopped(helpers)
            self._state = "stopping"
            await _cancel(helpers)
            await self._drain()
        except asyncio.CancelledError:
            # A second signal: abandon the records in flight at once.
            self._state = "stopping"
            await _cancel(helpers)
            await self._abandon()
            raise
        finally:
            await self._close_clients()

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> bool:
        """Await `awaitable` unless stop() comes first; return whether it finished."""
        return await until_stopped(awaitable, self._stop_requested)

    # Connection ---------------------------------------------------------------

    async def _connect(self) -> bool:
        """Start the consumer and producer, retrying; return False if stopped."""
        wait_s = constants.CONNECT_RETRY_MIN_S
        self._state = "connecting to kafka"
        while not self._stop_requested.is_set():
            consumer = self._new_consumer()
            producer = self._new_producer()
            try:
                started = await self._until_stopped(_start_clients(consumer, producer))
            except (KafkaError, OSError) as exc:
                await _stop_clients(consumer, producer)
                reason = _describe(exc)
                self._state = f"kafka unavailable: {reason}"
                self._broker_outage.begin(
                    f"cannot reach {self._settings.brokers}: {reason}"
                )
                await self._until_stopped(asyncio.sleep(wait_s))
                wait_s = min(wait_s * 2, constants.CONNECT_RETRY_MAX_S)
                continue
            if not started:
                await _stop_clients(consumer, producer)
                return False
            self._broker_outage.end()
            self._consumer, self._producer = consumer, producer
            assert self._connector is not None
            # Async invocations return 202 without the function's response,
            # so they have nothing to reply with.
            sync = not self._settings.async_invocation
            self._publisher = RecordPublisher(
                producer,
                dead_letter_topic=self._settings.dead_letter_topic,
                reply_topic=self._settings.reply_topic if sync else "",
                reply_topic_header=self._settings.reply_topic_header if sync else "",
                metrics=self._connector.metrics,
            )
            logger.info(
                "connected to kafka", extra={"ctx": {"brokers": self._settings.brokers}}
            )
            return True
        return False

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        session_timeout_ms = int(settings.session_timeout_s * 1000)
        return AIOKafkaConsumer(
            **self._client_options,
            group_id=settings.group_id,
            client_id=f"faashub-kafka-{__version__}",
            enable_auto_commit=False,
            auto_offset_reset="earliest"
            if settings.initial_offset == "oldest"
            else "latest",
            max_poll_records=constants.FETCH_MAX_RECORDS,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(session_timeout_ms // 3, 100),
            # The group waits for this member's revoke handler, which drains
            # for up to drain_timeout_s and then commits.
            rebalance_timeout_ms=max(
                session_timeout_ms, int((settings.drain_timeout_s + 10) * 1000)
            ),
        )

    def _new_producer(self) -> AIOKafkaProducer | None:
        settings = self._settings
        # Replies exist only for sync invocations, whose responses come back.
        replies = not settings.async_invocation and bool(
            settings.reply_topic or settings.reply_topic_header
        )
        if not settings.dead_letter_topic and not replies:
            return None
        return AIOKafkaProducer(
            **self._client_options,
            client_id=f"faashub-kafka-{__version__}",
            acks="all",
            request_timeout_ms=constants.PRODUCER_REQUEST_TIMEOUT_MS,
            max_request_size=constants.PRODUCER_MAX_REQUEST_BYTES,
        )

    async def _close_clients(self) -> None:
        if self._consumer is not None:
            # Leaves the group, so the partitions move on at once.
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    # Subscription --------------------------------------------------------------

    async def _maintain_subscription(self, connector: Connector) -> None:
        """Subscribe to the selected topics; re-check on map change or interval."""
        assert self._consumer is not None
        while True:
            version = connector.topic_maps.version
            try:
                cluster_topics = await self._consumer.topics()
            except KafkaError as exc:
                self._broker_unavailable(f"listing topics failed: {_describe(exc)}")
            else:
                self._broker_available()
                await self._update_subscription(connector, cluster_topics)
            # While the broker is lost, the topics are listed more often, so
            # /healthz returns 200 soon after the broker is back.
            timeout_s = self._settings.rebuild_interval_s
            if self._broker_outage.active:
                timeout_s = min(timeout_s, constants.CONNECT_RETRY_MIN_S)
            try:
                async with asyncio.timeout(timeout_s):
                    await connector.topic_maps.wait_for_change(version)
            except TimeoutError:
                pass

    async def _update_subscription(
        self, connector: Connector, cluster_topics: set[str]
    ) -> None:
        assert self._consumer is not None
        requested = self._explicit_topics or list(connector.topic_map.entries)
        selection = select_topics(
            requested,
            cluster_topics,
            dead_letter_topics=self._dead_letter_topics,
            reply_topic=self._settings.reply_topic,
        )
        self._log_left_out(connector, selection)
        if selection.subscribed == self._subscribed:
            return
        # subscribe() drops the assignment before the listener runs, and
        # unsubscribe() does not call the listener, so the records of the
        # current assignment finish and are committed here first.
        await self._revoke_before_change()
        if selection.subscribed:
            self._consumer.subscribe(
                topics=sorted(selection.subscribed), listener=_Rebalance(self)
            )
        else:
            self._consumer.unsubscribe()
        self._subscribed = selection.subscribed
        self._subscription_changed.set()
        logger.info(
            "subscribed",
            extra={"ctx": {"topics": ",".join(sorted(selection.subscribed)) or "none"}},
        )

    def _log_left_out(self, connector: Connector, selection: TopicSelection) -> None:
        """Warn once about each requested name that the subscription leaves out."""
        for topic in sorted(selection.missing - self._missing_warned):
            if self._explicit_topics:
                logger.warning(
                    "topic not found in the cluster; subscribing once it exists",
                    extra={"ctx": {"topic": topic, "setting": "--topics"}},
                )
            else:
                # With topics from the annotations, the name may be another
                # connector's, such as an SQS queue, so this is no fault.
                logger.info(
                    "topic not found in the Kafka cluster; subscribing once it "
                    "exists, unless it is another connector's",
                    extra={"ctx": {"topic": topic}},
                )
        self._missing_warned = set(selection.missing)

        # Once per function that names the topic, so a later function naming
        # the same invalid topic is reported too.
        invalid = {
            (topic, requester)
            for topic in selection.invalid
            for requester in self._requesters(connector, topic)
        }
        for topic, (field, value) in sorted(invalid - self._invalid_warned):
            logger.warning(
                "invalid Kafka topic name, not subscribing: a topic name has 1 "
                "to %d ASCII letters, digits, '.', '_' or '-'",
                constants.MAX_TOPIC_NAME_CHARS,
                extra={"ctx": {"topic": topic, field: value}},
            )
        self._invalid_warned = invalid

        # Every scheduled function names the cron topic, so only an explicit
        # --topics entry is worth a warning.
        reserved = selection.reserved if self._explicit_topics else frozenset()
        for topic in sorted(reserved - self._reserved_warned):
            logger.warning(
                "topic reserved for the cron connector, not subscribing",
                extra={"ctx": {"topic": topic, "setting": "--topics"}},
            )
        self._reserved_warned = set(reserved)

    def _requesters(self, connector: Connector, topic: str) -> list[tuple[str, str]]:
        """Return who requested `topic`: the --topics setting or its functions."""
        if self._explicit_topics:
            return [("setting", "--topics")]
        functions = connector.topic_map.entries.get(topic, frozenset())
        return [("function", str(function)) for function in sorted(functions)]

    # Rebalance -------------------------------------------------------------------

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Start tracking partitions the group gave to this connector."""
        assert self._dispatcher is not None
        for partition in partitions:
            self._dispatcher.assign(partition)
            # A new assignment starts unpaused.
            self._paused.discard(partition)
        if partitions:
            logger.info(
                "partitions assigned",
                extra={"ctx": {"partitions": _partition_list(partitions)}},
            )

    async def _revoke_before_change(self) -> None:
        """Revoke the whole assignment while aiokafka still has it.

        The revoke runs in a task of its own, so cancelling the subscription
        task on stop does not cut the drain short: `_drain()` waits for it
        through the revoke lock, and `_abandon()` cancels it.
        """
        assert self._consumer is not None
        self._revoking = asyncio.create_task(
            self._revoke(set(self._consumer.assignment()))
        )
        try:
            await asyncio.shield(self._revoking)
        finally:
            if self._revoking.done():
                self._revoking = None

    async def _revoke(self, partitions: set[TopicPartition]) -> None:
        """Finish or abandon the partitions' records, then commit their offsets.

        Partitions revoked earlier, before a change of the subscription, are
        skipped, so the listener that aiokafka calls afterwards does nothing.
        """
        assert self._dispatcher is not None and self._connector is not None
        async with self._revoke_lock:
            dispatcher = self._dispatcher
            partitions = {p for p in partitions if dispatcher.work_for(p) is not None}
            if partitions:
                await self._revoke_tracked(partitions)

    async def _revoke_tracked(self, partitions: set[TopicPartition]) -> None:
        assert self._dispatcher is not None and self._connector is not None
        self._pause(partitions)
        self._paused -= partitions
        self._unreadable.forget(partitions)
        self._revoking_works = [
            work
            for partition in partitions
            if (work := self._dispatcher.work_for(partition)) is not None
        ]
        try:
            report = await self._dispatcher.revoke(
                partitions, timeout_s=self._settings.drain_timeout_s
            )
        finally:
            self._revoking_works = []
        await self._commit(report.works)
        for work in report.works:
            self._connector.metrics.forget_lag(
                work.partition.topic, partition=str(work.partition.partition)
            )
        logger.info(
            "partitions revoked",
            extra={
                "ctx": {
                    "partitions": _partition_list(partitions),
                    "finished": report.finished,
                    "abandoned": report.abandoned,
                    "dropped": report.dropped,
                }
            },
        )

    # Fetch and handle ------------------------------------------------------------

    async def _fetch_until_stopped(self, helpers: list[asyncio.Task[None]]) -> None:
        """Fetch from partitions with room in their buffer and dispatch the records.

        A partition whose buffer is full is left out of the fetch, so its
        prefetched records stay in aiokafka until there is room.
        """
        assert self._consumer is not None and self._dispatcher is not None
        assert self._connector is not None
        consumer, dispatcher = self._consumer, self._dispatcher
        metrics = self._connector.metrics
        last_poll_s = time.monotonic()
        while not self._stop_requested.is_set():
            _raise_if_failed(helpers)
            if not self._subscribed:
                self._subscription_changed.clear()
                await self._until_stopped(self._subscription_changed.wait())
                continue
            partitions: list[TopicPartition] = []
            if dispatcher.works:
                partitions = dispatcher.fetchable()
                self._resume(partitions)
                if not partitions:
                    if (
                        time.monotonic() - last_poll_s
                        > constants.STALLED_POLL_INTERVAL_S
                    ):
                        await self._poll_while_stalled()
                        last_poll_s = time.monotonic()
                    await self._wait_for_capacity()
                    continue
            try:
                batches = await consumer.getmany(
                    *partitions,
                    timeout_ms=constants.FETCH_TIMEOUT_MS,
                    max_records=constants.FETCH_MAX_RECORDS,
                )
            except KafkaError as exc:
                self._broker_unavailable(f"fetch failed: {_describe(exc)}")
                await self._until_stopped(asyncio.sleep(constants.CONNECT_RETRY_MIN_S))
                continue
            except UnicodeDecodeError as exc:
                fetched = partitions or [work.partition for work in dispatcher.works]
                await self._unreadable.recover(consumer, dispatcher, fetched, exc)
                continue
            last_poll_s = time.monotonic()
            for partition, records in batches.items():
                work = dispatcher.work_for(partition)
                if work is None:
                    # Revoked while the fetch was on its way.
                    continue
                metrics.consumed(partition.topic, len(records))
                dispatcher.submit(work, records)
                self._unreadable.next_offsets[partition] = records[-1].offset + 1

    async def _wait_for_capacity(self) -> None:
        """Wait until a record finishes, stop() is called, or a second passes."""
        assert self._dispatcher is not None
        capacity = self._dispatcher.capacity_freed
        capacity.clear()
        try:
            async with asyncio.timeout(constants.STALL_WAIT_S):
                await self._until_stopped(capacity.wait())
        except TimeoutError:
            pass

    async def _poll_while_stalled(self) -> None:
        """Tell the group this member is alive although every buffer is full.

        aiokafka takes a member that does not fetch for max_poll_interval out
        of the group. Pausing every partition lets getmany() run without
        returning records; aiokafka drops their prefetched records, which is
        cheap next to a stall this long.
        """
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        for partition in assignment - self._paused:
            try:
                self._consumer.pause(partition)
            except IllegalStateError:
                continue
            self._paused.add(partition)
        try:
            await self._consumer.getmany(timeout_ms=0)
        except KafkaError as exc:
            self._broker_unavailable(f"fetch failed: {_describe(exc)}")

    def _pause(self, partitions: set[TopicPartition]) -> None:
        """Stop aiokafka fetching records of partitions being revoked."""
        assert self._consumer is not None
        for partition in partitions:
            try:
                self._consumer.pause(partition)
            except IllegalStateError:
                # No longer assigned in aiokafka, so not fetched either.
                continue

    def _resume(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        for partition in self._paused.intersection(partitions):
            self._paused.discard(partition)
            try:
                self._consumer.resume(partition)
            except IllegalStateError:
                # Revoked meanwhile; its pause went with the assignment.
                pass

    async def _handle_record(self, record: Record) -> None:
        """Deliver one record, then write its dead letters and replies."""
        assert self._connector is not None and self._publisher is not None
        if self._unreadable:
            reason = self._unreadable.pop_reason(record)
            if reason is not None:
                functions = self._connector.topic_map.functions_for(record.topic)
                for result in self._unreadable.results(record, reason, functions):
                    await self._publisher.dead_letter(record, result)
                return
        message = record_message(record, group_id=self._settings.group_id)
        report = await self._connector.deliver(message)
        for result in report.results:
            if not result.succeeded:
                await self._publisher.dead_letter(record, result)
            elif self._publisher.may_reply(record):
                await self._publisher.reply(record, result)

    # Commits -----------------------------------------------------------------------

    async def _commit_periodically(self) -> None:
        assert self._dispatcher is not None
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            await self._commit(self._dispatcher.works)

    async def _commit(self, works: list[PartitionWork]) -> None:
        """Commit each partition's final offset if it moved since the last commit."""
        assert self._consumer is not None and self._connector is not None
        async with self._commit_lock:
            offsets: dict[TopicPartition, int] = {}
            for work in works:
                offset = work.offsets.committable()
                if offset is not None and offset != work.committed:
                    offsets[work.partition] = offset
            if offsets:
                try:
                    async with asyncio.timeout(COMMIT_TIMEOUT_S):
                        await self._consumer.commit(offsets)
                except TimeoutError:
                    self._commit_outage.begin(
                        f"commit timed out after {COMMIT_TIMEOUT_S:g} s"
                    )
                    return
                except (KafkaError, IllegalStateError) as exc:
                    # After a rebalance the new owner commits these records.
                    self._commit_outage.begin(_describe(exc))
                    return
                self._commit_outage.end()
                for work in works:
                    if work.partition in offsets:
                        work.committed = offsets[work.partition]
            self._update_lag(works)

    def _update_lag(self, works: list[PartitionWork]) -> None:
        assert self._consumer is not None and self._connector is not None
        if self._broker_outage.active:
            # The last high watermark is out of date, so the gauges stay removed.
            return
        assigned = self._consumer.assignment()
        for work in works:
            # highwater() raises AssertionError for a partition that is not
            # assigned, as after subscribe() or in a rebalance.
            if work.partition not in assigned:
                continue
            highwater = self._consumer.highwater(work.partition)
            position = work.offsets.committable()
            if position is None:
                position = work.committed
            if highwater is None or position is None:
                continue
            self._connector.metrics.set_lag(
                work.partition.topic,
                max(highwater - position, 0),
                partition=str(work.partition.partition),
            )

    # Stop ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self._dispatcher is not None
        partitions = {work.partition for work in self._dispatcher.works}
        pending = sum(work.offsets.pending for work in self._dispatcher.works)
        if pending:
            logger.info(
                "draining: waiting up to %g s for records in flight",
                self._settings.drain_timeout_s,
                extra={"ctx": {"pending": pending}},
            )
        await self._revoke(partitions)

    async def _abandon(self) -> None:
        if self._dispatcher is None:
            return
        # A revoke before a subscription change has taken its partitions out
        # of the dispatcher, so their records are cancelled here.
        revoking = self._revoking_works
        if self._revoking is not None:
            self._revoking.cancel()
        for work in revoking:
            for task in work.handling:
                task.cancel()
        works = self._dispatcher.cancel_all() + revoking
        try:
            async with asyncio.timeout(2.0):
                await self._commit(works)
        except (TimeoutError, KafkaError):
            logger.warning("final commit skipped; uncommitted records come back later")

    # Broker outage -------------------------------------------------------------------

    def _broker_unavailable(self, failure: str) -> None:
        """Report the broker lost: log it, name it in `state`, drop the lag gauges."""
        assert self._connector is not None
        if not self._broker_outage.active and self._dispatcher is not None:
            for work in self._dispatcher.works:
                self._connector.metrics.forget_lag(
                    work.partition.topic, partition=str(work.partition.partition)
                )
        self._broker_failure = failure
        self._broker_outage.begin(failure)

    def _broker_available(self) -> None:
        self._broker_outage.end()
        self._broker_failure = ""

    def _summary(self) -> dict[str, object]:
        settings = self._settings
        return {
            "brokers": settings.brokers,
            "topics": settings.topics,
            "group": settings.group_id,
            "ordering": settings.ordering,
            "invocation": "async" if settings.async_invocation else "sync",
            "max_inflight": settings.max_inflight,
            "dead_letter_topic": settings.dead_letter_topic or "none",
        }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Passes the group's rebalance events to the source."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source._revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source.on_assigned(set(assigned))


def _partition_list(partitions: set[TopicPartition]) -> str:
    return ",".join(
        f"{partition.topic}/{partition.partition}" for partition in sorted(partitions)
    )


async def _start_clients(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer | None
) -> None:
    await consumer.start()
    if producer is not None:
        await producer.start()


async def _stop_clients(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer | None
) -> None:
    await consumer.stop()
    if producer is not None:
        await producer.stop()


def _describe(exc: BaseException) -> str:
    """Return the exception's class and message, the class only once."""
    name, text = exc.__class__.__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def _raise_if_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled():
            # Helpers run until cancelled; an end is a bug worth surfacing.
            task.result()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    await cancel_and_wait(tasks)
