"""DNS rebinding: the Host check on `/system` and `/ui` of a real gateway.

A page on another site can resolve its own name to 127.0.0.1 and then call
a loopback gateway as its own origin. Its `Origin` then equals `Host`, and
only the `Host` value shows that the request is not meant for this gateway. The
gateways here run without credentials, as `faashub up --no-auth` does.
"""

import httpx
import pytest

from faashub import errors
from gateway.ui import guard
from tests.gateway.conftest import FakeProvider, GatewayFactory, wait_until_healthy

pytestmark = pytest.mark.timeout(30)

DEPLOYMENT = {"service": "evil", "image": "local/evil", "envProcess": "id"}


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


async def test_rebound_host_rejected(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    await wait_until_healthy(gateway.url)
    rebound = f"attacker.example:{port_of(gateway.url)}"
    headers = {"Host": rebound, "Origin": f"http://{rebound}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        deploy = await client.post(
            "/system/functions", json=DEPLOYMENT, headers=headers
        )
        listing = await client.get("/system/functions", headers=headers)
        console = await client.get("/ui", headers=headers)
        console_deploy = await client.post(
            "/ui/api/functions",
            json=DEPLOYMENT,
            headers={**headers, "X-Faashub-Console": "1"},
        )
        invoke = await client.post("/function/echo", content=b"hi", headers=headers)
    for response in (deploy, listing, console, console_deploy):
        assert response.status_code == 403
        assert f"Host '{rebound}'" in response.text
        assert "--allowed-hosts" in response.text
    assert console.headers["x-frame-options"] == "DENY"
    assert [r.path for r in provider.received if r.path.startswith("/system")] == []
    # Invocation routes are outside the check.
    assert invoke.status_code == 201


async def test_loopback_host_accepted(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    await wait_until_healthy(gateway.url)
    port = port_of(gateway.url)
    hosts = ["localhost", f"LOCALHOST:{port}", f"127.0.0.1:{port}", "127.9.8.7"]
    hosts.append(f"[::1]:{port}")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for host in hosts:
            response = await client.get("/system/functions", headers={"Host": host})
            assert response.status_code == 202, host


async def test_allowed_hosts_adds_names(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, allowed_hosts=" faas.example.com , [fd00::5] "
    )
    await wait_until_healthy(gateway.url)
    port = port_of(gateway.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        named = await client.get(
            "/system/functions", headers={"Host": f"Faas.Example.Com:{port}"}
        )
        literal = await client.get("/system/functions", headers={"Host": "[fd00::5]"})
        loopback = await client.get("/system/functions")
        other = await client.get(
            "/system/functions", headers={"Host": "faas.example.com.evil.example"}
        )
    assert named.status_code == 202
    assert literal.status_code == 202
    assert loopback.status_code == 202
    assert other.status_code == 403


def test_check_applies_by_bind_address() -> None:
    for listen_host in ("127.0.0.1", "127.0.1.1", "::1", "localhost", "[::1]"):
        check = guard.HostCheck.from_settings(listen_host=listen_host, allowed_hosts="")
        assert check is not None, listen_host
    assert (
        guard.HostCheck.from_settings(listen_host="0.0.0.0", allowed_hosts="") is None
    )
    assert (
        guard.HostCheck.from_settings(listen_host="10.1.2.3", allowed_hosts="") is None
    )
    behind_name = guard.HostCheck.from_settings(
        listen_host="0.0.0.0", allowed_hosts="faas.example.com"
    )
    assert behind_name is not None
    assert behind_name.problem([(b"host", b"faas.example.com")]) is None
    assert behind_name.problem([(b"host", b"10.1.2.3:8080")]) is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"localhost.evil.example",
        b"127.0.0.1.nip.io",
        b"localhost:80:80",
        b"localhost:http",
        b"[::1",
        b"::1",
        b"0.0.0.0",
        b"2130706433",
    ],
)
def test_unusual_host_rejected(value: bytes | None) -> None:
    check = guard.HostCheck(frozenset())
    headers = [] if value is None else [(b"host", value)]
    assert check.problem(headers) is not None


@pytest.mark.parametrize("entry", ["faas.example.com:8080", "http://x", "a b", "-x"])
def test_allowed_hosts_invalid_entry(entry: str) -> None:
    with pytest.raises(errors.SettingsError, match="allowed_hosts") as raised:
        guard.parse_allowed_hosts(f"ok.example,{entry}")
    assert repr(entry) in str(raised.value)
