"""Warnings that repeat while the Kubernetes API fails, limited per interval.

The unit tests drive `RepeatedWarning` with an injected clock. The last test
makes the emulator fail the pod list of two log followers and counts the
warning lines that the provider writes.
"""

import logging
from typing import Any

import pytest

from provider.kubernetes import pod_logs
from provider.kubernetes.log_limit import SUPPRESSED_FIELD, RepeatedWarning
from tests.conftest import wait_until
from tests.provider.kubernetes.conftest import (
    NAMESPACE,
    PODS,
    Fault,
    RunningProvider,
)

pytestmark = pytest.mark.timeout(60)

LOGGER_NAME = "tests.repeated_warning"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def lines_of(caplog: pytest.LogCaptureFixture, template: str) -> list[Any]:
    return [record for record in caplog.records if record.msg == template]


def test_repeat_within_interval_is_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    warning = RepeatedWarning(
        logging.getLogger(LOGGER_NAME), "call failed: %s", interval_s=30.0, clock=clock
    )

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        warning.write("first", context={"function": "fn"})
        clock.now_s += 10.0
        warning.write("second", context={"function": "fn"})
        clock.now_s += 19.9
        warning.write("third", context={"function": "fn"})

    records = lines_of(caplog, "call failed: %s")
    assert len(records) == 1
    assert records[0].getMessage() == "call failed: first"
    assert records[0].levelno == logging.WARNING
    assert records[0].ctx == {"function": "fn"}


def test_line_after_interval_carries_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    warning = RepeatedWarning(
        logging.getLogger(LOGGER_NAME), "call failed: %s", interval_s=30.0, clock=clock
    )

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        warning.write("first", context={"function": "fn"})
        for _ in range(3):
            clock.now_s += 5.0
            warning.write("again", context={"function": "fn"})
        clock.now_s += 15.0
        warning.write("late", context={"function": "fn"})
        clock.now_s += 30.0
        warning.write("later", context={"function": "fn"})

    records = lines_of(caplog, "call failed: %s")
    assert [record.getMessage() for record in records] == [
        "call failed: first",
        "call failed: late",
        "call failed: later",
    ]
    assert SUPPRESSED_FIELD not in records[0].ctx
    assert records[1].ctx == {"function": "fn", SUPPRESSED_FIELD: 3}
    assert SUPPRESSED_FIELD not in records[2].ctx


def add_pod(provider: RunningProvider, name: str, function: str) -> None:
    provider.emulator.objects[PODS, NAMESPACE, name] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"faas_function": function},
        },
    }


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
        pod_logs, "pod_list_failed", RepeatedWarning(pod_logs.logger, template)
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
