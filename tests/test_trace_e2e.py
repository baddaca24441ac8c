"""One trace from a Kafka record to the function and the callback, through a real hub.

`faashub up` runs NATS, the local provider, the gateway and the queue-worker
with auth on. A Kafka connector process, in async mode with a callback URL,
reads a Tansu broker. A record with a `traceparent` header goes: connector,
gateway `/async-function/`, JetStream, worker, function; the worker then
posts the result to a receiver on loopback. The function is a small HTTP
program that appends the headers of each request to a file.

The second test runs the same path with OpenTelemetry export on, against an
OTLP/HTTP receiver in this file, and checks that the spans of the connector,
the gateway and the worker form one parent chain.
"""

import asyncio
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import LOOPBACK, free_port, stop_process
from tests.connectors.conftest import (
    create_topics,
    kafka_producer,
    start_tansu,
    unique,
)
from tests.hub_support import (
    CallbackReceiver,
    RunningHub,
    faashub,
    start_hub,
    stop_hub,
)

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN_ID}-01"
TRACESTATE = "vendor=opaque"
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)

# An HTTP-mode function that appends the headers of each request, as one
# JSON object, to the file named by RECORD_PATH.
RECORDING_FUNCTION_SOURCE = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(os.environ["RECORD_PATH"], "a") as record:
            record.write(json.dumps({k.lower(): v for k, v in self.headers.items()}))
            record.write("\\n")
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"done")
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class ExportedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback that keeps every span it gets."""

    spans: list[ExportedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> "OtlpReceiver":
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.store(request)
                reply = trace_service_pb2.ExportTraceServiceResponse()
                data = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def store(self, request: object) -> None:
        found = []
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ExportedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={
                                **_attributes(span.attributes),
                                "resource": resource,
                            },
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(found)

    def wait_for(
        self, names: set[str], *, timeout_s: float = 20.0
    ) -> dict[str, ExportedSpan]:
        """Wait for one span of each name; return them by name."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                by_name = {span.name: span for span in self.spans}
            if names <= by_name.keys():
                return {name: by_name[name] for name in names}
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"spans {sorted(names - by_name.keys())} not exported within "
                    f"{timeout_s:g} s; got {sorted(by_name)}"
                )
            time.sleep(0.05)


def _attributes(pairs: object) -> dict[str, object]:
    values: dict[str, object] = {}
    for pair in pairs:  # type: ignore[attr-defined]
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]


def parent_id(traceparent: str) -> str:
    return traceparent.split("-")[2]


def deploy_recorder(hub: RunningHub, name: str, topic: str, folder: Path) -> Path:
    """Deploy the recording function with a `topic` annotation; return its file."""
    script = folder / "record_headers.py"
    script.write_text(RECORDING_FUNCTION_SOURCE)
    record_path = folder / f"{name}.jsonl"
    result = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
        "--env",
        "mode=http",
        "--env",
        f"RECORD_PATH={record_path}",
        "--annotation",
        f"topic={topic}",
        gateway=hub.url,
    )
    assert result.returncode == 0, result.stderr.decode()
    return record_path


@dataclass
class ConnectorProcess:
    process: "subprocess.Popen[bytes]"
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_async_connector(
    hub: RunningHub,
    brokers: str,
    *,
    callback_url: str,
    log_path: Path,
    extra_args: Sequence[str] = (),
) -> ConnectorProcess:
    """Start `faashub connector kafka` in async mode as a process of its own."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faashub",
                "connector",
                "kafka",
                "--gateway-url",
                hub.url,
                "--gateway-secret-mount-path",
                str(hub.state_dir / "credentials"),
                "--brokers",
                brokers,
                "--group-id",
                unique("trace-group"),
                "--async-invocation",
                "--callback-url",
                callback_url,
                "--rebuild-interval-s",
                "0.5",
                "--health-port",
                str(free_port()),
                "--session-timeout-s",
                "6",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ConnectorProcess(process, log_path)


def wait_for_lines(path: Path, count: int, *, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path.name} did not get {count} lines in {timeout_s:g} s")


@dataclass
class TracedRun:
    """What the function and the callback receiver got for one record."""

    topic: str
    function_headers: dict[str, str]
    callback_headers: dict[str, str]


def run_traced_record(tmp_path: Path, brokers: str) -> TracedRun:
    """Send one record with a traceparent through a new hub; stop everything."""
    topic = unique("traced")
    asyncio.run(create_topics(brokers, topic))
    hub = start_hub(tmp_path / "state")
    connector: ConnectorProcess | None = None
    try:
        with CallbackReceiver() as receiver:
            record_path = deploy_recorder(hub, "traced", topic, tmp_path)
            connector = start_async_connector(
                hub,
                brokers,
                callback_url=receiver.url,
                log_path=tmp_path / "connector.log",
            )
            asyncio.run(produce_traced(brokers, topic))
            [line] = wait_for_lines(record_path, 1)
            [callback] = receiver.wait_for(1)
            callback_headers = {
                name.lower(): value for name, value in callback.headers.items()
            }
    finally:
        if connector is not None:
            connector.stop()
        stop_hub(hub)
    return TracedRun(topic, json.loads(line), callback_headers)


async def produce_traced(brokers: str, topic: str) -> None:
    async with kafka_producer(brokers) as producer:
        await producer.send_and_wait(
            topic,
            b"traced body",
            headers=[
                ("traceparent", TRACEPARENT.encode()),
                ("tracestate", TRACESTATE.encode()),
            ],
        )


@pytest.fixture(scope="module")
def kafka_brokers() -> Iterator[str]:
    """Bootstrap address of a Tansu broker for this module's tests."""
    port = free_port()
    process = start_tansu(port)
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        stop_process(process)


@pytest.fixture
def without_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep OTEL_* variables of the test run away from the hub's processes."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("without_otel")
def test_record_trace_reaches_function_and_callback(
    kafka_brokers: str, tmp_path: Path
) -> None:
    run = run_traced_record(tmp_path, kafka_brokers)

    assert trace_id(run.function_headers["traceparent"]) == TRACE_ID
    assert trace_id(run.callback_headers["traceparent"]) == TRACE_ID
    # Without export no hop makes a span, so both see the producer's span.
    assert run.function_headers["traceparent"] == TRACEPARENT
    assert run.callback_headers["traceparent"] == TRACEPARENT
    assert run.function_headers["tracestate"] == TRACESTATE
    assert run.callback_headers["tracestate"] == TRACESTATE
    assert run.function_headers["x-topic"] == run.topic
    assert run.callback_headers["x-function-status"] == "200"


@pytest.mark.usefixtures("without_otel")
def test_exported_spans_form_one_chain(
    kafka_brokers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        run = run_traced_record(tmp_path, kafka_brokers)
        # Every component has stopped, and each exports its queued spans when
        # it stops.
        spans = collector.wait_for(
            {
                "kafka invoke",
                "POST /async-function/{name}",
                "queue-worker invoke",
                "queue-worker callback",
            },
            timeout_s=5.0,
        )
        exported = list(collector.spans)

    consume = spans["kafka invoke"]
    accept = spans["POST /async-function/{name}"]
    invoke = spans["queue-worker invoke"]
    callback = spans["queue-worker callback"]
    for span in (consume, accept, invoke, callback):
        assert span.trace_id == TRACE_ID, span
        assert span.attributes["faas.invoked_name"] == "traced", span
        assert span.attributes["faashub.namespace"] == "openfaas-fn", span

    # The chain: producer -> connector -> gateway accept -> worker invoke and
    # worker callback.
    assert consume.parent_span_id == PRODUCER_SPAN_ID
    assert accept.parent_span_id == consume.span_id
    assert invoke.parent_span_id == accept.span_id
    assert callback.parent_span_id == accept.span_id

    # The function's parent is the worker's span, or the gateway's sync span
    # below it when the worker went through the gateway's /function/ route.
    function_parent = parent_id(run.function_headers["traceparent"])
    sync_spans = [
        span
        for span in exported
        if span.name == "POST /function/{name}"
        and span.parent_span_id == invoke.span_id
    ]
    assert function_parent in {invoke.span_id, *(span.span_id for span in sync_spans)}
    assert trace_id(run.function_headers["traceparent"]) == TRACE_ID
    assert run.function_headers["tracestate"] == TRACESTATE
    assert run.callback_headers["traceparent"] == (
        f"00-{TRACE_ID}-{callback.span_id}-01"
    )
    assert run.callback_headers["tracestate"] == TRACESTATE

    call_id = accept.attributes["faashub.call_id"]
    assert consume.attributes["faashub.call_id"] == call_id
    assert invoke.attributes["faashub.call_id"] == call_id
    assert callback.attributes["faashub.call_id"] == call_id
    assert run.function_headers["x-call-id"] == call_id
    assert consume.attributes["messaging.destination.name"] == run.topic
    assert consume.attributes["messaging.destination.partition.id"] == 0
    assert consume.attributes["messaging.kafka.offset"] == 0
    assert consume.attributes["http.response.status_code"] == 202
    assert accept.attributes["http.response.status_code"] == 202
    assert invoke.attributes["http.response.status_code"] == 200
    assert callback.attributes["http.response.status_code"] == 200

    assert consume.service == "faashub-connector-kafka"
    assert accept.service == "faashub-gateway"
    # `faashub up` runs its queue-workers in its workers process.
    assert invoke.service == "faashub-up-workers"
    assert callback.service == "faashub-up-workers"
    resource = accept.attributes["resource"]
    assert isinstance(resource, dict)
    assert resource["deployment.environment"] == "test"
