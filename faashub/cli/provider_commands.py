"""Commands for secrets, function logs and scaling: `secret`, `logs`, `scale`.

* `faashub secret create|update NAME` stores a secret from `--from-literal`,
  `--from-file` or stdin. `secret list` prints the names, and `secret remove`
  deletes one.
* `faashub logs NAME` prints a function's stored log lines, and with
  `--follow` keeps printing new ones until Ctrl-C.
* `faashub scale NAME --replicas N` sets how many processes run the function.

They talk to the gateway's OpenFaaS API (`/system/secrets`, `/system/logs`,
`/system/scale-function/NAME`) with httpx, like the other user commands, so
they work against any OpenFaaS-compatible gateway. `--since` takes an RFC
3339 time, or a duration before now such as `30s`, `10m` or `2h`.
"""

import argparse
import base64
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from faashub import errors
from faashub.cli.gateway_client import (
    GATEWAY_HELP,
    REQUEST_TIMEOUT_S,
    check_response,
    gateway_client,
    namespace_params,
    resolve_gateway,
)

SECRETS_PATH = "/system/secrets"
LOGS_PATH = "/system/logs"
SCALE_PATH = "/system/scale-function"

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Add `secret`, `logs` and `scale` to the `faashub` parser."""
    secret = commands.add_parser(
        "secret",
        help="Create, update, list and remove secrets that functions read.",
        description="A function that names a secret in its deployment reads it "
        "from the file $OPENFAAS_SECRETS_DIR/NAME on the local provider.",
    )
    actions = secret.add_subparsers(
        dest="secret_action", metavar="ACTION", required=True
    )
    for action, help_text, handler in (
        ("create", "Create a secret.", run_secret_create),
        ("update", "Replace a secret's value.", run_secret_update),
    ):
        command = actions.add_parser(action, help=help_text, description=help_text)
        _add_gateway_arguments(command)
        command.add_argument("name", help="Secret name (a DNS-1123 label).")
        source = command.add_mutually_exclusive_group()
        source.add_argument("--from-literal", help="The value, as text.")
        source.add_argument(
            "--from-file", type=Path, help="File whose bytes are the value."
        )
        command.set_defaults(handler=handler)

    listing = actions.add_parser("list", help="List secret names, never values.")
    _add_gateway_arguments(listing)
    listing.set_defaults(handler=run_secret_list)

    remove = actions.add_parser(
        "remove", aliases=["rm"], help="Remove a secret that no function uses."
    )
    _add_gateway_arguments(remove)
    remove.add_argument("name", help="Secret name.")
    remove.set_defaults(handler=run_secret_remove)

    logs = commands.add_parser(
        "logs",
        help="Print a function's log lines.",
        description="Print the lines a function wrote: stderr of each request in "
        "classic mode, stdout and stderr of the server in http mode.",
    )
    _add_gateway_arguments(logs)
    logs.add_argument("name", help="Function name.")
    logs.add_argument(
        "--since",
        help="Only lines from this time on: RFC 3339, or a duration before now "
        "such as 30s, 10m or 2h.",
    )
    logs.add_argument(
        "--tail", type=int, default=0, help="Only the last N stored lines (0: all)."
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="Keep printing new lines until Ctrl-C or the function is removed.",
    )
    logs.add_argument("--instance", help="Only lines of this instance.")
    logs.add_argument(
        "--json", action="store_true", help="Print each line as the JSON it came in."
    )
    logs.set_defaults(handler=run_logs)

    scale = commands.add_parser(
        "scale",
        help="Set how many replicas a function runs.",
        description="Set a function's replicas. 0 stops its processes, and the "
        "next call starts one again.",
    )
    _add_gateway_arguments(scale)
    scale.add_argument("name", help="Function name.")
    scale.add_argument(
        "-r", "--replicas", type=int, required=True, help="Replicas, 0 or more."
    )
    scale.set_defaults(handler=run_scale)


def _add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-g", "--gateway", help=GATEWAY_HELP)
    parser.add_argument(
        "-n",
        "--namespace",
        default="",
        help="Namespace (default: the gateway's).",
    )


def run_secret_create(args: argparse.Namespace, stdin: BinaryIO | None = None) -> int:
    body = secret_body(args, stdin)
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.post(SECRETS_PATH, json=body)
    check_response(response, f"Creating secret {args.name}")
    print(f"Created secret {args.name}.")
    return 0


def run_secret_update(args: argparse.Namespace, stdin: BinaryIO | None = None) -> int:
    body = secret_body(args, stdin)
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.put(SECRETS_PATH, json=body)
    check_response(response, f"Updating secret {args.name}")
    print(f"Updated secret {args.name}.")
    return 0


def secret_body(args: argparse.Namespace, stdin: BinaryIO | None) -> dict[str, Any]:
    """Build the Secret body: text as `value`, bytes as base64 `rawValue`.

    A value read from stdin loses its trailing line break, and a file is sent
    byte for byte. faas-cli, by contrast, trims spaces at both ends of every value.
    """
    body: dict[str, Any] = {"name": args.name}
    if args.namespace:
        body["namespace"] = args.namespace
    if args.from_literal is not None:
        data = args.from_literal.encode()
        body["value"] = args.from_literal
    else:
        data = _read_secret_bytes(args.from_file, stdin)
        body["rawValue"] = base64.b64encode(data).decode()
    if not data:
        raise errors.SettingsError(
            f"The value of secret {args.name!r} is empty: give --from-literal, "
            "--from-file, or the value on stdin."
        )
    return body


def _read_secret_bytes(path: Path | None, stdin: BinaryIO | None) -> bytes:
    if path is not None:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise errors.SettingsError(
                f"Cannot read the secret file {path}: {exc.strerror}."
            ) from exc
    source = stdin or sys.stdin.buffer
    if source.isatty():
        print(
            "Reading the secret value from stdin. End it with Ctrl-D.", file=sys.stderr
        )
    return source.read().rstrip(b"\r\n")


def run_secret_list(args: argparse.Namespace) -> int:
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.get(SECRETS_PATH, params=namespace_params(args.namespace))
    check_response(response, "Listing secrets")
    print("Secret")
    for secret in sorted(response.json(), key=lambda item: str(item.get("name"))):
        print(secret.get("name", ""))
    return 0


def run_secret_remove(args: argparse.Namespace) -> int:
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.request(
            "DELETE",
            SECRETS_PATH,
            params=namespace_params(args.namespace),
            json={"name": args.name},
        )
    check_response(response, f"Removing secret {args.name}")
    print(f"Removed secret {args.name}.")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    params: dict[str, str] = {"name": args.name}
    params.update(namespace_params(args.namespace))
    if args.instance:
        params["instance"] = args.instance
    if args.since:
        params["since"] = parse_since(args.since)
    if args.tail:
        params["tail"] = str(args.tail)
    if args.follow:
        params["follow"] = "true"
    # A followed stream may wait long between lines, so reads never time out.
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=None)
    with gateway_client(resolve_gateway(args.gateway)) as client:
        with client.stream(
            "GET", LOGS_PATH, params=params, timeout=timeout
        ) as response:
            if not response.is_success:
                response.read()
                check_response(response, f"Reading the logs of {args.name}")
            for line in response.iter_lines():
                if line:
                    print(line if args.json else format_log_line(line), flush=True)
    return 0


def format_log_line(line: str) -> str:
    """Render one ndjson log message as `TIMESTAMP NAME (INSTANCE) TEXT`."""
    try:
        message = json.loads(line)
        return (
            f"{message['timestamp']} {message['name']} ({message['instance']}) "
            f"{message['text']}"
        )
    except (ValueError, KeyError, TypeError):
        return line


def parse_since(value: str) -> str:
    """Return `value` as an RFC 3339 time. A duration counts back from now."""
    match = _DURATION.match(value.strip())
    if match:
        seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
        moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
            seconds=seconds
        )
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise errors.SettingsError(
            f"Invalid --since {value!r}: give an RFC 3339 time with its offset, "
            "such as 2024-05-01T12:00:00Z, or a duration such as 30s, 10m or 2h."
        )
    return parsed.isoformat().replace("+00:00", "Z")


def run_scale(args: argparse.Namespace) -> int:
    if args.replicas < 0:
        raise errors.SettingsError(
            f"Invalid --replicas {args.replicas}: use 0 or more."
        )
    body: dict[str, Any] = {"serviceName": args.name, "replicas": args.replicas}
    if args.namespace:
        body["namespace"] = args.namespace
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.post(
            f"{SCALE_PATH}/{args.name}",
            params=namespace_params(args.namespace),
            json=body,
        )
    check_response(response, f"Scaling {args.name}")
    noun = "replica" if args.replicas == 1 else "replicas"
    print(f"Scaled {args.name} to {args.replicas} {noun}.")
    return 0
