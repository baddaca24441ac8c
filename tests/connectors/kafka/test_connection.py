"""Connecting to brokers: a broker that is not up yet, TLS, SASL, client options."""

import asyncio
import contextlib
import logging
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr, ValidationError

from connectors.core.health import start_health_listener
from connectors.kafka.client_config import client_options
from connectors.kafka.client_logs import AIOKAFKA_LOGGER
from connectors.kafka.source import COMMIT_TIMEOUT_S
from faashub import errors
from faashub.connector_settings import KafkaConnectorSettings
from tests.conftest import LOOPBACK, free_port, stop_process
from tests.connectors.conftest import (
    FakeGateway,
    create_topics,
    kafka_producer,
    start_tansu,
    unique,
    wait_until,
    wait_until_async,
)
from tests.connectors.kafka.conftest import (
    RunningConnector,
    kafka_settings,
    running_connector,
)

pytestmark = pytest.mark.timeout(60)


async def test_broker_down_at_start_is_retried(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    brokers = f"{LOOPBACK}:{port}"
    topic = unique("late")
    gateway.deploy("late", topic)
    settings = kafka_settings(brokers, gateway.url, group_id=unique("group"))

    async with running_connector(settings, wait_ready=False) as running:
        await wait_until(
            lambda: running.source.state.startswith("kafka unavailable"),
            description="the connector to report the broker down",
        )
        await asyncio.sleep(2.5)
        assert not running.task.done()
        broker = await asyncio.to_thread(start_tansu, port)
        try:
            await wait_until(
                lambda: running.source.state == "ready",
                timeout_s=30,
                description="the connector to connect",
            )
            producer = AIOKafkaProducer(bootstrap_servers=brokers)
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"after-start")
            finally:
                await producer.stop()
            await wait_until(
                lambda: gateway.bodies("late") == [b"after-start"],
                timeout_s=30,
                description="the record",
            )
        finally:
            running.source.stop()
            await asyncio.wait_for(running.task, 20)
            stop_process(broker)

    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.getMessage().startswith("kafka unavailable")
    ]
    # Repeats within the warning interval go to DEBUG.
    assert len(warnings) == 1
    assert any(
        r.getMessage().startswith("kafka available again") for r in caplog.records
    )


async def test_stop_while_broker_down_is_prompt(gateway: FakeGateway) -> None:
    gateway.deploy("never", "nowhere")
    settings = kafka_settings(
        f"{LOOPBACK}:{free_port()}", gateway.url, group_id=unique("group")
    )

    async with running_connector(settings, wait_ready=False) as running:
        await wait_until(
            lambda: running.source.state.startswith("kafka unavailable"),
            description="the connector to report the broker down",
        )
        running.source.stop()
        await asyncio.wait_for(running.task, 3)


@dataclass
class OwnBroker:
    """A connector consuming from a Tansu broker of its own."""

    running: RunningConnector
    health: httpx.AsyncClient
    """A client of the connector's /healthz and /metrics listener."""
    broker: "subprocess.Popen[bytes]"
    """The broker process, which a test that restarts the broker replaces."""


@contextlib.asynccontextmanager
async def consuming_own_broker(
    gateway: FakeGateway, port: int, topic: str
) -> AsyncIterator[OwnBroker]:
    """Run a connector on a Tansu broker of its own, with /healthz served.

    The block starts once a first record of `topic` reached the function
    `watch`, so the connector is consuming with an assignment.
    """
    brokers = f"{LOOPBACK}:{port}"
    gateway.deploy("watch", topic)
    broker = await asyncio.to_thread(start_tansu, port)
    own: OwnBroker | None = None
    try:
        await create_topics(brokers, topic)
        settings = kafka_settings(brokers, gateway.url, group_id=unique("group"))
        async with running_connector(settings) as running:
            health_port = free_port()
            health = await start_health_listener(
                running.connector, running.source, host=LOOPBACK, port=health_port
            )
            try:
                async with httpx.AsyncClient(
                    base_url=f"http://{LOOPBACK}:{health_port}"
                ) as client:
                    async with kafka_producer(brokers) as producer:
                        await producer.send_and_wait(topic, b"before")
                    await wait_until(
                        lambda: gateway.bodies("watch") == [b"before"],
                        description="the first record",
                    )
                    own = OwnBroker(running, client, broker)
                    yield own
            finally:
                await health.cleanup()
    finally:
        stop_process(own.broker if own is not None else broker)


async def _health_is(client: httpx.AsyncClient, status_code: int) -> bool:
    response = await client.get("/healthz")
    return response.status_code == status_code


async def test_lost_broker_fails_health_until_back(gateway: FakeGateway) -> None:
    port = free_port()
    topic = unique("lost")
    async with consuming_own_broker(gateway, port, topic) as own:
        running, client = own.running, own.health
        await wait_until_async(
            lambda: _metric_present(running, topic), description="the lag gauge"
        )
        assert (await client.get("/healthz")).status_code == 200

        stop_process(own.broker)
        await wait_until_async(
            lambda: _health_is(client, 503),
            description="/healthz to report the lost broker",
        )
        down = await client.get("/healthz")
        lag_while_down = await _metric_present(running, topic)

        own.broker = await asyncio.to_thread(start_tansu, port)
        # The broker keeps records in memory, so the topic is new.
        await create_topics(f"{LOOPBACK}:{port}", topic)
        async with kafka_producer(f"{LOOPBACK}:{port}") as producer:
            await producer.send_and_wait(topic, b"after")
        await wait_until(
            lambda: b"after" in gateway.bodies("watch"),
            timeout_s=40,
            description="the record after the restart",
        )
        await wait_until_async(
            lambda: _health_is(client, 200),
            description="/healthz to report the broker back",
        )

    assert down.text.startswith("kafka unavailable: ")
    assert "listing topics failed" in down.text
    assert not lag_while_down


async def test_lost_broker_errors_limited(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    async with consuming_own_broker(gateway, port, unique("quiet")) as own:
        caplog.clear()
        stop_process(own.broker)
        await wait_until(
            lambda: len(_repeats(caplog)) >= 20,
            description="repeated aiokafka errors",
        )
        logged = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith(AIOKAFKA_LOGGER) and r.levelno >= logging.ERROR
        ]
        own.running.source.stop()
        await asyncio.wait_for(own.running.task, COMMIT_TIMEOUT_S + 10)

    fetch_errors = [m for m in logged if m.startswith("Failed fetch messages")]
    coordinator_errors = [
        m for m in logged if m.startswith("Group Coordinator Request failed")
    ]
    # The first line of each kind is logged, and the next after 30 s.
    assert len(fetch_errors) == 1
    assert len(coordinator_errors) <= 1
    assert len(_repeats(caplog)) >= 20


async def test_stop_while_broker_lost_is_bounded(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    gateway.respond("watch", delay_s=1.0)
    async with consuming_own_broker(gateway, port, unique("away")) as own:
        # The first record is still running, so its commit finds no broker.
        stop_process(own.broker)
        await asyncio.sleep(1.5)
        stopping_s = time.monotonic()
        own.running.source.stop()
        await asyncio.wait_for(own.running.task, COMMIT_TIMEOUT_S + 10)
        stopped_after_s = time.monotonic() - stopping_s

    timed_out = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("kafka offset commit unavailable")
    ]
    assert stopped_after_s < COMMIT_TIMEOUT_S + 5
    assert len(timed_out) == 1
    assert timed_out[0].endswith(f"commit timed out after {COMMIT_TIMEOUT_S:g} s")


def _repeats(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Return aiokafka's repeated errors that went to DEBUG."""
    return [r for r in caplog.records if r.name == "connectors.kafka.client_logs"]


async def _metric_present(running: RunningConnector, topic: str) -> bool:
    text = running.connector.metrics.render().decode()
    return (
        f'faashub_connector_lag{{connector="kafka",partition="0",topic="{topic}"}}'
        in text
    )


def make_certificates(folder: Path) -> dict[str, Path]:
    """Create a CA, a server certificate for 127.0.0.1 and a client certificate."""
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "client")} | {
        f"{name}_key": folder / f"{name}.key" for name in ("ca", "server", "client")
    }

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=faashub-test-ca",
        "-keyout", str(paths["ca_key"]), "-out", str(paths["ca"]),
    )  # fmt: skip
    extensions = folder / "san.cnf"
    extensions.write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    for name in ("server", "client"):
        request = folder / f"{name}.csr"
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(paths[f"{name}_key"]), "-out", str(request),
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(request), "-days", "1",
            "-CA", str(paths["ca"]), "-CAkey", str(paths["ca_key"]),
            "-CAcreateserial", "-extfile", str(extensions), "-out", str(paths[name]),
        )  # fmt: skip
    return paths


@contextlib.asynccontextmanager
async def tls_proxy(
    listen_port: int, target_port: int, certificates: dict[str, Path]
) -> AsyncIterator[None]:
    """Terminate mutual TLS on `listen_port` and forward to `target_port`."""
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(certificates["ca"])
    )
    context.load_cert_chain(certificates["server"], certificates["server_key"])
    context.verify_mode = ssl.CERT_REQUIRED
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            LOOPBACK, target_port
        )
        for task in (
            asyncio.create_task(pipe(reader, upstream_writer)),
            asyncio.create_task(pipe(upstream_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(handle, LOOPBACK, listen_port, ssl=context)
    try:
        yield
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        if pipes:
            await asyncio.wait(pipes)
        await server.wait_closed()


async def test_mutual_tls_connection(gateway: FakeGateway, tmp_path: Path) -> None:
    certificates = await asyncio.to_thread(make_certificates, tmp_path)
    broker_port, proxy_port = free_port(), free_port()
    # Tansu 0.6.0 cannot serve TLS itself (its --cert and --key flags exclude
    # each other), so a proxy in front of it does, and Tansu advertises the
    # proxy's address to clients.
    broker = await asyncio.to_thread(
        start_tansu, broker_port, advertised_port=proxy_port
    )
    topic = unique("secure")
    gateway.deploy("secure", topic)
    try:
        async with tls_proxy(proxy_port, broker_port, certificates):
            settings = kafka_settings(
                f"{LOOPBACK}:{proxy_port}",
                gateway.url,
                group_id=unique("group"),
                tls_ca_file=certificates["ca"],
                tls_cert_file=certificates["client"],
                tls_key_file=certificates["client_key"],
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=f"{LOOPBACK}:{proxy_port}",
                security_protocol="SSL",
                ssl_context=create_ssl_context(
                    cafile=str(certificates["ca"]),
                    certfile=str(certificates["client"]),
                    keyfile=str(certificates["client_key"]),
                ),
            )
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"over-tls")
            finally:
                await producer.stop()
            async with running_connector(settings):
                await wait_until(
                    lambda: gateway.bodies("secure") == [b"over-tls"],
                    timeout_s=30,
                    description="the record over TLS",
                )
    finally:
        stop_process(broker)


@pytest.mark.skip(
    reason="Tansu 0.6.0 creates SCRAM users only through AlterUserScramCredentials, "
    "which a broker started with --authentication rejects from an unauthenticated "
    "client, and its memory storage does not survive a restart, so no broker "
    "with a known user can be started; the SASL options are checked in "
    "test_sasl_options_reach_client instead."
)
async def test_sasl_scram_connection() -> None:
    pass


def test_sasl_options_reach_client(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    settings = KafkaConnectorSettings(
        brokers="a:9092,b:9093",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password_file=password_file,
    )

    options = client_options(settings)

    assert options["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_sasl_with_tls_uses_sasl_ssl(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    settings = KafkaConnectorSettings(
        sasl_mechanism="PLAIN",
        sasl_username="bob",
        sasl_password=SecretStr("pw"),
        tls_ca_file=certificates["ca"],
    )

    options = client_options(settings)

    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["sasl_plain_password"] == "pw"


def test_unreadable_password_file_names_it(tmp_path: Path) -> None:
    settings = KafkaConnectorSettings(
        sasl_mechanism="PLAIN",
        sasl_username="bob",
        sasl_password_file=tmp_path / "missing",
    )

    with pytest.raises(errors.SettingsError, match="missing"):
        client_options(settings)


def test_key_not_matching_certificate_is_reported(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    settings = KafkaConnectorSettings(
        tls_cert_file=certificates["client"], tls_key_file=certificates["server_key"]
    )

    with pytest.raises(errors.SettingsError, match="Cannot load the TLS files"):
        client_options(settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"brokers": ""}, "no broker given", id="no-broker"),
        pytest.param(
            {"brokers": "host:99999"}, "port outside 1 to 65535", id="bad-port"
        ),
        pytest.param({"brokers": "host"}, "is not HOST:PORT", id="no-port"),
        pytest.param(
            {"brokers": "http://127.0.0.1:9092"},
            "has a http:// prefix; write HOST:PORT without it, such as "
            "'127.0.0.1:9092'",
            id="url",
        ),
        pytest.param(
            {"brokers": "PLAINTEXT://kafka:9092"},
            "has a PLAINTEXT:// prefix",
            id="listener",
        ),
        pytest.param({"brokers": "a b:9092"}, "is not HOST:PORT", id="space"),
        pytest.param({"brokers": "host:\u0663"}, "is not HOST:PORT", id="digit"),
        pytest.param({"topics": " , "}, "no topic given", id="no-topic"),
        pytest.param({"topics": "a/b"}, "not a Kafka topic name", id="bad-topic"),
        pytest.param(
            {"dead_letter_topic": "{topic}/dlq"},
            "not make a valid Kafka topic",
            id="bad-dead-letter",
        ),
        pytest.param({"reply_topic": "a b"}, "not a valid Kafka topic", id="reply"),
        pytest.param(
            {"sasl_password": "x", "sasl_password_file": "/tmp/x"},
            "keep one",
            id="two-passwords",
        ),
        pytest.param(
            {"tls_cert_file": "/tmp/cert.pem"}, "go together", id="cert-without-key"
        ),
        pytest.param(
            {"retry_min_wait_s": 5, "retry_max_wait_s": 1},
            "below retry_min_wait_s",
            id="retry-waits",
        ),
    ],
)
def test_settings_reject(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaConnectorSettings(**values)  # type: ignore[arg-type]


def test_settings_accept_patterns_and_auto() -> None:
    explicit = KafkaConnectorSettings(topics="orders.*, payments")
    auto = KafkaConnectorSettings()

    assert not explicit.auto_topics
    assert auto.auto_topics
    assert not auto.uses_tls
    assert KafkaConnectorSettings(tls=True).uses_tls
