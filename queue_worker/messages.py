"""What the worker reads from a JetStream message besides the call itself.

`HeldMessage` is a message that a task of the worker has. JetStream may
deliver the same stream message again while the task runs, after a NATS
restart lost the consumer's latest delivery state. The worker then keeps
the one task and acknowledges through the latest delivery. `delivery_of`
returns the stream sequence, the delivery count and the time
the message was stored. `salvage_call` rebuilds as much of an invalid
message as it can, so that it can be kept as a dead letter with its body
and caller headers instead of being thrown away. The function, namespace,
queue and call key come from the subject, and the rest from whatever
headers are readable. A message whose subject does not name a function cannot be
kept and is terminated by the caller.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from nats.aio.msg import Msg

from faashub import constants, names
from faashub import errors as shared_errors
from faashub.queued_call import QueuedCall, is_reserved_header, is_valid_token

# Token counts of a JetStream reply subject without a domain, and the minimum
# with one. nats-py 2.16 accepts the same two.
_V1_TOKENS = 9
_V2_MIN_TOKENS = 11

# An HTTP method is a token (RFC 9110, section 9.1).
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """A message's position in the stream and its delivery count."""

    stream_seq: int | None
    num_delivered: int
    stored_at_ns: int | None


@dataclass(slots=True)
class HeldMessage:
    """A message in the worker's hands, updated to its latest delivery."""

    message: Msg
    delivery: DeliveryInfo
    """Read once: nats-py parses the reply subject anew on every access."""
    recording: bool = False
    """True once the call's outcome is final and only storing it and the ack remain."""


def delivery_of(message: Msg) -> DeliveryInfo:
    """Return the message's delivery metadata, with None for the parts it lacks.

    JetStream puts the metadata in the reply subject, in one of two layouts:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
    <time ns>.<pending>`, or the same fields after a domain and an account
    hash, with more tokens after them. The subject is split here rather than
    through nats-py's `Msg.metadata`, which builds a `datetime` and three
    more objects per message.
    """
    tokens = (message.reply or "").split(".")
    if len(tokens) == _V1_TOKENS:
        fields = tokens[4:8]
    elif len(tokens) >= _V2_MIN_TOKENS:
        fields = tokens[6:10]
    else:
        fields = []
    if (
        len(fields) == 4
        and tokens[0] == "$JS"
        and tokens[1] == "ACK"
        and all(field.isdigit() for field in fields)
    ):
        delivered, stream_seq, _, stored_at_ns = fields
        return DeliveryInfo(
            stream_seq=int(stream_seq),
            num_delivered=int(delivered),
            stored_at_ns=int(stored_at_ns),
        )
    return DeliveryInfo(stream_seq=None, num_delivered=1, stored_at_ns=None)


def salvage_call(
    subject: str, message_headers: Mapping[str, str] | None, body: bytes
) -> QueuedCall | None:
    """Rebuild a valid call from an invalid message, or return None."""
    tokens = subject.split(".")
    prefix = constants.CALLS_SUBJECT_PREFIX.split(".")
    if len(tokens) != len(prefix) + 4 or tokens[: len(prefix)] != prefix:
        return None
    queue, namespace, function, key = tokens[len(prefix) :]
    try:
        names.validate_label(function)
        names.validate_label(namespace, what="namespace")
    except shared_errors.InvalidFunctionName:
        return None
    if not is_valid_token(queue) or not is_valid_token(key):
        return None

    found = message_headers or {}
    method = found.get(constants.META_METHOD, "")
    body_size = found.get(constants.META_BODY_SIZE, "")
    body_ref = found.get(constants.META_BODY_REF, "")
    return QueuedCall(
        function=function,
        namespace=namespace,
        call_id=found.get(constants.META_CALL_ID) or key,
        method=method if _METHOD.match(method) else "POST",
        path=found.get(constants.META_PATH, ""),
        query=found.get(constants.META_QUERY, ""),
        callback_url=found.get(constants.META_CALLBACK_URL, ""),
        accepted_at_ns=_integer(found.get(constants.META_ACCEPTED_AT_NS)),
        headers={
            name: value for name, value in found.items() if not is_reserved_header(name)
        },
        body=body,
        queue=queue,
        not_before_ns=_integer(found.get(constants.META_NOT_BEFORE_NS)),
        original_call_id=found.get(constants.META_ORIGINAL_CALL_ID, ""),
        body_ref=body_ref if body_size.isdigit() else "",
        body_size=int(body_size) if body_ref and body_size.isdigit() else 0,
    )


def _integer(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0
