"""Gateway access for the user commands: the URL, an HTTP client and errors.

The gateway comes from `--gateway`, then `OPENFAAS_URL`, then a stack file's
`provider.gateway`, then http://127.0.0.1:8080, as faas-cli picks it. Before
that default comes the URL that `faashub up` recorded in the state folder
that FAASHUB_STATE_DIR names, the folder its start-up hint exports. The
client sends the credentials that `faashub.credentials.find_cli_credentials`
picks for that gateway, if any.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from faashub import constants, credentials, errors, settings

REQUEST_TIMEOUT_S = 60.0


class GatewayError(errors.FaashubError):
    """The gateway could not be reached or rejected a request."""


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
def gateway_client(gateway: str) -> Iterator[httpx.Client]:
    """Yield an httpx client for `gateway`; turn a transport error into GatewayError."""
    found = credentials.find_cli_credentials(
        gateway, os.environ, default_state_dir=settings.default_state_dir()
    )
    auth = httpx.BasicAuth(found.user, found.password) if found else None
    try:
        with httpx.Client(
            base_url=gateway, timeout=REQUEST_TIMEOUT_S, auth=auth
        ) as client:
            yield client
    except httpx.TransportError as exc:
        raise GatewayError(
            f"Cannot reach the gateway at {gateway} ({exc.__class__.__name__}: {exc}). "
            "Start it with 'faashub up', or pass --gateway or set OPENFAAS_URL."
        ) from exc


def check_response(response: httpx.Response, action: str) -> None:
    """Raise GatewayError with the gateway's message unless the response is 2xx."""
    if response.is_success:
        return
    if response.status_code == 401:
        raise GatewayError(
            f"{action} failed with HTTP 401: the gateway needs credentials. Run "
            "'faashub login', or set FAASHUB_GATEWAY_USER and "
            "FAASHUB_GATEWAY_PASSWORD. For a hub started with 'faashub up "
            f"--state-dir DIR', set {credentials.ENV_STATE_DIR}=DIR instead."
        )
    raise GatewayError(
        f"{action} failed with HTTP {response.status_code}: {error_text(response)}"
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
