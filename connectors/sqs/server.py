"""The SQS connector process: `faashub connector sqs`.

`run(settings)` blocks until SIGTERM or SIGINT, then stops as
`connectors.core.runner` describes: it stops polling, lets the messages in
flight finish for up to drain_timeout_s and makes every message it still
holds visible again at once.
"""

from connectors.core.runner import run_connector, run_event_loop
from connectors.sqs.delivery import SqsConnector
from connectors.sqs.source import SqsSource
from faashub.connector_settings import SqsConnectorSettings


def run(settings: SqsConnectorSettings) -> None:
    """Run the SQS connector until SIGTERM or SIGINT, then stop it cleanly."""
    run_event_loop(serve(settings))


async def serve(settings: SqsConnectorSettings) -> None:
    """Run the connector in the current event loop until a signal stops it."""
    # Built first, so that a missing --sqs-queues fails before anything starts.
    source = SqsSource(settings)
    connector = SqsConnector(settings)
    await run_connector(connector, source, tune_gc_after_open=True)
