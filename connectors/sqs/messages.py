"""Turn an SQS message into the message and headers a function receives.

The body is the message body as UTF-8 (SQS bodies are text). The headers are:

* `X-SQS-Message-ID`, `X-SQS-Queue-URL`, `X-SQS-Receive-Count` (the
  ApproximateReceiveCount, 1 on the first delivery) and
  `X-SQS-Sent-Timestamp` (Unix milliseconds);
* `X-SQS-Message-Group-ID` for a message of a FIFO queue;
* one `X-SQS-Attr-<Name>` per message attribute. String and Number values
  are sent as text. A Binary value, or a string with control characters or
  spaces at either end, is sent as base64 followed by
  `X-SQS-Attr-<Name>-Enc: b64`. SQS attribute names contain only letters,
  digits, '-', '_' and '.', which HTTP allows in header names;
* `traceparent` and `tracestate` (W3C Trace Context) as they are, besides
  their `X-SQS-Attr-*` copies, when the message has String attributes of
  these names (in any case) whose values are valid header text, so that the
  call joins the sender's trace.

`ReceivedMessage` keeps what the source needs to settle the message later:
the receipt handle of this delivery and the receive count.
"""

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from connectors.core.invoker import Message
from connectors.sqs import constants

# W3C Trace Context headers, passed on as they are.
TRACE_HEADERS = ("traceparent", "tracestate")

# Text that a header value can carry as it is: no control characters, and no
# space or tab at either end, where HTTP parsers strip it.
_SENDABLE_TEXT = re.compile(
    r"(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?"
)


@dataclass(slots=True, eq=False)
class ReceivedMessage:
    """One delivery of an SQS message, as ReceiveMessage returned it."""

    queue_url: str
    queue_name: str
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    """ApproximateReceiveCount: 1 on the first delivery. It counts attempts."""
    group_id: str = ""
    """MessageGroupId on a FIFO queue, else empty."""
    attributes: dict[str, str] = field(default_factory=dict)
    message_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    received_s: float = 0.0
    """time.monotonic() at the receive."""
    visible_at_s: float = 0.0
    """time.monotonic() at which the message becomes visible to others again."""

    @property
    def context(self) -> dict[str, object]:
        """Fields added to every log line about this message."""
        context: dict[str, object] = {
            "queue": self.queue_name,
            "message_id": self.message_id,
            "receive_count": self.receive_count,
        }
        if self.group_id:
            context["group"] = self.group_id
        return context


def received_message(
    raw: dict[str, Any], *, queue_url: str, queue_name: str, now_s: float
) -> ReceivedMessage:
    """Return the delivery described by one entry of ReceiveMessage's Messages."""
    attributes: dict[str, str] = raw.get("Attributes", {})
    return ReceivedMessage(
        queue_url=queue_url,
        queue_name=queue_name,
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
        group_id=attributes.get("MessageGroupId", ""),
        attributes=attributes,
        message_attributes=raw.get("MessageAttributes", {}),
        received_s=now_s,
    )


def function_message(received: ReceivedMessage) -> Message:
    """Return the message that delivers `received` to its queue's functions."""
    headers = [
        (constants.MESSAGE_ID, received.message_id),
        (constants.QUEUE_URL, received.queue_url),
        (constants.RECEIVE_COUNT, str(received.receive_count)),
    ]
    sent = received.attributes.get("SentTimestamp")
    if sent:
        headers.append((constants.SENT_TIMESTAMP, sent))
    if received.group_id:
        headers.append((constants.MESSAGE_GROUP_ID, received.group_id))
    for name, value in sorted(received.message_attributes.items()):
        add_attribute_headers(headers, name, value)
    headers.extend(trace_context_headers(received.message_attributes))
    return Message(
        topic=received.queue_name,
        body=received.body.encode("utf-8"),
        headers=headers,
        identity=message_identity(received),
        context=received.context,
    )


def trace_context_headers(
    attributes: dict[str, dict[str, Any]],
) -> list[tuple[str, str]]:
    """Return the W3C `traceparent` and `tracestate` headers of the attributes."""
    found: list[tuple[str, str]] = []
    for name, value in sorted(attributes.items()):
        lowered = name.lower()
        if lowered not in TRACE_HEADERS or "StringValue" not in value:
            continue
        text = str(value["StringValue"])
        if not text or not _SENDABLE_TEXT.fullmatch(text):
            continue
        # W3C Trace Context allows one traceparent.
        if lowered == "traceparent" and any(n == lowered for n, _ in found):
            continue
        found.append((lowered, text))
    return found


def message_identity(received: ReceivedMessage) -> str:
    """Return the message's stable identity, which seeds its call ids.

    The MessageId stays the same across deliveries of one message, so each
    function gets the same X-Call-Id every time the message comes back.
    """
    return f"sqs/{received.queue_url}/{received.message_id}"


def add_attribute_headers(
    headers: list[tuple[str, str]], name: str, value: dict[str, Any]
) -> None:
    """Append the header(s) that carry one message attribute."""
    header = constants.ATTRIBUTE_PREFIX + name
    if "StringValue" in value:
        text = str(value["StringValue"])
        if _SENDABLE_TEXT.fullmatch(text):
            headers.append((header, text))
            return
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    else:
        binary = value.get("BinaryValue", b"")
        encoded = base64.b64encode(bytes(binary)).decode("ascii")
    headers.append((header, encoded))
    headers.append((header + constants.ENCODING_SUFFIX, constants.BASE64))
