"""Warnings of a failing Kubernetes API, limited to one per interval.

The emulator fails the pod list of two log followers, and the test counts
the warning lines that the provider writes. `faashub.logs.LimitedWarning`,
which limits them, has unit tests of its own in tests/test_limited_warning.py.
"""

import logging
from typing import Any

import pytest

from faashub.logs import LimitedWarning
from provider.kubernetes import pod_logs
from tests.conftest import wait_until
from tests.provider.kubernetes.conftest import (
    NAMESPACE,
    Fault,
    RunningProvider,
    add_pod,
)

pytestmark = pytest.mark.timeout(60)


def lines_of(caplog: pytest.LogCaptureFixture, template: str) -> list[Any]:
    return [record for record in caplog.records if record.msg == template]


@pytest.mark.timeout(30)
async def test_pod_list_failures_logged_once(
    provider: RunningProvider,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh limiter, so that a line written by an earlier test in this
    # process does not suppress the first line of this one.
    template = "pod list for logs failed: %s"
    monkeypatch.setattr(
        pod_logs,
        "pod_list_failed",
        LimitedWarning(pod_logs.logger, interval_s=30.0),
    )
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    add_pod(provider, "fn-abc", "fn")
    provider.emulator["get", f"/api/v1/namespaces/{NAMESPACE}/pods/fn-abc/log"] << (
        b"2024-05-01T12:00:00Z ready\n"
    )
    fault = Fault(
        method="GET",
        path=f"/api/v1/namespaces/{NAMESPACE}/pods",
        status=500,
        message="etcdserver: request timed out",
        count=1000,
    )
    params = {"name": "fn", "follow": "true"}

    with caplog.at_level(logging.WARNING, logger=pod_logs.logger.name):
        async with (
            provider.client.stream("GET", "/system/logs", params=params) as first,
            provider.client.stream("GET", "/system/logs", params=params) as second,
        ):
            assert first.status_code == 200
            assert second.status_code == 200
            # Both followers listed their pods at start; every later poll fails.
            provider.emulator.faults.append(fault)
            await wait_until(
                lambda: fault.count <= 996,
                timeout_s=15.0,
                description="four failed pod lists",
            )
            fault.count = 0

    records = lines_of(caplog, template)
    assert len(records) == 1
    assert "etcdserver: request timed out" in records[0].getMessage()
    assert records[0].ctx == {"function": "fn"}
