"""The worker's callback guard against server-side request forgery.

Callbacks go to URLs that callers choose. These tests run a real worker
against a real nats-server, a recording fake gateway and a real receiver.
"""

import ipaddress

import aiohttp
import pytest
from nats.js import JetStreamContext

from faashub.call_status import CallState
from faashub.callback_guard import (
    CallbackGuard,
    CallbackRefused,
    GuardedResolver,
    new_callback_session,
)
from faashub.queued_call import QueuedCall
from queue_worker.callback import CallbackOptions, CallbackSender, Delivery
from queue_worker.invoke import FunctionResult
from tests.conftest import LOOPBACK, free_port
from tests.queue_worker.conftest import (
    RecordingServer,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_dead_letters,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(30)

RESULT = FunctionResult(status=200, body=b"result")


def options(guard: CallbackGuard) -> CallbackOptions:
    return CallbackOptions(
        timeout_s=5,
        attempts=3,
        min_wait_s=0.01,
        max_wait_s=0.01,
        jitter="none",
        guard=guard,
    )


async def deliver(call: QueuedCall, guard: CallbackGuard) -> Delivery:
    """Deliver one callback with a sender that has no guarded session of its own."""
    async with aiohttp.ClientSession() as unguarded:
        sender = CallbackSender(unguarded, options(guard))
        return await sender.deliver(call, RESULT, duration_s=0.1, retry=1, retry_max=1)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://169.254.169.254/latest/meta-data/", id="aws-metadata"),
        pytest.param("http://[fd00:ec2::254]/latest/", id="aws-ipv6-metadata"),
        pytest.param("http://[::ffff:169.254.169.254]/", id="ipv4-mapped"),
        pytest.param("http://[fe80::1]:8080/", id="ipv6-link-local"),
    ],
)
async def test_metadata_callback_dead_lettered(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer, url: str
) -> None:
    settings = make_settings(nats_url, gateway.url, callback_attempts=3)
    call = make_call(callback_url=url)

    async with running_worker(settings):
        await publish(js, call)
        letters = await wait_for_dead_letters(js, 1)
        status = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert len(letters) == 1
    letter = letters[0]
    assert letter.kind == "callback"
    assert letter.reason == "callback-refused"
    assert "callback refused" in letter.detail
    assert "was not sent" in letter.detail
    assert "may never reach" in letter.detail
    # No setting lifts this denial, so the detail suggests none.
    assert "callback_allow" not in letter.detail
    assert "times" not in letter.detail
    # A refused address is final: one try, no retries.
    assert len(letter.attempts) == 1
    assert status.callback_status is None
    assert status.dead_letter_reason == "callback-refused"
    assert len(gateway.requests) == 1


async def test_denied_network_checked_after_dns(receiver: RecordingServer) -> None:
    # "localhost" resolves to loopback, which this deny list covers, so only a
    # check of the resolved address refuses it.
    port = receiver.url.rsplit(":", 1)[1]
    guard = CallbackGuard.from_settings(deny_networks="127.0.0.0/8, ::1/128", allow="")
    call = make_call(callback_url=f"http://localhost:{port}/done")

    delivery = await deliver(call, guard)

    assert not delivery.delivered
    assert delivery.refused
    assert delivery.dead_letter_reason == "callback-refused"
    assert "callback refused" in delivery.error
    assert "'localhost'" in delivery.error
    assert len(delivery.tries) == 1
    assert receiver.requests == []


async def test_unreachable_callback_not_refused() -> None:
    # Nothing listens on the port: the delivery fails but the guard allowed it.
    call = make_call(callback_url=f"http://{LOOPBACK}:{free_port()}/done")

    delivery = await deliver(call, CallbackGuard())

    assert not delivery.delivered
    assert not delivery.refused
    assert delivery.dead_letter_reason == "callback-failed"
    assert len(delivery.tries) == 3
    detail = delivery.dead_letter_detail(call.callback_url)
    assert detail.startswith(f"The callback to http://{LOOPBACK}:")
    assert "failed after 3 tries. The last error was: " in detail


async def test_guarded_session_reused(receiver: RecordingServer) -> None:
    guard = CallbackGuard()
    call = make_call(callback_url=f"{receiver.url}/done")
    async with new_callback_session(guard, limit=4) as session:
        sender = CallbackSender(session, options(guard))
        first = await sender.deliver(call, RESULT, duration_s=0.1, retry=1, retry_max=1)
        second = await sender.deliver(
            call, RESULT, duration_s=0.1, retry=1, retry_max=1
        )
    assert first.delivered
    assert second.delivered
    assert len(receiver.requests) == 2


async def test_loopback_allowed_by_default(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    settings = make_settings(nats_url, gateway.url)
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    assert receiver.requests[0].raw_path == "/done"


async def test_redirect_not_followed(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    receiver.status = 307
    receiver.reply_headers = {"Location": "http://169.254.169.254/"}
    settings = make_settings(nats_url, gateway.url, callback_attempts=2)
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(settings):
        await publish(js, call)
        letters = await wait_for_dead_letters(js, 1)

    assert len(receiver.requests) == 1
    assert letters[0].detail.count("status 307") >= 1


def test_allow_list_admits_only_listed() -> None:
    guard = CallbackGuard.from_settings(
        deny_networks="", allow="hooks.example.com, 10.1.0.0/16"
    )
    guard.check("hooks.example.com", "203.0.113.7")
    guard.check("10.1.2.3", "10.1.2.3")
    with pytest.raises(CallbackRefused, match="not in callback_allow"):
        guard.check("other.example.com", "203.0.113.7")
    # A listed host still may not resolve to a metadata address.
    with pytest.raises(CallbackRefused, match="169.254.0.0/16"):
        guard.check("hooks.example.com", "169.254.169.254")


@pytest.mark.parametrize(
    ("allow", "address"),
    [
        pytest.param("0.0.0.0/0", "169.254.169.254", id="every-ipv4"),
        pytest.param("169.254.0.0/16", "169.254.169.254", id="link-local"),
        pytest.param("100.100.100.200/32", "100.100.100.200", id="alibaba-metadata"),
        pytest.param("::/0", "fd00:ec2::254", id="aws-ipv6-metadata"),
    ],
)
def test_allow_list_never_lifts_metadata(allow: str, address: str) -> None:
    guard = CallbackGuard.from_settings(deny_networks="", allow=allow)

    with pytest.raises(CallbackRefused, match="may never reach"):
        guard.check(address, address)


def test_smaller_deny_inside_allow_refuses() -> None:
    guard = CallbackGuard.from_settings(
        deny_networks="127.0.0.2/32", allow="127.0.0.0/8"
    )

    guard.check("127.0.0.1", "127.0.0.1")
    with pytest.raises(CallbackRefused, match="127.0.0.2/32 of callback_deny_networks"):
        guard.check("127.0.0.2", "127.0.0.2")


def test_smaller_allow_inside_deny_admits() -> None:
    guard = CallbackGuard.from_settings(deny_networks="10.0.0.0/8", allow="10.1.0.0/16")

    guard.check("10.1.2.3", "10.1.2.3")
    with pytest.raises(CallbackRefused) as refused:
        guard.check("10.2.0.1", "10.2.0.1")

    message = str(refused.value)
    assert "10.0.0.0/8 of callback_deny_networks" in message
    assert "--callback-allow" in message


def test_same_network_denied_and_allowed_refuses() -> None:
    guard = CallbackGuard.from_settings(
        deny_networks="192.168.0.0/16", allow="192.168.0.0/16"
    )

    with pytest.raises(CallbackRefused, match="callback_deny_networks"):
        guard.check("192.168.1.1", "192.168.1.1")


def test_invalid_deny_network_rejected() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        CallbackGuard.from_settings(deny_networks="10.0.0.0/33", allow="")


async def test_resolver_refuses_denied_address() -> None:
    resolver = GuardedResolver(
        CallbackGuard(denied=(ipaddress.ip_network("127.0.0.0/8"),))
    )
    try:
        with pytest.raises(CallbackRefused):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
