"""User commands that talk to a running gateway, such as deploy and invoke.

The commands are deploy, invoke, list, describe, namespaces and remove. They
use the gateway's OpenFaaS REST API only, so they work against any
OpenFaaS-compatible gateway, and `faas-cli` works against faashub in turn.
`gateway_client.resolve_gateway` picks the gateway: `--gateway`, then
`OPENFAAS_URL`, then a stack file's `provider.gateway`, then the hub in
FAASHUB_STATE_DIR, then http://127.0.0.1:8080.
"""

import argparse
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import httpx

from faashub import constants, errors
from faashub.cli import deploy_checks, stack
from faashub.cli.gateway_client import (
    GATEWAY_HELP,
    GatewayError,
    check_response,
    gateway_client,
    namespace_params,
    print_table,
    resolve_gateway,
    unauthorized_reason,
)

# The hub's default --upstream-timeout-s is 300 s. Waiting a little longer
# lets the gateway's own 504 reach the user instead of a client timeout.
INVOKE_TIMEOUT_S = 310.0
# `invoke` streams bodies in chunks of this size. A request body from a pipe
# of up to INVOKE_BUFFERED_BODY_BYTES is sent whole, with a Content-Length.
INVOKE_CHUNK_BYTES = 64 * 1024
INVOKE_BUFFERED_BODY_BYTES = 1024 * 1024

# The characters HTTP allows in a method and in a header name (a "token").
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def add_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Add the user commands to the `faashub` parser."""
    deploy = commands.add_parser(
        "deploy",
        help="Deploy or update functions from flags or a stack file.",
        description="Deploy or update functions. Give either --yaml (an OpenFaaS "
        "stack file) or --name with --fprocess. An existing function is updated.",
    )
    _add_gateway_arguments(deploy)
    deploy.add_argument(
        "-f",
        "--yaml",
        type=Path,
        help="OpenFaaS stack file with a 'functions:' mapping.",
    )
    deploy.add_argument("--filter", help="With --yaml, deploy only this function.")
    deploy.add_argument("--name", help="Function name (a DNS-1123 label).")
    deploy.add_argument(
        "--fprocess",
        help="Command to run: per request with the body on stdin, or once with "
        "--env mode=http as a long-running HTTP server listening on $PORT.",
    )
    deploy.add_argument("--image", default="", help="Container image, stored as given.")
    deploy.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Environment variable for the function; repeatable.",
    )
    deploy.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Label; repeatable.",
    )
    deploy.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Annotation, for example topic=orders; repeatable.",
    )
    deploy.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME",
        help="Secret the function reads; repeatable.",
    )
    deploy.set_defaults(handler=run_deploy)

    invoke = commands.add_parser(
        "invoke",
        help="Invoke a function with the body read from stdin.",
        description="Invoke a function. The request body is read from stdin; the "
        "response body is written to stdout.",
    )
    _add_gateway_arguments(invoke)
    invoke.add_argument("name", help="Function name, or NAME.NAMESPACE.")
    invoke.add_argument(
        "-a",
        "--async",
        dest="is_async",
        action="store_true",
        help="Queue the call and print its call id instead of waiting.",
    )
    invoke.add_argument(
        "--callback-url", help="With --async, URL that receives the result."
    )
    invoke.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Request header; repeatable. 'KEY: VALUE' is accepted too, and "
        "the value may contain '=' or ':'.",
    )
    invoke.add_argument(
        "-m", "--method", default="POST", help="HTTP method (default POST)."
    )
    invoke.add_argument(
        "--timeout",
        type=float,
        default=INVOKE_TIMEOUT_S,
        metavar="SECONDS",
        help="Seconds to wait for the function's response (default "
        f"{INVOKE_TIMEOUT_S:g}, a little over the hub's default "
        "--upstream-timeout-s).",
    )
    invoke.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Query parameter; repeatable.",
    )
    invoke.add_argument("--path", default="", help="Path after the function name.")
    invoke.set_defaults(handler=run_invoke)

    listing = commands.add_parser("list", help="List deployed functions.")
    _add_gateway_arguments(listing)
    listing.add_argument(
        "-v", "--verbose", action="store_true", help="Also show each function's image."
    )
    listing.set_defaults(handler=run_list)

    describe = commands.add_parser("describe", help="Show one function's details.")
    _add_gateway_arguments(describe)
    describe.add_argument("name", help="Function name.")
    describe.set_defaults(handler=run_describe)

    namespaces = commands.add_parser(
        "namespaces",
        help="List the namespaces that functions can be deployed to.",
        description="List the namespaces that the gateway's provider returns "
        "from GET /system/namespaces.",
    )
    namespaces.add_argument("-g", "--gateway", help=GATEWAY_HELP)
    namespaces.set_defaults(handler=run_namespaces)

    remove = commands.add_parser("remove", aliases=["rm"], help="Remove a function.")
    _add_gateway_arguments(remove)
    remove.add_argument("name", help="Function name.")
    remove.set_defaults(handler=run_remove)


def _add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-g",
        "--gateway",
        help=GATEWAY_HELP,
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default="",
        help="Function namespace (default: the gateway's).",
    )


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise errors.SettingsError(
                f"Invalid {what} {item!r}: write it as KEY=VALUE."
            )
        pairs[key] = value
    return pairs


def run_deploy(args: argparse.Namespace) -> int:
    if args.yaml and args.name:
        raise errors.SettingsError("Give either --yaml or --name, not both.")
    if args.yaml:
        parsed = stack.load_stack(args.yaml)
        deployments = parsed.deployments
        problems = {name: [text] for name, text in parsed.problems.items()}
        if args.filter:
            if args.filter not in deployments and args.filter not in problems:
                listed = sorted([*deployments, *problems])
                raise errors.SettingsError(
                    f"Function {args.filter!r} is not in {args.yaml}; it has: "
                    f"{', '.join(listed) or 'no functions'}."
                )
            deployments = {
                name: deployment
                for name, deployment in deployments.items()
                if name == args.filter
            }
            problems = {
                name: found for name, found in problems.items() if name == args.filter
            }
        gateway = resolve_gateway(args.gateway, parsed.gateway)
        _apply_flags(deployments, args)
    else:
        if not args.name or not args.fprocess:
            raise errors.SettingsError(
                "Give --name and --fprocess (the command to run), or --yaml with a "
                "stack file."
            )
        deployments = {
            args.name: {
                "service": args.name,
                "image": args.image,
                "envProcess": args.fprocess,
                "envVars": _pairs(args.env, "--env"),
                "labels": _pairs(args.label, "--label"),
                "annotations": _pairs(args.annotation, "--annotation"),
                "secrets": list(args.secret),
            }
        }
        problems = {}
        gateway = resolve_gateway(args.gateway)

    # Check every function before the first deploy, so that an invalid one
    # leaves nothing half-deployed, and list every problem in one run.
    for name, deployment in deployments.items():
        if args.namespace:
            deployment["namespace"] = args.namespace
        found = deploy_checks.deployment_problems(deployment)
        if found:
            problems[name] = found
    valid = {
        name: deployment
        for name, deployment in deployments.items()
        if name not in problems
    }
    for deployment in valid.values():
        for warning in deploy_checks.deployment_warnings(deployment):
            print(f"faashub: warning: {warning}", file=sys.stderr)

    # A function that the gateway or the provider rejects does not stop the
    # others, and the exit status is 1 if any failed, as faas-cli does.
    failed: list[str] = []
    try:
        with gateway_client(gateway) as client:
            for name, missing in _missing_secrets(client, valid).items():
                problems.setdefault(name, []).extend(missing)
            if problems:
                raise errors.SettingsError(
                    _invalid_functions_message(problems, deployments)
                )
            for name, deployment in deployments.items():
                try:
                    _deploy_one(client, name, deployment)
                except GatewayError as exc:
                    print(f"faashub: {exc}", file=sys.stderr)
                    failed.append(name)
    except GatewayError:
        # The secrets could not be checked, but the file's own problems are
        # what to fix first.
        if problems:
            raise errors.SettingsError(
                _invalid_functions_message(problems, deployments)
            ) from None
        raise
    if failed:
        noun = "function" if len(deployments) == 1 else "functions"
        print(
            f"faashub: {len(failed)} of {len(deployments)} {noun} failed to "
            f"deploy: {', '.join(failed)}.",
            file=sys.stderr,
        )
        return 1
    return 0


def _apply_flags(
    deployments: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    """Lay the --env, --label, --annotation and --secret flags over a stack file.

    As in `faas-cli deploy -f`, a flag's value wins over the file's, for every
    function that the command deploys.
    """
    env = _pairs(args.env, "--env")
    labels = _pairs(args.label, "--label")
    annotations = _pairs(args.annotation, "--annotation")
    for deployment in deployments.values():
        deployment["envVars"] = {**deployment.get("envVars", {}), **env}
        deployment["labels"] = {**deployment.get("labels", {}), **labels}
        deployment["annotations"] = {
            **deployment.get("annotations", {}),
            **annotations,
        }
        secrets = list(deployment.get("secrets", []))
        deployment["secrets"] = secrets + [
            secret for secret in args.secret if secret not in secrets
        ]


def _invalid_functions_message(
    problems: dict[str, list[str]], deployments: dict[str, dict[str, Any]]
) -> str:
    total = len(set(problems) | set(deployments))
    verb = "is" if len(problems) == 1 else "are"
    noun = "function" if total == 1 else "functions"
    lines = [
        f"Deployed nothing, because {len(problems)} of {total} {noun} {verb} "
        "invalid. Fix these and deploy again:"
    ]
    for name in sorted(problems):
        lines.extend(f"  {name}: {text}" for text in problems[name])
    return "\n".join(lines)


def _missing_secrets(
    client: httpx.Client, deployments: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """Name the secrets that the functions use and the gateway does not have.

    One request per namespace. A namespace whose list cannot be read is not
    checked here: the deploy itself then reports what is wrong.
    """
    problems: dict[str, list[str]] = {}
    existing: dict[str, set[str] | None] = {}
    for name, deployment in deployments.items():
        requested = deployment.get("secrets") or []
        if not requested:
            continue
        namespace = str(deployment.get("namespace") or "")
        if namespace not in existing:
            params = {"namespace": namespace} if namespace else {}
            existing[namespace] = _secret_names(client, params)
        names = existing[namespace]
        if names is None:
            continue
        for secret in requested:
            if secret not in names:
                problems.setdefault(name, []).append(
                    f"Secret {secret!r} does not exist"
                    + (f" in namespace {namespace!r}" if namespace else "")
                    + f"; create it with 'faashub secret create {secret}'."
                )
    return problems


def _secret_names(client: httpx.Client, params: dict[str, str]) -> set[str] | None:
    """Return the names of a namespace's secrets, or None if they cannot be read."""
    try:
        response = client.get("/system/secrets", params=params)
        listed = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(listed, list):
        return None
    return {str(item.get("name")) for item in listed if isinstance(item, dict)}


def _deploy_one(client: httpx.Client, name: str, deployment: dict[str, Any]) -> None:
    # Update first and create on 404, as faas-cli does, so deploy is idempotent.
    response = client.put("/system/functions", json=deployment)
    action = "Updated"
    if response.status_code == 404:
        response = client.post("/system/functions", json=deployment)
        action = "Deployed"
    check_response(response, f"Deploying {name}")
    namespace = deployment.get("namespace")
    suffix = f".{namespace}" if namespace else ""
    print(f"{action} {name}. URL: {client.base_url}/function/{name}{suffix}")


def run_invoke(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    source = stdin or sys.stdin
    if source.isatty():
        print(
            "Reading the request body from stdin; end it with Ctrl-D.", file=sys.stderr
        )
    method = args.method.upper()
    if not _TOKEN.fullmatch(method):
        raise errors.SettingsError(
            f"Invalid --method {args.method!r}: use an HTTP method such as GET, "
            "POST or PUT, without spaces."
        )
    if not args.timeout > 0:
        raise errors.SettingsError(
            f"Invalid --timeout {args.timeout:g}: use a number of seconds above 0."
        )
    headers = dict(_parse_header(item) for item in args.header)
    if args.callback_url:
        if not args.is_async:
            raise errors.SettingsError("--callback-url needs --async.")
        headers[constants.CALLBACK_URL] = args.callback_url
    name = f"{args.name}.{args.namespace}" if args.namespace else args.name
    route = "async-function" if args.is_async else "function"
    path = args.path if not args.path or args.path.startswith("/") else "/" + args.path
    body, length = _request_body(source)
    if length is not None:
        headers["Content-Length"] = str(length)
    gateway = resolve_gateway(args.gateway)
    with gateway_client(gateway, timeout_s=args.timeout) as client:
        try:
            with client.stream(
                method,
                f"/{route}/{name}{path}",
                content=body,
                headers=headers,
                params=_pairs(args.query, "--query"),
            ) as response:
                if args.is_async:
                    response.read()
                    check_response(response, f"Queueing a call to {name}")
                    print(response.headers.get(constants.CALL_ID, ""))
                    print(f"Queued a call to {name}.", file=sys.stderr)
                    return 0
                ends_with_newline = _copy_to_stdout(response)
        except httpx.ReadTimeout as exc:
            raise GatewayError(
                f"The call to {name} timed out after {args.timeout:g} s without a "
                "response. The function may still be running, so check "
                f"'faashub logs {args.name}' before calling it again, and pass "
                "--timeout SECONDS to wait longer."
            ) from exc
    if not response.is_success:
        # The body stays byte for byte on stdout; the line break that keeps
        # the message off the body's last line goes to stderr.
        separator = "" if ends_with_newline else "\n"
        message = f"faashub: {name} returned HTTP {response.status_code}."
        if response.status_code == 401:
            # The function may have sent the 401 itself, so the gateway's
            # reason is only a condition.
            message += (
                " If the gateway checks credentials on calls (auth_invoke), "
                f"{unauthorized_reason(response)}"
            )
        print(separator + message, file=sys.stderr)
        return 1
    return 0


def _request_body(source: TextIO) -> tuple[bytes | Iterator[bytes], int | None]:
    """Return the request body from `source` and its length, None when unknown.

    A regular file streams with its size as the Content-Length. Other input
    (a pipe, a terminal) is read up to INVOKE_BUFFERED_BODY_BYTES. A body that
    ends within that is sent whole with its length, which servers that read
    only Content-Length expect. A longer one streams chunked, so memory stays
    bounded whatever the size.
    """
    stream: BinaryIO | None = getattr(source, "buffer", None)
    if stream is None:
        return source.read().encode(), None
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        status = None
    if status is not None and stat.S_ISREG(status.st_mode):
        return _read_chunks(stream, []), max(0, status.st_size - stream.tell())
    # read1 returns what one read of the pipe gives, instead of waiting for
    # a whole chunk.
    read_some = getattr(stream, "read1", stream.read)
    start: list[bytes] = []
    size = 0
    while size <= INVOKE_BUFFERED_BODY_BYTES:
        chunk = read_some(INVOKE_CHUNK_BYTES)
        if not chunk:
            body = b"".join(start)
            return body, len(body)
        start.append(chunk)
        size += len(chunk)
    return _read_chunks(stream, start), None


def _read_chunks(stream: BinaryIO, start: list[bytes]) -> Iterator[bytes]:
    """Yield the chunks already read, then the rest of `stream` chunk by chunk."""
    yield from start
    start.clear()
    while chunk := stream.read(INVOKE_CHUNK_BYTES):
        yield chunk


def _copy_to_stdout(response: httpx.Response) -> bool:
    """Write the response body to stdout as it arrives.

    Return whether the body ends with a line break.
    """
    last = b""
    for chunk in response.iter_bytes(INVOKE_CHUNK_BYTES):
        sys.stdout.buffer.write(chunk)
        last = chunk
    sys.stdout.flush()
    return last.endswith(b"\n")


def _parse_header(item: str) -> tuple[str, str]:
    """Split a --header value at the first '=' or ':', whichever comes first.

    A header name cannot contain either character, so the rest belongs to
    the value: `X-Token: abc==` and `X-Token=a:b` both work.
    """
    cut = min((item.find(mark) for mark in "=:" if mark in item), default=-1)
    key, value = item[:cut].strip(), item[cut + 1 :].strip()
    if cut < 0 or not _TOKEN.fullmatch(key):
        raise errors.SettingsError(
            f"Invalid --header {item!r}: write it as KEY=VALUE or 'KEY: VALUE', "
            "with a name of letters, digits and '-'."
        )
    # httpx sends header values as ASCII, and HTTP forbids control characters
    # in them except the tab.
    if not value.isascii() or any(
        (ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value
    ):
        raise errors.SettingsError(
            f"Invalid --header {item!r}: the value may contain only printable "
            "ASCII characters, so encode other text, for example as base64."
        )
    return key, value


def run_list(args: argparse.Namespace) -> int:
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.get(
            "/system/functions", params=namespace_params(args.namespace)
        )
    check_response(response, "Listing functions")
    functions = sorted(response.json(), key=lambda function: function.get("name", ""))
    columns = ["Function", "Invocations", "Replicas"]
    if args.verbose:
        columns.insert(1, "Image")
    rows = []
    for function in functions:
        row = [
            function.get("name", ""),
            str(int(function.get("invocationCount", 0))),
            str(function.get("replicas", 0)),
        ]
        if args.verbose:
            row.insert(1, function.get("image", ""))
        rows.append(row)
    print_table(columns, rows)
    return 0


def run_describe(args: argparse.Namespace) -> int:
    gateway = resolve_gateway(args.gateway)
    with gateway_client(gateway) as client:
        response = client.get(
            f"/system/function/{args.name}", params=namespace_params(args.namespace)
        )
    # With -n, a 404 may mean an unknown namespace, which the gateway's
    # message names, so that message is passed on as it is.
    if response.status_code == 404 and not args.namespace:
        raise GatewayError(
            f"Function {args.name!r} is not deployed; 'faashub list' shows what is."
        )
    check_response(response, f"Describing {args.name}")
    function = response.json()
    replicas = int(function.get("replicas", 0))
    available = int(function.get("availableReplicas", 0))
    namespace = function.get("namespace") or args.namespace
    suffix = f".{namespace}" if namespace else ""
    fields = [
        ("Name", function.get("name", args.name)),
        ("Namespace", namespace or ""),
        ("Status", "Ready" if available > 0 else "Not Ready"),
        ("Replicas", str(replicas)),
        ("Available Replicas", str(available)),
        ("Invocations", str(int(function.get("invocationCount", 0)))),
        ("Image", function.get("image", "")),
        ("Function Process", function.get("envProcess", "")),
        ("URL", f"{gateway}/function/{args.name}{suffix}"),
        ("Async URL", f"{gateway}/async-function/{args.name}{suffix}"),
        ("Created", function.get("createdAt", "")),
        ("Labels", _json_field(function, "labels")),
        ("Annotations", _json_field(function, "annotations")),
        ("Environment", _json_field(function, "envVars")),
        # The API returns secret names only, never their values.
        ("Secrets", ", ".join(function.get("secrets") or [])),
        ("Constraints", ", ".join(function.get("constraints") or [])),
        ("Requests", _json_field(function, "requests")),
        ("Limits", _json_field(function, "limits")),
        (
            "Read-only Root FS",
            "true" if function.get("readOnlyRootFilesystem") else "false",
        ),
    ]
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label + ':':<{width + 2}}{value}")
    return 0


def run_namespaces(args: argparse.Namespace) -> int:
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.get("/system/namespaces")
    check_response(response, "Listing namespaces")
    print_table(["Namespace"], [[name] for name in sorted(response.json())])
    return 0


def _json_field(function: dict[str, Any], key: str) -> str:
    """Render a map field of a FunctionStatus as sorted JSON, {} when absent."""
    return json.dumps(function.get(key) or {}, sort_keys=True)


def run_remove(args: argparse.Namespace) -> int:
    with gateway_client(resolve_gateway(args.gateway)) as client:
        response = client.request(
            "DELETE",
            "/system/functions",
            params=namespace_params(args.namespace),
            json={"functionName": args.name},
        )
    # As in describe: with -n the gateway's 404 message names the fault.
    if response.status_code == 404 and not args.namespace:
        raise GatewayError(
            f"Function {args.name!r} is not deployed; 'faashub list' shows what is."
        )
    check_response(response, f"Removing {args.name}")
    print(f"Removed {args.name}.")
    return 0
