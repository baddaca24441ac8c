"""Deliver one SQS message to the functions that have not handled it yet.

SQS retries a message by handing it out again, so the connector sends one
request per function and delivery, and waits out a temporary failure as a
visibility timeout rather than in memory (`connectors.sqs.source`). That
keeps a retry alive across a connector crash, and the receive count
(ApproximateReceiveCount) becomes the attempt number.

One message often goes to several functions. When some succeed and others
fail, only the failed ones get the message again: `OutcomeMemory` records
which functions succeeded, and which failed for good, per message id while
the message is still in the queue. The memory is in-process, so after a
connector restart every function gets a message that comes back again. The
X-Call-Id is the same per message and function, so the gateway can drop
the repeat of an async call and a function can recognise it.
Delivery is at least once.
"""

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from connectors.core.connector import Connector, DeliveryReport
from connectors.core.invoker import InvocationResult, Message
from connectors.core.retry import RetryPolicy, SleepFunction
from connectors.core.topic_map import serves_names
from connectors.sqs import constants
from connectors.sqs.queues import Queue, queue_name
from faashub import names
from faashub.connector_settings import SqsConnectorSettings, sqs_queue_list


class SqsConnector(Connector):
    """A `Connector` whose invoker sends one request per function and delivery.

    `visibility_retry` is the configured retry policy: its attempts and
    waits apply across deliveries, as visibility timeouts. The core invoker
    still waits, without counting attempts, while the gateway refuses
    connections.
    """

    def __init__(
        self, settings: SqsConnectorSettings, *, sleep: SleepFunction = asyncio.sleep
    ) -> None:
        super().__init__(settings, name=constants.CONNECTOR_NAME, sleep=sleep)
        queues = sqs_queue_list(settings.sqs_queues)
        self.topic_maps.serves = serves_names(
            [*queues, *(queue_name(entry) for entry in queues)]
        )
        self.visibility_retry = self.retry
        self.retry = RetryPolicy(
            attempts=1,
            min_wait_s=settings.retry_min_wait_s,
            max_wait_s=settings.retry_max_wait_s,
            sleep=sleep,
        )

    def subscribers(self, queue: Queue) -> tuple[names.FunctionRef, ...]:
        """Return the functions subscribed to `queue` by its name or its URL."""
        topic_map = self.topic_map
        by_name = topic_map.functions_for(queue.name)
        by_url = topic_map.functions_for(queue.url)
        if not by_url:
            return by_name
        return tuple(sorted(set(by_name) | set(by_url)))

    async def deliver_to(
        self, message: Message, functions: tuple[names.FunctionRef, ...]
    ) -> DeliveryReport:
        """Invoke each of `functions` once with `message`, concurrently.

        Unlike `deliver`, this logs and counts nothing: only the caller knows
        whether a failure is final or comes back as a retry.
        """
        if self._invoker is None:
            raise RuntimeError("Connector.start() must run before deliver_to().")
        invoker = self._invoker
        if len(functions) == 1:
            results = [await invoker.invoke(functions[0], message)]
        else:
            results = list(
                await asyncio.gather(
                    *(invoker.invoke(function, message) for function in functions)
                )
            )
        return DeliveryReport(message, results)

    def record_final(self, result: InvocationResult, message: Message) -> None:
        """Log and count a final outcome, as `deliver` does for other sources."""
        self._record(result, message)


@dataclass(slots=True)
class Outcomes:
    """The outcome of each function for one message, so far."""

    succeeded: set[names.FunctionRef] = field(default_factory=set)
    failed: dict[names.FunctionRef, InvocationResult] = field(default_factory=dict)
    """Functions that failed for good, with their final result."""

    def pending(
        self, functions: tuple[names.FunctionRef, ...]
    ) -> tuple[names.FunctionRef, ...]:
        """Return the functions among `functions` without a final outcome."""
        return tuple(
            function
            for function in functions
            if function not in self.succeeded and function not in self.failed
        )


class OutcomeMemory:
    """The `Outcomes` of messages still in their queue, oldest forgotten first."""

    def __init__(self, *, max_messages: int = constants.MAX_REMEMBERED_MESSAGES):
        self._max_messages = max_messages
        self._outcomes: OrderedDict[tuple[str, str], Outcomes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._outcomes)

    def get(self, queue_url: str, message_id: str) -> Outcomes:
        """Return the message's outcomes so far; new ones on its first delivery."""
        outcomes = self._outcomes.get((queue_url, message_id))
        return Outcomes() if outcomes is None else outcomes

    def keep(self, queue_url: str, message_id: str, outcomes: Outcomes) -> None:
        """Remember `outcomes` until the message is forgotten or evicted."""
        key = (queue_url, message_id)
        self._outcomes[key] = outcomes
        self._outcomes.move_to_end(key)
        while len(self._outcomes) > self._max_messages:
            self._outcomes.popitem(last=False)

    def forget(self, queue_url: str, message_id: str) -> None:
        """Drop a message that left the queue."""
        self._outcomes.pop((queue_url, message_id), None)
