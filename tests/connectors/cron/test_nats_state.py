"""`CronState`'s NATS connection through an outage of a real nats-server."""

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from connectors.cron.nats_state import CronState
from faashub import embedded_nats
from tests.conftest import LOOPBACK, free_port, stop_process, wait_until

pytestmark = pytest.mark.timeout(40)


async def test_outage_logs_one_line_each_way(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()

    def start_server() -> subprocess.Popen[bytes]:
        return embedded_nats.start(
            host=LOOPBACK,
            port=port,
            store_dir=tmp_path / "nats",
            log_path=tmp_path / "nats.log",
        )

    server = start_server()
    state = CronState(
        f"nats://{LOOPBACK}:{port}", owner="test", claim_ticks=True, lease_ttl_s=60
    )
    caplog.set_level(logging.INFO)
    try:
        await state.start()
        stop_process(server)
        await wait_until(
            lambda: "cron state in NATS unavailable" in caplog.text, timeout_s=10
        )
        # Let nats-py fail a few reconnects before the server returns.
        await asyncio.sleep(2.5)
        server = start_server()
        await wait_until(
            lambda: "cron state in NATS available again" in caplog.text, timeout_s=15
        )
    finally:
        await state.close()
        stop_process(server)

    assert caplog.text.count("cron state in NATS unavailable") == 1
    client_errors = [
        record
        for record in caplog.records
        if record.name.startswith("nats") and record.levelno >= logging.ERROR
    ]
    assert client_errors == []
