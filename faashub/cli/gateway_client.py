"""Gateway access for the user commands: the URL, an HTTP client and errors.

The gateway comes from `--gateway`, then `OPENFAAS_URL`, then a stack file's
`provider.gateway`, then http://127.0.0.1:8080, as faas-cli picks it. Before
that default comes the URL that `faashub up` recorded in the state folder
that FAASHUB_STATE_DIR names, the folder its start-up hint exports. The
client sends the credentials that `faashub.credentials.find_cli_credentials`
picks for that gateway, if any. Each request records whose credentials it
carried and where they came from, so that the message of a 401 can name
them and the fix.
"""

import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from faashub import constants, credentials, errors, settings

REQUEST_TIMEOUT_S = 60.0

GATEWAY_HELP = (
    "Gateway URL (default: OPENFAAS_URL, then, for 'deploy -f', the stack file's "
    "provider.gateway, then the URL of the hub in FAASHUB_STATE_DIR, then "
    f"{constants.DEFAULT_GATEWAY_URL})."
)


# The key of a request's `extensions` entry that names the credentials sent.
SENT_CREDENTIALS = "faashub.sent_credentials"


class GatewayError(errors.FaashubError):
    """The gateway could not be reached or rejected a request."""


@dataclass(frozen=True, slots=True)
class SentCredentials:
    """The user whose credentials a request carried, and where they came from.

    `source` completes the sentence "the gateway rejected the credentials of
    user U ..." and names the fix.
    """

    gateway: str
    user: str
    source: str


class _CliBasicAuth(httpx.BasicAuth):
    """HTTP basic auth that also records the credentials in each request."""

    def __init__(self, sent: SentCredentials, password: str) -> None:
        super().__init__(sent.user, password)
        self._sent = sent

    def auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.extensions[SENT_CREDENTIALS] = self._sent
        yield from super().auth_flow(request)


def resolve_gateway(flag_value: str | None, stack_gateway: str | None = None) -> str:
    """Pick the gateway URL: flag, OPENFAAS_URL, the stack file, then the default."""
    url = flag_value or os.environ.get("OPENFAAS_URL") or stack_gateway
    return (url or _hub_gateway() or constants.DEFAULT_GATEWAY_URL).rstrip("/")


def _hub_gateway() -> str:
    """Return the gateway URL that the hub of FAASHUB_STATE_DIR recorded, or ""."""
    state_dir = os.environ.get(credentials.ENV_STATE_DIR)
    if not state_dir:
        return ""
    folder = credentials.hub_credentials_dir(Path(state_dir).expanduser())
    try:
        return (folder / credentials.HUB_GATEWAY_FILE).read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@contextmanager
def gateway_client(
    gateway: str, timeout_s: float = REQUEST_TIMEOUT_S
) -> Iterator[httpx.Client]:
    """Yield an httpx client for `gateway`; turn a transport error into GatewayError.

    Only a connection that could not be made gets the hint to start the hub.
    A gateway URL without a scheme, a request that could not be sent and a
    timeout each get their own message, because the gateway may well be up.
    """
    auth = _cli_auth(gateway)
    try:
        with httpx.Client(base_url=gateway, timeout=timeout_s, auth=auth) as client:
            yield client
    except httpx.TransportError as exc:
        raise GatewayError(transport_error_message(gateway, exc, timeout_s)) from exc


def _cli_auth(gateway: str) -> _CliBasicAuth | None:
    """Return the basic auth for `gateway` that find_cli_credentials picks, or None."""
    found = credentials.find_cli_credentials(
        gateway, os.environ, default_state_dir=settings.default_state_dir()
    )
    if found is None:
        return None
    if found.source == "variables":
        source = (
            f"from {credentials.ENV_USER} and {credentials.ENV_PASSWORD}. Set "
            "them to the gateway's user and password, or unset both so that the "
            "CLI takes the credentials from 'faashub login' or the hub's state folder"
        )
    elif found.source == "login store":
        source = (
            f"that 'faashub login' stored in {found.location}. Run 'faashub login "
            f"--gateway {gateway}' again with the gateway's password"
        )
    else:
        source = (
            f"of the hub with the state folder {found.location}, which recorded "
            f"this gateway URL. Set {credentials.ENV_STATE_DIR} to the state folder "
            "of the hub that serves it, or run 'faashub login'"
        )
    sent = SentCredentials(gateway=gateway, user=found.credentials.user, source=source)
    return _CliBasicAuth(sent, found.credentials.password)


def transport_error_message(
    gateway: str, exc: httpx.TransportError, timeout_s: float
) -> str:
    """Return what went wrong in a request to `gateway` and what to do next."""
    detail = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        scheme, separator, _ = gateway.partition("://")
        if separator:
            return (
                f"Invalid gateway URL {gateway!r}: the scheme {scheme!r} is not "
                "supported. Use http:// or https://, for example "
                f"{constants.DEFAULT_GATEWAY_URL}, in --gateway or OPENFAAS_URL."
            )
        return (
            f"Invalid gateway URL {gateway!r} ({exc}). Give the scheme too, "
            f"http:// or https://, for example {constants.DEFAULT_GATEWAY_URL}, in "
            "--gateway or OPENFAAS_URL."
        )
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return (
            f"Cannot reach the gateway at {gateway} ({detail}). "
            "Start it with 'faashub up', or pass --gateway or set OPENFAAS_URL."
        )
    if isinstance(exc, httpx.LocalProtocolError):
        return f"Invalid request, so it was not sent to the gateway ({detail})."
    if isinstance(exc, httpx.TimeoutException):
        return (
            f"The gateway at {gateway} sent no response within {timeout_s:g} s "
            f"({detail})."
        )
    return (
        f"The connection to the gateway at {gateway} failed during the request "
        f"({detail}). Check the hub's log."
    )


def check_response(response: httpx.Response, action: str) -> None:
    """Raise GatewayError with the gateway's message unless the response is 2xx."""
    if response.is_success:
        return
    if response.status_code == 401:
        raise GatewayError(
            f"{action} failed with HTTP 401: {unauthorized_reason(response)}"
        )
    raise GatewayError(
        f"{action} failed with HTTP {response.status_code}: {error_text(response)}"
    )


def unauthorized_reason(response: httpx.Response) -> str:
    """Return why the gateway sent a 401 and how to fix it, starting in lower case.

    The reason depends on whether the request carried credentials, and from
    where the CLI took them.
    """
    sent = response.request.extensions.get(SENT_CREDENTIALS)
    if isinstance(sent, SentCredentials):
        return (
            f"the gateway at {sent.gateway} rejected the credentials of user "
            f"{sent.user!r} {sent.source}."
        )
    return (
        f"the gateway needs credentials. Run 'faashub login', or set "
        f"{credentials.ENV_USER} and {credentials.ENV_PASSWORD}. For a hub "
        "started with 'faashub up --state-dir DIR', set "
        f"{credentials.ENV_STATE_DIR}=DIR instead."
    )


def error_text(response: httpx.Response) -> str:
    """Return the message of an error response, plain text or FastAPI's JSON."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        return str(document["detail"])
    return response.text.strip() or response.reason_phrase


def namespace_params(namespace: str) -> dict[str, str]:
    """Return the `namespace` query parameter, or none for the default."""
    return {"namespace": namespace} if namespace else {}


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """Print rows under their column names, each column as wide as its widest cell."""
    widths = [
        max([len(column), *(len(row[index]) for row in rows)])
        for index, column in enumerate(columns)
    ]
    for line in [columns, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
