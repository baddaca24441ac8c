"""The cron connector process: `faashub connector cron`.

`run(settings)` blocks until SIGTERM or SIGINT, then stops as
`connectors.core.runner` describes: no tick fires after the signal, runs
still going get up to drain_timeout_s to finish, and the NATS connection
(tick claims, last fired ticks) closes last.
"""

from connectors.core.runner import run_connector, run_event_loop
from connectors.cron.source import CronConnector, CronSource
from faashub.connector_settings import CronConnectorSettings


def run(settings: CronConnectorSettings) -> None:
    """Run the cron connector until SIGTERM or SIGINT, then stop it cleanly."""
    run_event_loop(serve(settings))


async def serve(settings: CronConnectorSettings) -> None:
    """Run the connector in the current event loop until a signal stops it."""
    await run_connector(
        CronConnector(settings), CronSource(settings), tune_gc_after_open=True
    )
