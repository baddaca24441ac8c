"""`faashub up` at start: a quiet log, and routes that respond once it is up."""

from pathlib import Path

import httpx
import pytest

from tests.hub_support import running_hub

pytestmark = pytest.mark.timeout(120)


def test_start_quiet_and_ready(tmp_path: Path) -> None:
    # A level name in lower case, and DEBUG, so that a record logged at
    # DEBUG on purpose during the start (such as an unreachable provider
    # while it starts) shows in the output instead of a WARNING.
    with running_hub(tmp_path / "state", extra_args=["--log-level", "debug"]) as hub:
        start_output = list(hub.output)
        health = httpx.get(f"{hub.url}/healthz")
        info = httpx.get(f"{hub.url}/system/info", auth=hub.auth)
        functions = httpx.get(f"{hub.url}/system/functions", auth=hub.auth)

    assert health.status_code == 200
    assert info.status_code == 200, info.text
    assert functions.status_code == 200, functions.text
    assert functions.json() == []
    assert any(" DEBUG " in line for line in start_output)
    problems = [
        line for line in start_output if " WARNING " in line or " ERROR " in line
    ]
    assert problems == []
