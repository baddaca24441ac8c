"""Copy messages that failed for good into the configured dead-letter queue.

With `--dead-letter-queue`, each function that failed for good for a message
gets one copy of the message in that queue. A copy has the same body, the
`faashub-*` attributes below, and as many of the original message attributes
as SQS's limit of 10 attributes leaves room for:

* `faashub-function`: NAME.NAMESPACE that failed;
* `faashub-status`: its last HTTP status (Number);
* `faashub-error`: why, as text, cut to 1000 characters;
* `faashub-attempts`: the receive count of the failing delivery (Number);
* `faashub-source-queue`, `faashub-source-message-id`: where it came from;
* `faashub-attributes-omitted`: how many original attributes did not fit.

A FIFO dead-letter queue gets the source message's group id, or the source
queue's name for a message of a standard queue. Its deduplication id comes
from the message id and the function. So SQS drops a copy sent again after
a crash within its five-minute deduplication interval.

The source looks the queue up with `resolve` before it polls any queue, so
a misspelt name shows at start, in the log and in the health state, rather
than at the first failure. The source deletes the original only after every
copy is written. While a copy cannot be written, `send` logs and tries again
until it is cancelled.
"""

import asyncio
import hashlib
import logging
from typing import Any

from connectors.core.invoker import InvocationResult
from connectors.core.metrics import ConnectorMetrics
from connectors.core.outage import Outage
from connectors.sqs import constants
from connectors.sqs.messages import ReceivedMessage
from connectors.sqs.queues import Queue, QueueError, call, queue_name, resolve_queue

logger = logging.getLogger(__name__)


class DeadLetterQueue:
    """The configured dead-letter queue; `resolve` must succeed before `send`."""

    def __init__(self, client: Any, entry: str, *, metrics: ConnectorMetrics) -> None:
        self._client = client
        self._entry = entry
        self._metrics = metrics
        self._queue: Queue | None = None
        self.problem = ""
        """The last lookup's error; "" before the first and once one succeeds."""
        self._lookup_outage = Outage(
            f"dead-letter queue {queue_name(entry)}",
            consequence="not polling any queue",
        )
        self._outage = Outage(
            f"dead-letter queue {queue_name(entry)}",
            consequence="holding failed messages",
        )

    async def resolve(self) -> Queue:
        """Look the queue up, retrying with logs for as long as SQS refuses."""
        wait_s = constants.QUEUE_RETRY_MIN_S
        while self._queue is None:
            try:
                self._queue = await resolve_queue(
                    self._client,
                    self._entry,
                    subject="dead-letter queue",
                    setting=constants.DEAD_LETTER_QUEUE_SETTING,
                )
            except QueueError as exc:
                self.problem = str(exc)
                self._lookup_outage.begin(self.problem)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, constants.QUEUE_RETRY_MAX_S)
        self._lookup_outage.end()
        self.problem = ""
        return self._queue

    async def send(self, message: ReceivedMessage, result: InvocationResult) -> None:
        """Write one copy of `message` for the failed `result`; retry until written."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("DeadLetterQueue.resolve() must finish before send().")
        wait_s = constants.QUEUE_RETRY_MIN_S
        while True:
            try:
                await call(
                    self._client.send_message,
                    f"dead-letter queue {queue.name}",
                    setting=constants.DEAD_LETTER_QUEUE_SETTING,
                    **dead_letter_request(message, result, queue=queue),
                )
            except QueueError as exc:
                self._outage.begin(str(exc))
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, constants.QUEUE_RETRY_MAX_S)
                continue
            self._outage.end()
            break
        self._metrics.dead_lettered(message.queue_name)
        logger.warning(
            "message written to the dead-letter queue",
            extra={
                "ctx": {
                    **message.context,
                    "function": str(result.function),
                    "call_id": result.call_id,
                    "status": result.status,
                    "dead_letter_queue": queue.name,
                }
            },
        )


def dead_letter_request(
    message: ReceivedMessage, result: InvocationResult, *, queue: Queue
) -> dict[str, Any]:
    """Return the SendMessage arguments of one dead-letter copy."""
    attributes: dict[str, dict[str, Any]] = {
        constants.DLQ_FUNCTION: _string(str(result.function)),
        constants.DLQ_STATUS: {"DataType": "Number", "StringValue": str(result.status)},
        constants.DLQ_ERROR: _string(
            (result.error or f"HTTP {result.status}")[: constants.DLQ_ERROR_MAX_CHARS]
        ),
        constants.DLQ_ATTEMPTS: {
            "DataType": "Number",
            "StringValue": str(message.receive_count),
        },
        constants.DLQ_SOURCE_QUEUE: _string(message.queue_url),
        constants.DLQ_SOURCE_MESSAGE_ID: _string(message.message_id),
    }
    originals = sorted(message.message_attributes.items())
    room = constants.MAX_MESSAGE_ATTRIBUTES - len(attributes)
    if len(originals) > room:
        # One place goes to the attribute that counts the ones left out.
        room -= 1
        omitted = len(originals) - room
        attributes[constants.DLQ_ATTRIBUTES_OMITTED] = {
            "DataType": "Number",
            "StringValue": str(omitted),
        }
    for name, value in originals[:room]:
        attributes.setdefault(name, _copy_attribute(value))

    request: dict[str, Any] = {
        "QueueUrl": queue.url,
        "MessageBody": message.body,
        "MessageAttributes": attributes,
    }
    if queue.fifo:
        request["MessageGroupId"] = message.group_id or message.queue_name
        request["MessageDeduplicationId"] = hashlib.sha256(
            f"{message.queue_url}\n{message.message_id}\n{result.function}".encode()
        ).hexdigest()
    return request


def _string(value: str) -> dict[str, Any]:
    # SQS rejects an empty string value.
    return {"DataType": "String", "StringValue": value or "-"}


def _copy_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """Return an attribute as SendMessage takes it, from ReceiveMessage's form."""
    copied: dict[str, Any] = {"DataType": value["DataType"]}
    if "StringValue" in value:
        copied["StringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        copied["BinaryValue"] = value["BinaryValue"]
    return copied
