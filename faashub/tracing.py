"""Optional OpenTelemetry span export for the gateway, queue-worker and connectors.

W3C Trace Context headers (`traceparent`, `tracestate`) travel with every
call whether or not this module exports anything. Export is off by default
and is switched on by the standard OpenTelemetry variables, read once by
`setup`, which each component's entry point calls before it serves:

* on when `OTEL_TRACES_EXPORTER` is `otlp`, or when
  `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set;
* off whenever `OTEL_SDK_DISABLED` is `true` or `OTEL_TRACES_EXPORTER` is
  `none`.

Spans go over OTLP/HTTP with protobuf (the `opentelemetry-sdk` and
`opentelemetry-exporter-otlp-proto-http` packages, the `faashub[otel]`
extra), in batches. The SDK reads the other standard variables itself:
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the service name
defaults to the component's, such as `faashub-gateway`), the endpoint,
headers and timeout variables of the exporter, `OTEL_BSP_*` for batching and
`OTEL_TRACES_SAMPLER` for sampling.

With export on, each hop makes one span, a child of the trace context it
received. It sends its own `traceparent` onward, with the same trace id and
the span's id as parent id, so that the hops form one chain. `tracestate`
goes on as it came, unless it breaks the limits of W3C Trace Context, such
as more than 32 list members or an invalid or repeated key. The hop then
sends no tracestate. With export off, `enabled` is False and the callers
skip this module altogether, so the data path creates no span objects and
passes the headers through as they came. A failed export never fails a
call, because the SDK exports from a thread of its own, where it logs an
unreachable endpoint and drops the batch.

This module does not decide where spans start; the gateway (`gateway.app`),
the queue-worker (`queue_worker.handling`, `queue_worker.callback`) and the
connectors (`connectors.core.invoker`) do.
"""

import logging
import os
import re
import threading
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import Any, Literal

from faashub import errors, names

logger = logging.getLogger(__name__)

enabled = False
"""Whether spans are exported; the data path checks it once per call."""

TRACE_HEADERS = ("traceparent", "tracestate")
_TRACE_HEADER_BYTES = tuple(name.encode() for name in TRACE_HEADERS)

# Limits on the trace headers a caller sends, as opentelemetry-api 1.45
# applies W3C Trace Context (TraceContextTextMapPropagator and TraceState).
# A longer traceparent, or a tracestate over these limits, is dropped before
# OpenTelemetry parses it.
MAX_TRACEPARENT_CHARS = 512
MAX_TRACESTATE_CHARS = 8192
MAX_TRACESTATE_MEMBERS = 32

# A tracestate list member: a simple key, or `tenant@system`, then `=` and a
# value of printable ASCII without `,` or `=` that does not end in a space.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

# Seconds `shutdown` waits for the last batch. An unreachable collector
# would otherwise hold a stopping component for the exporter's whole
# timeout, 10 s by default. `faashub up` stops its processes one after the
# other, so these waits add up there: a reachable collector on a LAN takes
# milliseconds.
SHUTDOWN_TIMEOUT_S = 1.0

INSTALL_HINT = "pip install 'faashub[otel]'"

SpanKind = Literal["server", "client", "consumer"]

# Message context fields of the connectors, as OpenTelemetry's messaging
# semantic conventions name them. Other fields get a `faashub.` prefix.
_SOURCE_ATTRIBUTES = {
    "partition": "messaging.destination.partition.id",
    "offset": "messaging.kafka.offset",
    "queue": "messaging.destination.name",
    "message_id": "messaging.message.id",
}

_provider: Any = None
_tracer: Any = None
_propagator: Any = None


def export_requested(environ: Mapping[str, str]) -> bool:
    """Return whether the OpenTelemetry variables in `environ` request export."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }
    if "none" in exporters:
        return False
    if "otlp" in exporters:
        return True
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def setup(*, default_service_name: str) -> bool:
    """Start span export if the environment requests it; return whether it did.

    Without the OpenTelemetry packages, or with an OTLP protocol other than
    http/protobuf, this logs one WARNING and the component runs without
    export. The SDK reads its own variables from `os.environ` as well.
    """
    global enabled, _provider, _tracer, _propagator
    environ = os.environ
    if not export_requested(environ):
        return False
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol != "http/protobuf":
        logger.warning(
            "trace export off: OTLP protocol %r is not supported; set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
            protocol,
        )
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError as exc:
        logger.warning(
            "trace export off: the OpenTelemetry packages are missing (%s); "
            "install them with %s",
            exc,
            INSTALL_HINT,
        )
        return False

    # Resource.create() reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME;
    # the component's name applies only when neither names the service.
    resource = Resource.create()
    service_name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not service_name or service_name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    try:
        exporter = OTLPSpanExporter()
    except ValueError as exc:
        logger.warning("trace export off: invalid exporter setting: %s", exc)
        return False
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("faashub")
    _propagator = TraceContextTextMapPropagator()
    enabled = True
    logger.info(
        "trace export on",
        extra={
            "ctx": {
                "service": resource.attributes.get(SERVICE_NAME),
                "endpoint": getattr(exporter, "_endpoint", ""),
            }
        },
    )
    return True


def shutdown(*, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Export the spans still queued and stop export; wait at most `timeout_s`."""
    global enabled, _provider, _tracer
    provider = _provider
    enabled = False
    _provider = _tracer = None
    if provider is None:
        return
    # The SDK's shutdown blocks until the exporter gives up, so it runs in a
    # thread of its own and is abandoned after the timeout.
    worker = threading.Thread(
        target=provider.shutdown, name="faashub-trace-shutdown", daemon=True
    )
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        logger.warning(
            "trace export did not finish within %g s; the last spans are dropped",
            timeout_s,
        )


class Span:
    """One span in progress, wrapped so that callers never import OpenTelemetry."""

    __slots__ = ("_span", "_tracestate")

    def __init__(self, span: Any, tracestate: list[str]) -> None:
        self._span = span
        self._tracestate = tracestate

    def set_attribute(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)

    def set_http_status(self, status: int | None) -> None:
        """Record the HTTP status of the hop; 5xx (or none) marks an error."""
        from opentelemetry.trace import StatusCode

        if status is not None:
            self._span.set_attribute("http.response.status_code", status)
        if status is None or status >= 500:
            self._span.set_status(StatusCode.ERROR)

    def record_exception(self, exc: BaseException) -> None:
        from opentelemetry.trace import StatusCode

        self._span.record_exception(exc)
        self._span.set_status(StatusCode.ERROR, type(exc).__name__)

    def trace_headers(self) -> list[tuple[str, str]]:
        """Return the `traceparent` of this span and the received `tracestate`."""
        from opentelemetry import trace

        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(self._span))
        headers = [("traceparent", carrier["traceparent"])]
        headers.extend(("tracestate", value) for value in self._tracestate)
        return headers

    def end(self) -> None:
        self._span.end()


def start_span(
    name: str,
    *,
    kind: SpanKind,
    parent_headers: Iterable[tuple[str, str]],
    attributes: Mapping[str, str | int],
) -> Span:
    """Start a span that is a child of the trace context in `parent_headers`.

    A missing or invalid `traceparent` starts a new trace. Call only while
    `enabled` is True.
    """
    from opentelemetry.trace import SpanKind as OtelSpanKind

    carrier: dict[str, str] = {}
    tracestate: list[str] = []
    for header_name, value in parent_headers:
        lowered = header_name.lower()
        if lowered == "traceparent":
            # W3C Trace Context allows one traceparent: the first one counts.
            carrier.setdefault("traceparent", value)
        elif lowered == "tracestate":
            tracestate.append(value)
    # OpenTelemetry logs a warning, with no ids and no rate limit, for each
    # traceparent or tracestate that it rejects. Both come from callers, so
    # such values are dropped here without a log line.
    traceparent = carrier.get("traceparent")
    if traceparent is not None and len(traceparent) > MAX_TRACEPARENT_CHARS:
        del carrier["traceparent"]
    if tracestate and not valid_tracestate(tracestate):
        tracestate = []
    if tracestate:
        carrier["tracestate"] = ",".join(tracestate)
    otel_kind = {
        "server": OtelSpanKind.SERVER,
        "client": OtelSpanKind.CLIENT,
        "consumer": OtelSpanKind.CONSUMER,
    }[kind]
    span = _tracer.start_span(
        name,
        context=_propagator.extract(carrier),
        kind=otel_kind,
        attributes=dict(attributes),
    )
    return Span(span, tracestate)


def valid_tracestate(values: Sequence[str]) -> bool:
    """Return whether the `tracestate` header values form a valid list.

    W3C Trace Context allows at most 32 list members, each `key=value` with
    a key that occurs once. Empty members and spaces or tabs around a member
    are allowed. The combined value may have at most MAX_TRACESTATE_CHARS
    characters.
    """
    if sum(len(value) for value in values) + len(values) - 1 > MAX_TRACESTATE_CHARS:
        return False
    keys: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            match = _TRACESTATE_MEMBER.fullmatch(member)
            if match is None:
                return False
            key = match.group(1)
            if key in keys:
                return False
            keys.add(key)
            if len(keys) > MAX_TRACESTATE_MEMBERS:
                return False
    return True


def with_trace_headers(
    headers: Iterable[tuple[str, str]], span: Span
) -> list[tuple[str, str]]:
    """Return `headers` with their trace context replaced by the span's own."""
    without_trace = [item for item in headers if item[0].lower() not in TRACE_HEADERS]
    without_trace.extend(span.trace_headers())
    return without_trace


def function_attributes(function: str) -> dict[str, str | int]:
    """Return the span attributes that name a function, `name` or `name.namespace`."""
    try:
        ref = names.parse_function_ref(function)
    except errors.InvalidFunctionName:
        return {"faas.invoked_name": function}
    return {"faas.invoked_name": ref.name, "faashub.namespace": ref.namespace}


def source_attributes(
    connector: str, topic: str, context: Mapping[str, object]
) -> dict[str, str | int]:
    """Return the span attributes that name a message's source."""
    attributes: dict[str, str | int] = {
        "messaging.system": connector,
        "messaging.destination.name": topic,
    }
    for key, value in context.items():
        name = _SOURCE_ATTRIBUTES.get(key, f"faashub.{key}")
        attributes[name] = value if isinstance(value, int) else str(value)
    return attributes


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Any]],
    Awaitable[None],
]


async def serve_traced(
    app: ASGIApp,
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[Any], Awaitable[None]],
    *,
    span_name: str,
    function: str,
) -> None:
    """Serve one HTTP request through `app` inside a server span.

    The span is a child of the request's trace context, and `app` receives the
    request with the span's own `traceparent` in place of the caller's. The
    call id and status are read from the response that `app` sends.
    """
    raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
    span = start_span(
        span_name,
        kind="server",
        parent_headers=(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in raw_headers
            if name in _TRACE_HEADER_BYTES
        ),
        attributes={
            **function_attributes(function),
            "http.request.method": scope.get("method", ""),
        },
    )
    headers = [item for item in raw_headers if item[0] not in _TRACE_HEADER_BYTES]
    headers.extend(
        (name.encode(), value.encode("latin-1")) for name, value in span.trace_headers()
    )
    status: int | None = None

    async def send_and_note(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", ()):
                if name.lower() == b"x-call-id":
                    span.set_attribute("faashub.call_id", value.decode("latin-1"))
        await send(message)

    try:
        await app({**scope, "headers": headers}, receive, send_and_note)
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        span.set_http_status(status)
        span.end()
