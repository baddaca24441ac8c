"""Log context of a call: its id, function and event source on every line.

One Kafka record goes through a real hub and an async Kafka connector, all
logging JSON at the default INFO level. Every line that names a call id
must name the function too, and the lines of the gateway, the queue-worker
and the connector about the Kafka-sourced call must name its topic,
partition and offset. Text mode renders the same fields as `key=value`.
"""

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from faashub import logs
from tests.conftest import LOOPBACK, free_port, stop_process
from tests.connectors.conftest import create_topics, start_tansu, unique
from tests.hub_support import CallbackReceiver, start_hub, stop_hub
from tests.test_trace_e2e import (
    OTEL_VARIABLES,
    ConnectorProcess,
    deploy_recorder,
    produce_traced,
    start_async_connector,
    wait_for_lines,
)

pytestmark = pytest.mark.timeout(60)

# Loggers of the components whose lines about a call must name its source.
SOURCE_LOGGERS = ("gateway.", "queue_worker.", "connectors.")


@pytest.fixture(scope="module")
def brokers() -> Iterator[str]:
    """Bootstrap address of a Tansu broker for this module's tests."""
    port = free_port()
    process = start_tansu(port)
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        stop_process(process)


def json_lines(lines: list[str]) -> list[dict[str, object]]:
    """Return the JSON log entries among `lines`; other output is skipped."""
    entries = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if isinstance(entry, dict) and "logger" in entry:
            entries.append(entry)
    return entries


def test_call_lines_name_function_and_source(
    brokers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    topic = unique("logged")
    asyncio.run(create_topics(brokers, topic))
    hub = start_hub(tmp_path / "state", extra_args=["--log-format", "json"])
    connector: ConnectorProcess | None = None
    try:
        with CallbackReceiver() as receiver:
            record_path = deploy_recorder(hub, "logged", topic, tmp_path)
            connector = start_async_connector(
                hub,
                brokers,
                callback_url=receiver.url,
                log_path=tmp_path / "connector.log",
                extra_args=["--log-format", "json"],
            )
            asyncio.run(produce_traced(brokers, topic))
            wait_for_lines(record_path, 1)
            [callback] = receiver.wait_for(1)
    finally:
        if connector is not None:
            connector.stop()
        stop_hub(hub)

    call_id = callback.headers["X-Call-Id"]
    connector_log = (tmp_path / "connector.log").read_text().splitlines()
    entries = json_lines(hub.output) + json_lines(connector_log)
    about_calls = [entry for entry in entries if "call_id" in entry]
    about_this_call = [entry for entry in about_calls if entry["call_id"] == call_id]
    loggers = {str(entry["logger"]) for entry in about_this_call}
    # The connector's `function invoked` and the worker's `call finished`.
    assert "connectors.core.connector" in loggers
    assert "queue_worker.handling" in loggers

    for entry in about_calls:
        assert entry.get("function"), entry
    for entry in about_this_call:
        if not str(entry["logger"]).startswith(SOURCE_LOGGERS):
            continue
        assert entry.get("topic") == topic, entry
        assert str(entry.get("partition")) == "0", entry
        assert str(entry.get("offset")) == "0", entry


def test_text_mode_renders_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.configure(level="INFO", log_format="text")
        logging.getLogger("connectors.core.connector").info(
            "function invoked",
            extra={
                "ctx": {
                    "function": "orders.openfaas-fn",
                    "call_id": "4f9d",
                    "topic": "orders",
                    "partition": 0,
                    "offset": 12,
                    "error": "a b=c",
                }
            },
        )
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    line = capsys.readouterr().err.strip()
    assert line.endswith(
        "connectors.core.connector: function invoked function=orders.openfaas-fn "
        'call_id=4f9d topic=orders partition=0 offset=12 error="a b=c"'
    )
