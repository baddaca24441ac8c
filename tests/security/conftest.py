"""Fixtures of the security tests, shared with the gateway and worker suites."""

from tests.gateway.conftest import provider, start_gateway
from tests.queue_worker.conftest import gateway, js, nc, receiver

__all__ = ["gateway", "js", "nc", "provider", "receiver", "start_gateway"]
