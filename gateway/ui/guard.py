"""Request checks and response headers shared by the console and its JSON routes.

Browsers resend basic-auth credentials with requests that other sites make,
so every route of the console, and `GET /system/async-calls`, rejects a
request whose `Origin` names another origin. A state-changing console route
also requires a JSON body and the `X-Faashub-Console` header: a cross-site
HTML form can send neither, and a cross-site `fetch` that sets them needs a
CORS preflight, which the gateway never grants. This module does not
authenticate: `gateway.auth` does that before a request reaches the console.

`HostCheck` defends against DNS rebinding. A page on another site can
rebind its own name to 127.0.0.1 and then call a gateway on loopback as the
same origin, with its own name in `Host` and `Origin`, so the Origin check
passes. A gateway that listens on loopback, or that has `allowed_hosts`
set, therefore rejects `/ui` and `/system` requests whose `Host` names
neither a loopback address nor an allowed host.
"""

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

from starlette.types import Message, Send

from faashub import errors

# Request header that each state-changing call of the console's script sends.
CONSOLE_HEADER = "x-faashub-console"

# Sent with every console response. The pages load only their own script and
# style sheet, so no inline script or style is allowed.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
)


def with_security_headers(send: Send) -> Send:
    """Wrap `send` so that a response start gets `SECURITY_HEADERS` added."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", []),
                *((name.encode(), value.encode()) for name, value in SECURITY_HEADERS),
            ]
        await send(message)

    return send_with_headers


def header(raw_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """Return the first value of header `name` (lowercase), or None."""
    for raw_name, value in raw_headers:
        if raw_name == name:
            return value.decode("latin-1")
    return None


def cross_origin_problem(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Return why a request comes from another origin, or None if it does not.

    The `Origin` header's host and port must equal the `Host` header. The
    scheme is not compared, because a proxy in front of the gateway may end
    TLS. A request without `Origin` passes: browsers send it with every
    cross-origin request that could change state, and non-browser clients
    such as faas-cli do not send it.
    """
    headers = list(raw_headers)
    origin = header(headers, b"origin")
    if origin is None:
        return None
    host = (header(headers, b"host") or "").lower()
    origin_host = urllib.parse.urlsplit(origin).netloc.lower() if origin else ""
    if origin == "null" or not origin_host or origin_host != host:
        return (
            f"Cross-origin request rejected: Origin {origin!r} is not this "
            f"gateway ({host or 'no Host header'}). Open the console at the "
            "gateway's own address."
        )
    return None


def forgery_problem(
    raw_headers: Iterable[tuple[bytes, bytes]], *, method: str
) -> str | None:
    """Return why a state-changing request may be forged, or None.

    A request passes when it comes from this origin, carries a JSON body
    (`Content-Type: application/json`) and the `X-Faashub-Console` header.
    """
    headers = list(raw_headers)
    problem = cross_origin_problem(headers)
    if problem is not None:
        return problem
    if header(headers, b"sec-fetch-site") == "cross-site":
        return "Cross-site request rejected: Sec-Fetch-Site is cross-site."
    if header(headers, CONSOLE_HEADER.encode()) is None:
        return (
            f"{method} requests to the console need the X-Faashub-Console header, "
            "which the console's own script sends; use the console page or the "
            "/system API."
        )
    content_type = header(headers, b"content-type") or ""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return (
            f"{method} requests to the console need Content-Type: "
            f"application/json, not {content_type or 'none'!r}."
        )
    return None


# Host names that always resolve to this machine, besides loopback literals.
_LOOPBACK_NAMES = frozenset({"localhost"})
_HOST_NAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)


def is_loopback_host(host: str) -> bool:
    """Return whether `host` (a name or an IP literal, no port) is loopback.

    Loopback means `localhost`, an address in 127.0.0.0/8 or ::1.
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str | None:
    """Return the host of a `Host` header value, lowercase and without port.

    An IPv6 literal loses its brackets. Return None for a value that is not
    `host[:port]`.
    """
    value = host_header.strip().lower()
    if value.startswith("["):
        literal, bracket, port = value[1:].partition("]")
        if not bracket or (port and not _is_port(port)):
            return None
        return literal
    name, colon, port = value.partition(":")
    if not name or (colon and not _is_port(":" + port)):
        return None
    return name


def _is_port(text: str) -> bool:
    """Return whether `text` is ":" followed by 1 to 5 digits."""
    digits = text.removeprefix(":")
    return (
        text.startswith(":")
        and digits.isascii()
        and digits.isdigit()
        and len(digits) <= 5
    )


def parse_allowed_hosts(text: str) -> frozenset[str]:
    """Parse the comma-separated `allowed_hosts` setting; raise SettingsError.

    Each entry is a host name or an IP address, without a port. IPv6
    addresses may be written with or without brackets.
    """
    hosts: set[str] = set()
    for entry in text.split(","):
        host = entry.strip().lower()
        if not host:
            continue
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOST_NAME.match(host) or len(host) > 253:
                raise errors.SettingsError(
                    f"Invalid host {entry.strip()!r} in allowed_hosts: give host "
                    "names or IP addresses without a port, separated by commas, "
                    "such as faas.example.com,10.0.0.5."
                ) from None
        hosts.add(host)
    return frozenset(hosts)


class HostCheck:
    """Rejects requests whose `Host` is neither loopback nor an allowed host."""

    def __init__(self, allowed_hosts: frozenset[str]) -> None:
        self._allowed_hosts = allowed_hosts

    @classmethod
    def from_settings(
        cls, *, listen_host: str, allowed_hosts: str
    ) -> "HostCheck | None":
        """Build the check for a gateway, or None when it needs none.

        The check applies when the gateway listens on a loopback address or
        when `allowed_hosts` names at least one host. Raises SettingsError
        for an invalid `allowed_hosts` entry.
        """
        allowed = parse_allowed_hosts(allowed_hosts)
        if not allowed and not is_loopback_host(listen_host):
            return None
        return cls(allowed)

    def problem(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Return why the request's `Host` is not accepted, or None if it is."""
        value = header(raw_headers, b"host")
        if value is not None:
            name = host_name(value)
            if name is not None and (
                is_loopback_host(name) or name in self._allowed_hosts
            ):
                return None
        fix = (
            "Open the gateway at localhost or 127.0.0.1, or add the name you "
            "use to --allowed-hosts (FAASHUB_ALLOWED_HOSTS)."
        )
        if value is None:
            return f"Request rejected: it has no Host header. {fix}"
        return (
            f"Request rejected: Host {value!r} names neither a loopback address "
            "nor a host in the gateway's allowed_hosts setting, so the request "
            f"may come from a page that rebound its DNS name to this gateway. {fix}"
        )
