"""The addresses a callback may reach, and the session that enforces them.

A callback URL comes from the client that called the gateway, so a request
to it is a server-side request forgery risk. Two components post to such URLs: the
queue-worker, which delivers each call's result (`queue_worker.callback`),
and the gateway, which posts a callback dead letter again on redrive
(`gateway.dead_letters`). Both build a `CallbackGuard` from their
callback_deny_networks and callback_allow settings and post through
`new_callback_session`.

That session resolves each host itself (`GuardedResolver`), checks every
address, and connects only to the checked addresses, so a DNS answer that
changes between check and connection (DNS rebinding) cannot bypass the check.
A URL whose host is an IP literal skips aiohttp's resolver, so callers check
it first with `literal_refusal`. Link-local networks (169.254.0.0/16,
fe80::/10) and cloud metadata addresses are always denied, and no setting
changes that. The networks of callback_deny_networks are denied too, except
for smaller networks inside them that callback_allow lists. When
callback_allow is set, only its hosts and networks are allowed. Loopback and
private networks are allowed by default, so that `faashub up` can post
callbacks to a receiver on the same machine.

This module does not build or send callback requests, and does not decide
what happens to a rejected one: the queue-worker dead-letters it, and the
gateway rejects the redrive.
"""

import ipaddress
import socket
import weakref
from dataclasses import dataclass
from typing import Final

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from faashub import __version__, http_sessions
from faashub.settings import setting_name

# User-Agent of every callback request. A redrive from the gateway sends the
# same value as the queue-worker, so every callback has one User-Agent.
CALLBACK_USER_AGENT: Final = f"faashub-queue-worker/{__version__}"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The flag and variable of callback_allow, named in the messages that suggest it.
ALLOW_SETTING: Final = setting_name("callback_allow")

# Addresses no callback may reach: link-local networks, where the AWS, GCP and
# Azure metadata service (169.254.169.254) lives, AWS's IPv6 metadata address,
# Alibaba Cloud's metadata address, and the unspecified and multicast ranges.
ALWAYS_DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
        "0.0.0.0/32",
        "::/128",
        "224.0.0.0/4",
        "ff00::/8",
    )
)


class CallbackRefused(OSError):
    """The callback URL resolves to an address that callbacks may not reach."""


@dataclass(frozen=True, slots=True)
class CallbackGuard:
    """Rules for the addresses that callbacks may connect to."""

    denied: tuple[IPNetwork, ...] = ()
    """Networks denied beside ALWAYS_DENIED."""
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    """Host names allowed when an allow list is set; their addresses must
    still not be denied."""

    @classmethod
    def from_settings(cls, *, deny_networks: str, allow: str) -> "CallbackGuard":
        """Parse the comma-separated callback_deny_networks and callback_allow.

        Raises ValueError naming the entry that is neither a network nor a host.
        """
        denied = tuple(_network(entry) for entry in _entries(deny_networks))
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in _entries(allow):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(denied, tuple(networks), frozenset(hosts))

    @property
    def has_allow_list(self) -> bool:
        return bool(self.allowed_networks or self.allowed_hosts)

    def check(self, host: str, address: str) -> None:
        """Raise CallbackRefused unless `host` may be reached at `address`.

        ALWAYS_DENIED comes first and no setting lifts it. Between
        callback_deny_networks and callback_allow, the smallest network that
        contains the address decides, and a deny wins a tie. So an allowed
        10.1.0.0/16 opens part of a denied 10.0.0.0/8, and a denied
        127.0.0.2/32 closes part of an allowed 127.0.0.0/8.
        """
        ip = ipaddress.ip_address(address.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network in ALWAYS_DENIED:
            if ip in network:
                raise CallbackRefused(
                    f"callback refused: host {host!r} resolves to {ip}, in "
                    f"{network}, which callbacks may never reach (link-local, "
                    "cloud metadata, unspecified and multicast addresses)"
                )
        denied = _smallest_containing(ip, self.denied)
        allowed = _smallest_containing(ip, self.allowed_networks)
        if denied is not None and (
            allowed is None or allowed.prefixlen <= denied.prefixlen
        ):
            raise CallbackRefused(
                f"callback refused: host {host!r} resolves to {ip}, in the denied "
                f"network {denied} of callback_deny_networks. To allow it, add a "
                f"network inside {denied} that contains {ip} to callback_allow "
                f"({ALLOW_SETTING})"
            )
        if allowed is not None:
            return
        if self.has_allow_list and host.lower().rstrip(".") not in self.allowed_hosts:
            raise CallbackRefused(
                f"callback refused: host {host!r} ({ip}) is not in callback_allow. "
                f"To allow it, add the host or its network to callback_allow "
                f"({ALLOW_SETTING})"
            )


def _smallest_containing(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: tuple[IPNetwork, ...],
) -> IPNetwork | None:
    """Return the network of `networks` with the longest prefix that contains `ip`."""
    containing = [network for network in networks if ip in network]
    return max(containing, key=lambda network: network.prefixlen, default=None)


class GuardedResolver(AbstractResolver):
    """Resolves callback hosts, raising CallbackRefused if any address is denied.

    Refusing the whole host, instead of connecting to its other addresses,
    keeps a host that resolves partly to a metadata address from working by
    chance.
    """

    def __init__(self, guard: CallbackGuard) -> None:
        self._guard = guard
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            self._guard.check(host, result["host"])
        return results

    async def close(self) -> None:
        await self._resolver.close()


def new_callback_session(guard: CallbackGuard, *, limit: int) -> aiohttp.ClientSession:
    """Return a session that connects only where `guard` allows.

    Its connector resolves through `GuardedResolver`, so each connection goes
    to an address that was checked. IP literals skip aiohttp's resolver, so
    callers check them with `literal_refusal` before posting.
    """
    session = http_sessions.new_session(
        limit=limit,
        resolver=GuardedResolver(guard),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": CALLBACK_USER_AGENT},
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
        request_class=http_sessions.LeanRequest,
        # NB: proxies from the environment would connect on the poster's
        # behalf to an address that was never checked.
        trust_env=False,
    )
    _GUARDED_SESSIONS.add(session)
    return session


# Sessions made by new_callback_session, so is_guarded can tell them apart.
_GUARDED_SESSIONS: "weakref.WeakSet[aiohttp.ClientSession]" = weakref.WeakSet()


def is_guarded(session: aiohttp.ClientSession) -> bool:
    """Return whether `session` came from `new_callback_session`."""
    return session in _GUARDED_SESSIONS


def literal_refusal(guard: CallbackGuard, url: str) -> str:
    """Check a URL whose host is an IP literal, which skips the resolver.

    Returns why `guard` refuses it, or "" when it does not (a host name is
    checked by GuardedResolver when the session connects).
    """
    try:
        host = yarl.URL(url).raw_host
    except (TypeError, ValueError):
        return ""  # aiohttp reports the invalid URL
    if not host:
        return ""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return ""  # a name: GuardedResolver checks its addresses
    try:
        guard.check(host, host)
    except CallbackRefused as exc:
        return str(exc)
    return ""


def _entries(text: str) -> list[str]:
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def _network(entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ValueError(
            f"Invalid network {entry!r} in callback_deny_networks: use CIDR "
            "notation such as 10.0.0.0/8 or fd00::/8."
        ) from exc
