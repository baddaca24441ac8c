"""Schemathesis against the gateway's own OpenAPI description.

The gateway runs with basic auth in front of the fake provider and a real
nats-server. Every operation in /openapi.json, the invocation routes
included, gets a bounded number of generated requests, valid and invalid.
No response may be a 5xx that the operation does not document, and every
response must come within the request timeout.
"""

import asyncio
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from tests.gateway.conftest import FakeProvider, GatewayFactory, wait_until_healthy

pytestmark = pytest.mark.timeout(90)

USER = "admin"
PASSWORD = "fuzz-password"
EXAMPLES_PER_OPERATION = 4
REQUEST_TIMEOUT_S = 5.0


def fuzz_operations(schema_document: dict[str, Any], base_url: str) -> list[str]:
    """Send generated requests to every operation; return the failures."""
    schema = schemathesis.openapi.from_dict(schema_document)
    failures: list[str] = []
    with requests.Session() as session:
        session.trust_env = False
        session.auth = (USER, PASSWORD)
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzz_operation(operation, mode, session, base_url, failures)
                except hypothesis.errors.Unsatisfiable:
                    # An operation without parameters or body has no
                    # invalid request to generate.
                    if mode is GenerationMode.POSITIVE:
                        raise
    return failures


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    session: requests.Session,
    base_url: str,
    failures: list[str],
) -> None:
    """Send generated requests to one operation; append undocumented 5xx."""
    responses = operation.definition.raw["responses"]
    documented = {int(code) for code in responses if code.isdigit()}
    label = f"{operation.method.upper()} {operation.path}"

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        response = case.call(
            base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S
        )
        status = response.status_code
        if status >= 500 and status not in documented:
            failures.append(
                f"{label}: undocumented {status} for "
                f"{case.as_curl_command()}: {response.text[:200]}"
            )

    send()


@pytest.mark.timeout(90)
async def test_openapi_operations_fuzzed(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    # The fake provider's log stream and slow function respond at once.
    provider.release.set()
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        document = (await client.get("/openapi.json")).json()
    assert "/function/{name}" in document["paths"]
    assert "/system/dead-letters" in document["paths"]

    failures = await asyncio.to_thread(fuzz_operations, document, gateway.url)

    assert failures == []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        health = await client.get("/healthz")
    assert health.status_code == 200
