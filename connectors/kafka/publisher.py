"""Write dead letters and replies back to Kafka.

A dead letter is the failed record as it was, value, key and headers, plus
headers that describe the failure: `faashub-function`, `faashub-status`,
`faashub-error`, `faashub-attempts`, `faashub-call-id` and the source
`faashub-source-topic`, `-partition`, `-offset` and `-timestamp`. It goes
to the dead-letter topic, `<topic>.dlq` by default, one record per function
that failed. The broker must acknowledge it before the source offset is
committed. A failed record is therefore either in the dead-letter topic or
delivered again, unless dead letters are turned off with an empty topic
setting, in which case it is logged at ERROR and skipped. If the broker
keeps failing, the write is retried (and logged) until it succeeds or the
partition is taken away. A dead letter too large for the broker is written
once more without its value, with `faashub-value-omitted` giving the value's
size. The value itself stays in the source topic until retention removes it.

A reply is a successful sync response: the function's body as the value,
the source record's key, and headers `X-Call-Id`, `X-Function-Name`,
`X-Function-Status`, `Content-Type`, `X-Topic`, `X-Kafka-Partition` and
`X-Kafka-Offset`. It goes to the topic named by the record's reply header,
or else to the configured reply topic, with the same retries.
"""

import asyncio
import logging
import re

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from connectors.core.invoker import InvocationResult
from connectors.core.metrics import ConnectorMetrics
from connectors.core.outage import Outage
from connectors.kafka import constants
from connectors.kafka.dispatch import Record

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Maximum length of the error text in a dead letter, in characters.
_MAX_ERROR_CHARACTERS = 1000


class RecordPublisher:
    """Writes dead letters and replies with one producer."""

    def __init__(
        self,
        producer: AIOKafkaProducer | None,
        *,
        dead_letter_topic: str,
        reply_topic: str,
        reply_topic_header: str,
        metrics: ConnectorMetrics,
    ) -> None:
        self._producer = producer
        self._dead_letter_topic = dead_letter_topic
        self._reply_topic = reply_topic
        self._reply_topic_header = reply_topic_header
        self._metrics = metrics
        self._outage = Outage("kafka producer", consequence="holding the offsets")
        self._warned_reply_topics: set[str] = set()

    async def dead_letter(self, record: Record, result: InvocationResult) -> None:
        """Write `record` to its dead-letter topic, noting why `result` failed."""
        context = _record_context(record, result)
        if not self._dead_letter_topic or self._producer is None:
            logger.error(
                "record failed for good and no dead-letter topic is set; skipped",
                extra={"ctx": {**context, "error": result.error}},
            )
            return
        topic = dead_letter_topic_for(self._dead_letter_topic, record.topic)
        headers = _dead_letter_headers(record, result)
        value = record.value
        try:
            await self._send(topic, value, key=record.key, headers=headers)
        except MessageSizeTooLargeError:
            size = len(value or b"")
            headers.append((constants.DLQ_VALUE_OMITTED, f"{size} bytes".encode()))
            logger.warning(
                "dead letter too large for the broker, writing it without its value",
                extra={"ctx": {**context, "value_bytes": size}},
            )
            await self._send(topic, None, key=record.key, headers=headers)
        self._metrics.dead_lettered(record.topic)
        logger.warning(
            "record dead-lettered",
            extra={"ctx": {**context, "dead_letter_topic": topic}},
        )

    def may_reply(self, record: Record) -> bool:
        """Tell cheaply whether a success of `record` may need a reply."""
        if self._producer is None:
            return False
        return bool(self._reply_topic or (self._reply_topic_header and record.headers))

    async def reply(self, record: Record, result: InvocationResult) -> None:
        """Publish a successful response to the record's reply topic, if any."""
        topic = self._reply_topic_for(record)
        if not topic or self._producer is None:
            return
        headers: Headers = [
            (constants.REPLY_CALL_ID, result.call_id.encode()),
            (constants.REPLY_FUNCTION, str(result.function).encode()),
            (constants.REPLY_STATUS, str(result.status).encode()),
            (constants.REPLY_SOURCE_TOPIC, record.topic.encode()),
            (constants.REPLY_SOURCE_PARTITION, str(record.partition).encode()),
            (constants.REPLY_SOURCE_OFFSET, str(record.offset).encode()),
        ]
        content_type = result.headers.get("Content-Type")
        if content_type:
            headers.append((constants.REPLY_CONTENT_TYPE, content_type.encode()))
        await self._send(topic, result.body, key=record.key, headers=headers)
        logger.debug(
            "reply published",
            extra={"ctx": {**_record_context(record, result), "reply_topic": topic}},
        )

    def _reply_topic_for(self, record: Record) -> str:
        if self._reply_topic_header:
            for name, value in record.headers:
                if name != self._reply_topic_header or value is None:
                    continue
                topic: str = value.decode("utf-8", "replace")
                if _KAFKA_TOPIC.match(topic):
                    return topic
                if topic not in self._warned_reply_topics:
                    self._warned_reply_topics.add(topic)
                    logger.warning(
                        "invalid reply topic in a record header, using the "
                        "configured one",
                        extra={"ctx": {"header": name, "value": topic[:100]}},
                    )
        return self._reply_topic

    async def _send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Headers
    ) -> None:
        """Send until the broker acknowledges; raise only MessageSizeTooLargeError."""
        assert self._producer is not None
        wait_s = constants.PUBLISH_RETRY_MIN_S
        while True:
            try:
                await self._producer.send_and_wait(
                    topic, value, key=key, headers=headers
                )
            except MessageSizeTooLargeError:
                raise
            except KafkaError as exc:
                self._outage.begin(f"writing to {topic} failed: {_describe(exc)}")
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, constants.PUBLISH_RETRY_MAX_S)
                continue
            self._outage.end()
            return


def dead_letter_topic_for(pattern: str, topic: str) -> str:
    """Return the dead-letter topic of `topic`: `pattern` with `{topic}` filled in."""
    return pattern.replace("{topic}", topic)


def dead_letter_matcher(pattern: str) -> re.Pattern[str] | None:
    """Return a regex matching every dead-letter topic `pattern` can produce."""
    if not pattern:
        return None
    parts = [re.escape(part) for part in pattern.split("{topic}")]
    return re.compile("(?:.+)".join(parts) + r"\Z")


def _dead_letter_headers(record: Record, result: InvocationResult) -> Headers:
    headers: Headers = [(name, value or b"") for name, value in record.headers]
    error = result.error[:_MAX_ERROR_CHARACTERS]
    headers += [
        (constants.DLQ_FUNCTION, str(result.function).encode()),
        (constants.DLQ_STATUS, str(result.status).encode()),
        (constants.DLQ_ERROR, error.encode()),
        (constants.DLQ_ATTEMPTS, str(result.attempts).encode()),
        (constants.DLQ_CALL_ID, result.call_id.encode()),
        (constants.DLQ_SOURCE_TOPIC, record.topic.encode()),
        (constants.DLQ_SOURCE_PARTITION, str(record.partition).encode()),
        (constants.DLQ_SOURCE_OFFSET, str(record.offset).encode()),
        (constants.DLQ_SOURCE_TIMESTAMP, str(record.timestamp).encode()),
    ]
    return headers


def _record_context(record: Record, result: InvocationResult) -> dict[str, object]:
    return {
        "function": str(result.function),
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "status": result.status,
        "call_id": result.call_id,
    }


def _describe(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__
