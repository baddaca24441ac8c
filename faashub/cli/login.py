"""`faashub login` and `faashub logout`: the CLI's stored gateway credentials.

As with `faas-cli login`, the password is read from stdin with
`--password-stdin` (or given with `--password`, which other users of the
machine can see in the process list). The credentials are checked against
the gateway's `GET /system/functions` before they are stored, and kept per
gateway URL in an owner-only JSON file (`faashub.credentials`).
"""

import argparse
import os
import sys

import httpx

from faashub import credentials
from faashub.cli.gateway_client import (
    GATEWAY_HELP,
    REQUEST_TIMEOUT_S,
    GatewayError,
    resolve_gateway,
    transport_error_message,
)


def add_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Add `login` and `logout` to the `faashub` parser."""
    login = commands.add_parser(
        "login",
        help="Store credentials for a gateway.",
        description="Check credentials against a gateway and store them for the "
        "other faashub commands.",
    )
    login.add_argument(
        "-g",
        "--gateway",
        help=GATEWAY_HELP,
    )
    login.add_argument(
        "-u",
        "--username",
        default=credentials.DEFAULT_USER,
        help=f"User name (default {credentials.DEFAULT_USER}).",
    )
    password = login.add_mutually_exclusive_group()
    password.add_argument("-p", "--password", help="Password; prefer --password-stdin.")
    password.add_argument(
        "-s",
        "--password-stdin",
        action="store_true",
        help="Read the password from stdin.",
    )
    login.set_defaults(handler=run_login)

    logout = commands.add_parser(
        "logout",
        help="Remove the stored credentials of a gateway.",
        description="Remove the credentials that 'faashub login' stored for a gateway.",
    )
    logout.add_argument(
        "-g",
        "--gateway",
        help=GATEWAY_HELP,
    )
    logout.set_defaults(handler=run_logout)


def run_login(args: argparse.Namespace) -> int:
    """Check the credentials against the gateway, then store them."""
    gateway = resolve_gateway(args.gateway)
    _check_username(args.username)
    password = _read_password(args)
    given = credentials.Credentials(args.username, password)
    try:
        with httpx.Client(base_url=gateway, timeout=REQUEST_TIMEOUT_S) as client:
            response = client.get(
                "/system/functions", auth=httpx.BasicAuth(given.user, given.password)
            )
    except httpx.TransportError as exc:
        raise GatewayError(
            transport_error_message(gateway, exc, REQUEST_TIMEOUT_S)
        ) from exc
    if response.status_code in (401, 403):
        raise GatewayError(
            f"The gateway at {gateway} rejected the credentials of user "
            f"{given.user!r} (HTTP {response.status_code}); nothing was stored."
        )
    if response.status_code == 429:
        raise GatewayError(
            f"The gateway at {gateway} locked this address out after failed "
            f"attempts; retry in {response.headers.get('Retry-After', 'a few')} s."
        )
    if not response.is_success:
        raise GatewayError(
            f"Checking the credentials failed with HTTP {response.status_code} "
            f"from {gateway}; nothing was stored."
        )
    store = credentials.default_login_store(os.environ)
    credentials.save_login(store, gateway, given)
    print(f"Credentials for {gateway} stored in {store}.")
    return 0


def run_logout(args: argparse.Namespace) -> int:
    """Remove the stored credentials of one gateway."""
    gateway = resolve_gateway(args.gateway)
    store = credentials.default_login_store(os.environ)
    if credentials.remove_login(store, gateway):
        print(f"Credentials for {gateway} removed from {store}.")
    else:
        print(f"No credentials were stored for {gateway}.")
    return 0


def _check_username(username: str) -> None:
    """Reject a user name that HTTP basic auth cannot carry (RFC 7617)."""
    if not username:
        raise credentials.CredentialsError(
            "The user name is empty: pass the gateway's user name with --username."
        )
    if ":" in username:
        raise credentials.CredentialsError(
            f"Invalid --username {username!r}: HTTP basic auth cannot carry a "
            "':' in a user name, because ':' separates it from the password. "
            "Pass the gateway's user name."
        )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        password = str(args.password)
    else:
        raise credentials.CredentialsError(
            "No password given: pipe it to 'faashub login --password-stdin', or "
            "pass --password."
        )
    if not password:
        raise credentials.CredentialsError(
            "The password is empty; pass the gateway's password."
        )
    return password
