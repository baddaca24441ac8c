"""The queued-call format: how an async call travels from gateway to worker.

The gateway stores each accepted `/async-function/` request as one JetStream
message. The body is the request body as raw bytes. Everything else travels in
message headers:

* the caller's HTTP headers under their own names, one value each (repeated
  headers are joined with ", ", or "; " for Cookie, as RFC 9110 allows);
* the call's metadata under `Faashub-*` names (function, namespace, method,
  path, query, callback URL, call id, accept time, format version);
* `Nats-Msg-Id`, set to the call id, so JetStream drops a repeat that arrives
  inside the stream's duplicate window.

The subject ends with the call's key (`call_key`), so the gateway can find a
queued call by its id (for status and cancel) with a direct get by subject.

There is no JSON or base64 envelope, so a 1 MiB body costs 1 MiB on the wire,
and `nats stream view` shows a readable call.
"""

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from faashub import constants, errors, names


# Not frozen, because the gateway builds one per accepted call. A frozen
# dataclass sets each of its 15 fields through object.__setattr__, which made
# building one about four times as slow: 2.6 against 0.6 µs, timed on the
# 2-core benchmark VM with Python 3.11. Treat a call as read-only all the
# same, and use dataclasses.replace for a changed copy.
@dataclass(slots=True)
class QueuedCall:
    """One accepted async call, as the gateway stores it and the worker reads it."""

    function: str
    namespace: str
    call_id: str
    method: str = "POST"
    path: str = ""
    """Path after `/async-function/NAME`, with its leading slash, or ""."""
    query: str = ""
    """Raw query string without the leading '?'."""
    callback_url: str = ""
    accepted_at_ns: int = 0
    """When the gateway accepted the call, in Unix nanoseconds."""
    headers: dict[str, str] = field(default_factory=dict)
    """The caller's HTTP headers, hop-by-hop and reserved ones removed."""
    body: bytes = b""
    """The raw body, or b"" when it is stored in the object store (body_ref)."""
    queue: str = constants.DEFAULT_QUEUE
    not_before_ns: int = 0
    """Start no earlier than this Unix time in nanoseconds; 0 means at once."""
    original_call_id: str = ""
    """For a redriven call, the id of the dead-lettered call it replays."""
    body_ref: str = ""
    """Object name in the bodies bucket when the body was too large to inline."""
    body_size: int = 0
    """Size of the body stored under body_ref, in bytes."""

    @property
    def ref(self) -> names.FunctionRef:
        return names.FunctionRef(self.function, self.namespace)

    @property
    def key(self) -> str:
        """The call id as a NATS subject token and key-value key."""
        return call_key(self.call_id)

    def subject(self) -> str:
        """Return the JetStream subject this call is published to."""
        return call_subject(self.queue, self.namespace, self.function, self.key)

    def to_nats_headers(self) -> dict[str, str]:
        """Return the message headers: the caller's, then the metadata."""
        message_headers = dict(self.headers)
        message_headers[constants.META_FORMAT] = constants.QUEUED_CALL_FORMAT
        message_headers[constants.META_FUNCTION] = self.function
        message_headers[constants.META_NAMESPACE] = self.namespace
        message_headers[constants.META_CALL_ID] = self.call_id
        message_headers[constants.META_METHOD] = self.method
        message_headers[constants.META_ACCEPTED_AT_NS] = str(self.accepted_at_ns)
        if self.path:
            message_headers[constants.META_PATH] = self.path
        if self.query:
            message_headers[constants.META_QUERY] = self.query
        if self.callback_url:
            message_headers[constants.META_CALLBACK_URL] = self.callback_url
        if self.queue != constants.DEFAULT_QUEUE:
            message_headers[constants.META_QUEUE] = self.queue
        if self.not_before_ns:
            message_headers[constants.META_NOT_BEFORE_NS] = str(self.not_before_ns)
        if self.original_call_id:
            message_headers[constants.META_ORIGINAL_CALL_ID] = self.original_call_id
        if self.body_ref:
            message_headers[constants.META_BODY_REF] = self.body_ref
            message_headers[constants.META_BODY_SIZE] = str(self.body_size)
        message_headers[constants.NATS_MSG_ID] = self.call_id
        return message_headers

    @classmethod
    def from_nats(
        cls, message_headers: Mapping[str, str] | None, body: bytes
    ) -> "QueuedCall":
        """Rebuild a call from a message; raise InvalidQueuedCall if it is not one."""
        if not message_headers:
            raise errors.InvalidQueuedCall("The message has no headers.")
        version = message_headers.get(constants.META_FORMAT)
        if version != constants.QUEUED_CALL_FORMAT:
            raise errors.InvalidQueuedCall(
                f"Unknown queued-call format {version!r}; this worker reads format "
                f"{constants.QUEUED_CALL_FORMAT!r}. Upgrade the worker or the gateway "
                "so that both use the same version."
            )
        function = _required(message_headers, constants.META_FUNCTION)
        namespace = _required(message_headers, constants.META_NAMESPACE)
        if function not in _VALID_LABELS or namespace not in _VALID_LABELS:
            try:
                names.validate_label(function)
                names.validate_label(namespace, what="namespace")
            except errors.InvalidFunctionName as exc:
                raise errors.InvalidQueuedCall(str(exc)) from exc
            _remember_labels(function, namespace)
        queue = message_headers.get(constants.META_QUEUE, constants.DEFAULT_QUEUE)
        if not is_valid_token(queue):
            raise errors.InvalidQueuedCall(
                f"Invalid {constants.META_QUEUE} header {queue!r}: expected letters, "
                "digits, '-' or '_'."
            )
        caller_headers = {
            name: value
            for name, value in message_headers.items()
            if not name.lower().startswith(_RESERVED_PREFIXES)
        }
        return cls(
            function=function,
            namespace=namespace,
            call_id=_required(message_headers, constants.META_CALL_ID),
            method=_required(message_headers, constants.META_METHOD),
            path=message_headers.get(constants.META_PATH, ""),
            query=message_headers.get(constants.META_QUERY, ""),
            callback_url=message_headers.get(constants.META_CALLBACK_URL, ""),
            accepted_at_ns=_integer(message_headers, constants.META_ACCEPTED_AT_NS),
            headers=caller_headers,
            body=body,
            queue=queue,
            not_before_ns=_integer(message_headers, constants.META_NOT_BEFORE_NS),
            original_call_id=message_headers.get(constants.META_ORIGINAL_CALL_ID, ""),
            body_ref=message_headers.get(constants.META_BODY_REF, ""),
            body_size=_integer(message_headers, constants.META_BODY_SIZE),
        )


_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_RESERVED_PREFIXES = constants.RESERVED_HEADER_PREFIXES

# Function and namespace names that passed `names.validate_label`, so that
# the calls of one function skip the regular expression. The set starts over
# when it is full.
_VALID_LABELS: set[str] = set()
_VALID_LABELS_MAX = 4096


def _remember_labels(*labels: str) -> None:
    if len(_VALID_LABELS) >= _VALID_LABELS_MAX:
        _VALID_LABELS.clear()
    _VALID_LABELS.update(labels)


def is_valid_token(value: str) -> bool:
    """Tell whether `value` can be one NATS subject token and a queue name."""
    return bool(_TOKEN.match(value))


def call_key(call_id: str) -> str:
    """Return the call id itself if it is a safe subject token, else a digest.

    Callers choose their own `X-Call-Id`, which may contain dots or spaces;
    those cannot be a NATS subject token or a key-value key, so such ids are
    replaced by `h-` and the SHA-256 of the id. UUIDs are kept as they are.
    """
    if is_valid_token(call_id) and not call_id.startswith("h-"):
        return call_id
    return "h-" + hashlib.sha256(call_id.encode("utf-8")).hexdigest()


def call_subject(queue: str, namespace: str, function: str, key: str) -> str:
    """Return `faashub.calls.<queue>.<namespace>.<function>.<key>`."""
    return f"{constants.CALLS_SUBJECT_PREFIX}.{queue}.{namespace}.{function}.{key}"


def function_filter_subject(namespace: str, function: str) -> str:
    """Return the subject filter that matches every call of one function."""
    return f"{constants.CALLS_SUBJECT_PREFIX}.*.{namespace}.{function}.*"


def queue_filter_subject(queue: str) -> str:
    """Return the subject filter that matches every call of one queue."""
    return f"{constants.CALLS_SUBJECT_PREFIX}.{queue}.>"


def is_reserved_header(name: str) -> bool:
    """Tell whether a header name belongs to faashub or NATS, not the caller."""
    return name.lower().startswith(constants.RESERVED_HEADER_PREFIXES)


def merge_request_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Turn ASGI request headers into one value per name for a queued call.

    Hop-by-hop headers and Expect (`constants.NOT_REPLAYED`), `Host` and
    `Content-Length` (both recomputed by the worker's HTTP client) and
    reserved `Faashub-*`/`Nats-*` names are dropped.
    The first spelling of a name is kept.
    """
    merged: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1")
        lowered = name.lower()
        if (
            lowered in constants.NOT_REPLAYED
            or lowered in ("host", "content-length")
            or is_reserved_header(lowered)
        ):
            continue
        value = raw_value.decode("latin-1")
        if lowered in spelling:
            separator = "; " if lowered == "cookie" else ", "
            merged[spelling[lowered]] += separator + value
        else:
            spelling[lowered] = name
            merged[name] = value
    return merged


def _integer(message_headers: Mapping[str, str], name: str) -> int:
    value = message_headers.get(name, "0")
    if not value.isdigit():
        raise errors.InvalidQueuedCall(
            f"Invalid {name} header {value!r}: expected a non-negative integer."
        )
    return int(value)


def _required(message_headers: Mapping[str, str], name: str) -> str:
    value = message_headers.get(name)
    if not value:
        raise errors.InvalidQueuedCall(f"The message lacks the {name} header.")
    return value
