"""Authentication and header limits of a real gateway under uvicorn.

The fake provider returns 202 on /system/* and 201 on /function/*, so those
statuses show that a request got through.
"""

import base64
import logging
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    stored_messages,
    wait_until_healthy,
)

pytestmark = pytest.mark.timeout(60)

USER = "admin"
PASSWORD = "s3cret-password"
GOOD = httpx.BasicAuth(USER, PASSWORD)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_system_requires_credentials(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        anonymous = await client.get("/system/functions")
        wrong = await client.get("/system/functions", auth=(USER, "guess"))
        wrong_user = await client.get("/system/functions", auth=("root", PASSWORD))
        garbage = await client.get(
            "/system/functions", headers={"Authorization": "Basic !!!"}
        )
        right = await client.get("/system/functions", auth=GOOD)
        bare_system = await client.get("/system")
    assert anonymous.status_code == 401
    challenges = anonymous.headers.get_list("www-authenticate")
    assert 'Basic realm="faashub", charset="UTF-8"' in challenges
    assert wrong.status_code == 401
    assert wrong_user.status_code == 401
    assert garbage.status_code == 401
    assert right.status_code == 202
    assert bare_system.status_code == 401
    assert anonymous.text.startswith("Authentication required:")
    # A wrong user and a wrong password get one text, which names neither.
    for rejected in (wrong, wrong_user, garbage):
        assert rejected.text.startswith("Invalid credentials:")
    assert wrong.text == wrong_user.text


async def test_invoke_open_by_default(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.post("/function/echo", content=b"hi")
        health = await client.get("/healthz")
    assert response.status_code == 201
    assert health.status_code == 200


async def test_auth_invoke_protects_functions(
    nats_url: str, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-one\n\ntoken-two\n")
    gateway = await start_gateway(
        nats_url=nats_url,
        auth_user=USER,
        auth_password=PASSWORD,
        auth_tokens_file=tokens,
        auth_invoke=True,
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        anonymous = await client.post("/function/echo", content=b"hi")
        async_anonymous = await client.post("/async-function/echo", content=b"hi")
        with_basic = await client.post("/function/echo", content=b"hi", auth=GOOD)
        with_token = await client.post(
            "/function/echo",
            content=b"hi",
            headers={"Authorization": "Bearer token-two"},
        )
        wrong_token = await client.get(
            "/system/functions", headers={"Authorization": "Bearer token-three"}
        )
        system_token = await client.get(
            "/system/functions", headers={"Authorization": "bearer token-one"}
        )
    assert anonymous.status_code == 401
    assert async_anonymous.status_code == 401
    assert with_basic.status_code == 201
    assert with_token.status_code == 201
    assert wrong_token.status_code == 401
    assert system_token.status_code == 202


async def test_secret_mount_path_credentials(
    nats_url: str, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    (tmp_path / "basic-auth-user").write_text("mounted\n")
    (tmp_path / "basic-auth-password").write_text("from-file\n")
    gateway = await start_gateway(
        nats_url=nats_url,
        auth_secret_mount_path=str(tmp_path),
        # The mounted files win over the user and password settings.
        auth_user=USER,
        auth_password=PASSWORD,
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        mounted = await client.get("/system/functions", auth=("mounted", "from-file"))
        settings_pair = await client.get("/system/functions", auth=GOOD)
    assert mounted.status_code == 202
    assert settings_pair.status_code == 401


async def test_repeated_failures_locked_out(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url,
        auth_user=USER,
        auth_password=PASSWORD,
        auth_max_failures=3,
        auth_failure_window_s=600,
        # Loopback is exempt by default, and the test client is on loopback.
        auth_lockout_exempt="",
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        failures = [
            await client.get("/system/functions", headers=basic(USER, f"guess{n}"))
            for n in range(3)
        ]
        locked = await client.get("/system/functions", auth=GOOD)
    assert [response.status_code for response in failures] == [401, 401, 401]
    assert locked.status_code == 429
    retry_after = int(locked.headers["retry-after"])
    assert 0 < retry_after <= 600
    assert "Too many failed authentication attempts" in locked.text


async def test_open_gateway_warns(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        gateway = await start_gateway(nats_url=nats_url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.get("/system/functions")
    assert response.status_code == 202
    warnings = [r for r in caplog.records if r.name == "gateway.auth"]
    assert len(warnings) == 1
    assert "no credentials configured" in warnings[0].getMessage()


async def test_credentials_never_logged(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        denied = await client.get("/system/functions", auth=(USER, "canary-guess"))
    assert denied.status_code == 401
    assert "canary-guess" not in denied.text
    logged = "\n".join(
        record.getMessage() + str(record.__dict__) for record in caplog.records
    )
    assert "canary-guess" not in logged
    assert PASSWORD not in logged
    assert "authentication failed" in logged


@pytest.mark.parametrize(
    ("headers", "limit"),
    [
        pytest.param(
            {f"x-h{n}": "v" for n in range(30)}, "max_header_count", id="count"
        ),
        pytest.param({"x-big": "v" * 3000}, "max_header_bytes", id="bytes"),
    ],
)
async def test_header_limits_give_431(
    nats_url: str,
    start_gateway: GatewayFactory,
    headers: dict[str, str],
    limit: str,
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, max_header_count=20, max_header_bytes=2048
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.post("/function/echo", content=b"x", headers=headers)
        system = await client.get("/system/functions", headers=headers)
    assert response.status_code == 431
    assert limit in response.text
    assert system.status_code == 431


async def test_missing_credentials_not_a_failure(
    nats_url: str, start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A browser sends each first request without credentials.
    gateway = await start_gateway(
        nats_url=nats_url,
        auth_user=USER,
        auth_password=PASSWORD,
        auth_max_failures=2,
        auth_failure_window_s=600,
        auth_lockout_exempt="",
    )
    with caplog.at_level(logging.DEBUG, logger="gateway.auth"):
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            anonymous = [await client.get("/system/functions") for _ in range(3)]
            after_anonymous = await client.get("/system/functions", auth=GOOD)
            wrong = [
                await client.get("/system/functions", auth=(USER, f"guess{n}"))
                for n in range(2)
            ]
            after_wrong = await client.get("/system/functions", auth=GOOD)
    assert [response.status_code for response in anonymous] == [401, 401, 401]
    challenges = anonymous[0].headers.get_list("www-authenticate")
    assert 'Basic realm="faashub", charset="UTF-8"' in challenges
    assert after_anonymous.status_code == 202
    assert [response.status_code for response in wrong] == [401, 401]
    assert after_wrong.status_code == 429
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "gateway.auth" and record.levelno >= logging.WARNING
    ]
    assert warnings == [
        "authentication failed",
        "client locked out after repeated authentication failures",
    ]


async def test_gateway_credentials_not_forwarded(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("gateway-token\n")
    gateway = await start_gateway(
        nats_url=nats_url,
        auth_user=USER,
        auth_password=PASSWORD,
        auth_tokens_file=tokens,
        auth_invoke=True,
    )
    await wait_until_healthy(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        # A connector sends the gateway's credentials to pass auth_invoke.
        with_basic = await client.post("/function/echo", content=b"1", auth=GOOD)
        with_token = await client.post(
            "/function/echo",
            content=b"2",
            headers={"Authorization": "Bearer gateway-token"},
        )
        queued = await client.post("/async-function/echo", content=b"3", auth=GOOD)

    assert with_basic.status_code == 201
    assert with_token.status_code == 201
    assert queued.status_code == 202
    function_calls = [r for r in provider.received if r.path == "/function/echo"]
    assert [r.body for r in function_calls] == [b"1", b"2"]
    for received in function_calls:
        assert "Authorization" not in received.headers
    [message] = await stored_messages(nats_url)
    assert "authorization" not in {name.lower() for name in message.headers}


async def test_user_authorization_forwarded(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    await wait_until_healthy(gateway.url)
    user_token = {"Authorization": "Bearer token-for-the-function"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        sync = await client.post("/function/echo", content=b"1", headers=user_token)
        gateway_basic = await client.post("/function/echo", content=b"2", auth=GOOD)
        queued = await client.post(
            "/async-function/echo", content=b"3", headers=user_token
        )

    assert sync.status_code == 201
    assert gateway_basic.status_code == 201
    assert queued.status_code == 202
    first, second = [r for r in provider.received if r.path == "/function/echo"]
    assert first.headers["Authorization"] == "Bearer token-for-the-function"
    assert "Authorization" not in second.headers
    [message] = await stored_messages(nats_url)
    assert message.headers["authorization"] == "Bearer token-for-the-function"
