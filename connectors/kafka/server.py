"""The Kafka connector process: `faashub connector kafka`.

`run(settings)` blocks until SIGTERM or SIGINT, then stops as
`connectors.core.runner` describes: it stops fetching, lets the records in
flight finish for up to drain_timeout_s, commits their offsets and leaves
the consumer group. With `--dev-broker` it first starts the bundled Tansu
broker and stops it last.
"""

import logging

from connectors.core.connector import Connector
from connectors.core.runner import run_connector, run_event_loop
from connectors.kafka import constants
from connectors.kafka.dev_broker import DevBroker, start_dev_broker
from connectors.kafka.source import KafkaSource
from connectors.kafka.subscription import served_entries
from faashub.connector_settings import KafkaConnectorSettings, topic_list

logger = logging.getLogger(__name__)


def run(settings: KafkaConnectorSettings) -> None:
    """Run the Kafka connector until SIGTERM or SIGINT, then stop it cleanly."""
    dev_broker: DevBroker | None = None
    if settings.dev_broker:
        dev_broker = start_dev_broker()
        settings = settings.model_copy(update={"brokers": dev_broker.address})
    try:
        run_event_loop(serve(settings))
    finally:
        if dev_broker is not None:
            dev_broker.stop()


def build(settings: KafkaConnectorSettings) -> tuple[Connector, KafkaSource]:
    """Build the connector and its source, for this command and `faashub up`."""
    # The source is built first, so that unreadable TLS or password files
    # fail before anything starts.
    source = KafkaSource(settings)
    if settings.async_invocation and settings.reply_topic:
        logger.warning(
            "reply_topic is ignored with async invocation: the queue-worker "
            "posts results to the callback URL instead"
        )
    connector = Connector(settings, name=constants.CONNECTOR_NAME)
    connector.topic_maps.serves = served_entries(topic_list(settings.topics))
    return connector, source


async def serve(settings: KafkaConnectorSettings) -> None:
    """Run the connector in the current event loop until a signal stops it."""
    connector, source = build(settings)
    await run_connector(connector, source, tune_gc_after_open=True)
