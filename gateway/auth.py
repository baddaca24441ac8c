"""Authentication of gateway requests: basic auth, bearer tokens, lockout.

`GatewayApp` asks `Authenticator.admit` before it routes a request under
`/system/` (and, when auth_invoke is on, an invocation). The check accepts
HTTP basic auth with the configured user and password, as the OpenFaaS
gateway does, or `Authorization: Bearer TOKEN` with one of the configured
tokens. Each comparison runs in constant time (`hmac.compare_digest`) over
every candidate, so the response time does not tell how much of a guess
matched.

A request without an Authorization header gets the 401 challenge and does
not count as a failure, because a browser sends its first request without
credentials. A client address that fails `max_failures` times within
`failure_window_s` gets 429 with Retry-After, even with correct credentials,
until the oldest of those failures is older than the window. The table of
addresses is bounded, so a flood from many addresses costs bounded memory.
Addresses in the `auth_lockout_exempt` networks (loopback by default) are
never locked out: otherwise any local process could lock the hub's own CLI
and connectors out with a few bad passwords, while a generated 43-character
password cannot be guessed over loopback at any rate the gateway serves.

This module does not read settings files or environment variables
(`faashub.credentials` does) and never logs a credential or an
Authorization header.
"""

import base64
import binascii
import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from starlette.types import Scope, Send

from faashub import credentials, errors
from faashub.credentials import Credentials
from faashub.settings import GatewaySettings
from gateway import asgi, constants

logger = logging.getLogger(__name__)

REALM = "faashub"
SYSTEM_PREFIX = "/system"
# The web console. It deploys, removes, invokes and redrives, so it takes the
# same auth as /system.
CONSOLE_PREFIX = "/ui"
# Routes that need credentials only when auth_invoke is on.
INVOKE_PREFIXES = (
    constants.FUNCTION_PREFIX,
    constants.ASYNC_FUNCTION_PREFIX,
    constants.ASYNC_CALLS_PREFIX,
)
# Failure histories kept at most; the oldest address is forgotten first.
MAX_TRACKED_ADDRESSES = 10_000

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CHALLENGE: asgi.Headers = [
    (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
    (b"www-authenticate", f'Bearer realm="{REALM}"'.encode()),
]


def from_settings(settings: GatewaySettings) -> "Authenticator | None":
    """Build the authenticator the settings ask for, or None for an open gateway.

    Raises CredentialsError when a credentials file cannot be read.
    """
    configured = credentials.configured_credentials(
        secret_mount_path=settings.auth_secret_mount_path,
        user=settings.auth_user,
        password=settings.auth_password.get_secret_value(),
        setting_prefix="auth",
    )
    tokens = _read_tokens(settings.auth_tokens_file)
    if configured is None and not tokens:
        logger.warning(
            "no credentials configured: /system/* is open to anyone who reaches "
            "the gateway; set --auth-secret-mount-path or --auth-user and "
            "--auth-password"
        )
        return None
    return Authenticator(
        configured,
        bearer_tokens=tokens,
        max_failures=settings.auth_max_failures,
        failure_window_s=settings.auth_failure_window_s,
        lockout_exempt=parse_networks(
            settings.auth_lockout_exempt, setting="auth_lockout_exempt"
        ),
    )


def parse_networks(text: str, *, setting: str) -> tuple[IPNetwork, ...]:
    """Parse comma-separated CIDR networks; raise SettingsError naming a bad one."""
    networks: list[IPNetwork] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise errors.SettingsError(
                f"Invalid network {entry!r} in {setting}: use CIDR notation such "
                "as 127.0.0.0/8 or ::1, separated by commas."
            ) from exc
    return tuple(networks)


def provider_authorization(settings: GatewaySettings) -> str:
    """Return the Authorization value the gateway sends the provider, or "".

    Raises CredentialsError when provider_token_file cannot be read.
    """
    if settings.provider_token_file is None:
        return ""
    token = credentials.read_token_file(
        settings.provider_token_file, setting="provider_token_file"
    )
    return f"Bearer {token}"


def is_system_path(path: str) -> bool:
    """Return whether `path` is under the protected `/system` API."""
    return path == SYSTEM_PREFIX or path.startswith(SYSTEM_PREFIX + "/")


def is_protected_path(path: str) -> bool:
    """Return whether `path` is under `/system` or the `/ui` console."""
    return is_system_path(path) or (
        path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
    )


def _read_tokens(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise credentials.CredentialsError(
            f"Cannot read the bearer tokens file {path} ({exc.__class__.__name__}). "
            "Check --auth-tokens-file."
        ) from exc
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise credentials.CredentialsError(
            f"The bearer tokens file {path} contains no token; put one a line."
        )
    return tokens


# The 401 bodies. A wrong user name and a wrong password get the same text,
# so that a guesser does not learn which one was right. The OpenFaaS gateway
# (faas-provider auth/v1/basic_auth.go) returns the body "invalid credentials"
# for both a missing and a wrong Authorization header.
MISSING_CREDENTIALS_MESSAGE: Final = (
    "Authentication required: send the gateway's credentials with HTTP basic "
    "auth, or a bearer token ('faashub login' stores them for the CLI).\n"
)
INVALID_CREDENTIALS_MESSAGE: Final = (
    "Invalid credentials: the user name and password, or the bearer token, are "
    "not the gateway's. Check them, or run 'faashub login' again.\n"
)


class Authenticator:
    """Checks the Authorization header of requests and locks out guessers."""

    def __init__(
        self,
        credentials: Credentials | None,
        *,
        bearer_tokens: Sequence[str] = (),
        max_failures: int,
        failure_window_s: float,
        lockout_exempt: Sequence[IPNetwork] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._user = credentials.user.encode() if credentials else None
        self._password = credentials.password.encode() if credentials else None
        self._tokens = [token.encode() for token in bearer_tokens if token]
        self._max_failures = max_failures
        self._window_s = failure_window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lockout_exempt = tuple(lockout_exempt)

    def is_valid(self, authorization: bytes | None) -> bool:
        """Return whether an Authorization header value carries accepted credentials."""
        if authorization is None:
            return False
        scheme, _, value = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == b"basic" and self._user is not None:
            return self._is_valid_basic(value)
        if scheme == b"bearer" and self._tokens:
            matched = False
            for token in self._tokens:
                # Compare with every token, so the time does not tell which matched.
                matched |= hmac.compare_digest(value, token)
            return matched
        return False

    def _is_valid_basic(self, value: bytes) -> bool:
        assert self._user is not None and self._password is not None
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        if not colon:
            return False
        user_matches = hmac.compare_digest(user, self._user)
        password_matches = hmac.compare_digest(password, self._password)
        return user_matches & password_matches

    async def admit(self, scope: Scope, send: Send) -> bool:
        """Return True for an authenticated request; else send 401 or 429.

        Called once per protected request, before its body is read.
        """
        address = _client_address(scope)
        exempt = self._is_exempt(address)
        # Called for exempt addresses too, since it also drops expired failures.
        retry_after_s = self._locked_for_s(address)
        if retry_after_s > 0 and not exempt:
            await asgi.send_text(
                send,
                429,
                "Too many failed authentication attempts from this address; "
                f"retry after {math.ceil(retry_after_s)} s.\n",
                headers=[(b"retry-after", str(math.ceil(retry_after_s)).encode())],
            )
            return False
        authorization = _authorization(scope)
        if self.is_valid(authorization):
            self._failures.pop(address, None)
            return True
        if authorization is None:
            # A browser sends its first request without credentials and
            # resends it after the challenge, so this is no failed attempt.
            logger.debug(
                "request without credentials challenged",
                extra={"ctx": {"client": address, "path": scope["path"]}},
            )
            message = MISSING_CREDENTIALS_MESSAGE
        else:
            self._record_failure(address, path=scope["path"], exempt=exempt)
            message = INVALID_CREDENTIALS_MESSAGE
        await asgi.send_text(send, 401, message, headers=_CHALLENGE)
        return False

    def _is_exempt(self, address: str) -> bool:
        """Return whether `address` is in a network exempt from the lockout."""
        if not self._lockout_exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._lockout_exempt)

    def _locked_for_s(self, address: str) -> float:
        """Return the seconds `address` stays locked out, 0 when it is not."""
        history = self._failures.get(address)
        if history is None:
            return 0.0
        now = self._clock()
        while history and now - history[0] >= self._window_s:
            history.popleft()
        if not history:
            del self._failures[address]
            return 0.0
        if len(history) < self._max_failures:
            return 0.0
        return history[0] + self._window_s - now

    def _record_failure(self, address: str, *, path: str, exempt: bool) -> None:
        history = self._failures.get(address)
        if history is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)
            history = self._failures[address] = deque(maxlen=self._max_failures)
        history.append(self._clock())
        self._failures.move_to_end(address)
        # One line for the first failure and one when the lockout starts, so a
        # guessing client cannot flood the log.
        if len(history) == 1:
            logger.warning(
                "authentication failed",
                extra={"ctx": {"client": address, "path": path}},
            )
        elif len(history) == self._max_failures and not exempt:
            logger.warning(
                "client locked out after repeated authentication failures",
                extra={
                    "ctx": {
                        "client": address,
                        "failures": len(history),
                        "lockout_s": self._window_s,
                    }
                },
            )


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            value_bytes: bytes = value
            return value_bytes
    return None


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "unknown"
    return str(client[0])
