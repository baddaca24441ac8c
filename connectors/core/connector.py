"""The half of a connector that every source shares.

`Connector` owns the topic map builder, the HTTP session, the invoker and
the metrics. A source (Kafka, SQS, cron) turns each event into a `Message`
and awaits `deliver(message)`, which invokes every function subscribed to
the message's topic at the same time and returns one `InvocationResult` per
function once all are final. What happens next (commit an offset, delete a
queue message, write a dead letter, publish a reply) is the source's
decision, because only the source talks to its broker.

Each final invocation is logged in one line: `function invoked` at INFO for
a success, `function invocation failed` at WARNING for a failure, with the
function, topic, status, duration, attempts, call id and the source's own
fields (partition and offset for Kafka). Every failure is logged. Successes
beyond `constants.RESULT_LINES_PER_S` in one second are only counted, and a
`function invocations not logged` INFO line with that count follows in the
first second with a success after them, or at `close()`.

With sync invocation and `invoke_replicas` on, the invoker sends calls
straight to function replicas (see `connectors.core.invoker`).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from connectors.core import constants
from connectors.core.invoker import (
    InvocationResult,
    Invoker,
    Message,
    local_address_towards,
    new_session,
)
from connectors.core.metrics import ConnectorMetrics
from connectors.core.retry import RetryPolicy, SleepFunction
from connectors.core.topic_map import EMPTY, TopicMap, TopicMapBuilder
from faashub import __version__, credentials
from faashub.connector_settings import ConnectorSettings
from faashub.logs import LimitedLines
from faashub.replica_urls import ReplicaUrls

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class DeliveryReport:
    """The outcome of delivering one message to its subscribers."""

    message: Message
    results: list[InvocationResult]
    """One per subscribed function; empty when no function subscribes."""

    @property
    def failures(self) -> list[InvocationResult]:
        """The results whose final outcome is a failure."""
        return [result for result in self.results if not result.succeeded]


class Connector:
    """Topic map, invocations, result lines and metrics of one connector.

    `name` is the connector's short name (`kafka`): it becomes the
    `connector` metric label and the `X-Connector` header value
    `<name>-connector`. `start()` opens the HTTP sessions and starts
    refreshing the topic map; `close()` undoes both.
    """

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        name: str,
        sleep: SleepFunction = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.name = name
        self.metrics = ConnectorMetrics(name)
        # Read once: a connector that runs gets its credentials at start, as
        # the gateway reads its own.
        self._authorization = credentials.gateway_authorization(
            secret_mount_path=settings.gateway_secret_mount_path,
            user=settings.gateway_user,
            password=settings.gateway_password.get_secret_value(),
        )
        self.topic_maps = TopicMapBuilder(
            settings.gateway_url,
            rebuild_interval_s=settings.rebuild_interval_s,
            authorization=self._authorization,
            connector=name,
        )
        self.retry = RetryPolicy(
            attempts=settings.retry_attempts,
            min_wait_s=settings.retry_min_wait_s,
            max_wait_s=settings.retry_max_wait_s,
            sleep=sleep,
        )
        self._session: aiohttp.ClientSession | None = None
        self._report_session: aiohttp.ClientSession | None = None
        self._replicas: ReplicaUrls | None = None
        self._invoker: Invoker | None = None
        self._map_task: asyncio.Task[None] | None = None
        self._unrouted_warned_s: dict[str, float] = {}
        self._success_log = _SuccessLog()

    @property
    def topic_map(self) -> TopicMap:
        """The current topic map; empty until the first one is built."""
        return self.topic_maps.current or EMPTY

    @property
    def ready(self) -> bool:
        """Whether the first topic map exists, so messages can be delivered."""
        return self.topic_maps.current is not None

    async def start(self) -> None:
        """Open the HTTP sessions and start refreshing the topic map."""
        settings = self.settings
        user_agent = f"faashub-{self.name}/{__version__}"
        self._session = new_session(user_agent=user_agent)
        replicas = None
        forwarded_for = ""
        if settings.invoke_replicas and not settings.async_invocation:
            # A session of its own, because the invocation session sends no
            # Content-Type and the counts of direct calls are a JSON body.
            self._report_session = new_session(
                user_agent=user_agent, body_content_type=True
            )
            replicas = self._replicas = ReplicaUrls(
                self._report_session,
                settings.gateway_url,
                authorization=self._authorization,
            )
            forwarded_for = await local_address_towards(settings.gateway_url)
        self._invoker = Invoker(
            self._session,
            gateway_url=settings.gateway_url,
            connector=self.name,
            retry=self.retry,
            metrics=self.metrics,
            timeout_s=settings.upstream_timeout_s,
            async_invocation=settings.async_invocation,
            callback_url=settings.callback_url,
            content_type=settings.content_type,
            max_body_bytes=settings.max_body_bytes,
            authorization=self._authorization,
            replicas=replicas,
            forwarded_for=forwarded_for,
        )
        self._map_task = asyncio.create_task(self.topic_maps.run())
        if settings.callback_url and not settings.async_invocation:
            logger.warning(
                "callback_url is ignored with sync invocation: the function's "
                "response comes back to the connector instead"
            )

    async def wait_until_ready(self) -> TopicMap:
        """Wait for the first topic map; sources call this before consuming."""
        if self._map_task is None:
            raise RuntimeError("Connector.start() must run before wait_until_ready().")
        built = asyncio.create_task(self.topic_maps.wait_until_built())
        try:
            await asyncio.wait(
                {built, self._map_task}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not built.done():
                built.cancel()
        if built.cancelled():
            # The builder only ends on a bug: surface it.
            self._map_task.result()
        return built.result()

    async def close(self) -> None:
        """Stop the topic map refresh and close the HTTP sessions."""
        if self._map_task is not None:
            self._map_task.cancel()
            await asyncio.wait({self._map_task})
            self._map_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._replicas is not None:
            # The direct calls counted since the last report.
            await self._replicas.close()
            self._replicas = None
        if self._report_session is not None:
            await self._report_session.close()
            self._report_session = None
        self._success_log.flush()

    async def deliver(self, message: Message) -> DeliveryReport:
        """Invoke every function subscribed to the message's topic, concurrently."""
        if self._invoker is None:
            raise RuntimeError("Connector.start() must run before deliver().")
        functions = self.topic_map.functions_for(message.topic)
        if not functions:
            self._log_unrouted(message)
            return DeliveryReport(message, [])
        if len(functions) == 1:
            results = [await self._invoker.invoke(functions[0], message)]
        else:
            results = list(
                await asyncio.gather(
                    *(self._invoker.invoke(function, message) for function in functions)
                )
            )
        for result in results:
            self._record(result, message)
        return DeliveryReport(message, results)

    def _record(self, result: InvocationResult, message: Message) -> None:
        function = str(result.function)
        self.metrics.invoked(function, result.status, duration_s=result.duration_s)
        if result.succeeded:
            if logger.isEnabledFor(logging.INFO):
                self._success_log.invoked(result, message)
            return
        self.metrics.failed(function)
        context = _result_context(result, message)
        context["error"] = result.error
        logger.warning("function invocation failed", extra={"ctx": context})

    def _log_unrouted(self, message: Message) -> None:
        # A topic can lose its last function while its messages are on the
        # way. Warn once per interval and topic rather than per message.
        now_s = time.monotonic()
        last_s = self._unrouted_warned_s.get(message.topic)
        context = {"topic": message.topic, **message.context}
        if last_s is not None and now_s - last_s < constants.WARNING_INTERVAL_S:
            logger.debug(
                "no function subscribes, message skipped", extra={"ctx": context}
            )
            return
        self._unrouted_warned_s[message.topic] = now_s
        logger.warning(
            "no function subscribes to the topic, message skipped",
            extra={"ctx": context},
        )


class _SuccessLog(LimitedLines):
    """The `function invoked` INFO lines, at most RESULT_LINES_PER_S a second.

    The count of successes not logged goes out in one `function invocations
    not logged` line when the next second with a success begins, or at
    `flush()`, so a quiet period after a burst delays it.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(
            logger,
            "function invoked",
            per_second=constants.RESULT_LINES_PER_S,
            summary="function invocations not logged",
            count_field="invocations",
            clock=clock,
        )

    def invoked(self, result: InvocationResult, message: Message) -> None:
        self.write(lambda: _result_context(result, message))


def _result_context(result: InvocationResult, message: Message) -> dict[str, object]:
    return {
        "function": str(result.function),
        "topic": result.topic,
        "status": result.status,
        "duration_s": round(result.duration_s, 3),
        "attempts": result.attempts,
        "call_id": result.call_id,
        **message.context,
    }
