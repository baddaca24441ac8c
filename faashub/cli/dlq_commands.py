"""Commands for async calls and dead letters: `faashub dlq ...`, `status`, `cancel`.

* `faashub dlq list` lists dead letters, oldest first, with filters;
* `faashub dlq show CALL_ID` prints one dead letter in full, as JSON;
* `faashub dlq redrive` queues dead-lettered calls again (or posts a failed
  callback again) for the call ids given, the stream sequences given with
  `--seq`, a filter, or `--all`, and exits 1 when an id or seq selects no
  dead letter;
* `faashub dlq purge` deletes dead letters chosen the same way, and requires
  `--yes` with `--all`;
* `faashub status CALL_ID` prints the status of an async call;
* `faashub cancel CALL_ID` cancels a queued or retrying call.

They talk to the gateway's HTTP API (`/system/dead-letters`, `/async-calls/`)
with httpx, like the other user commands. Times given to `--since` and
`--until` are RFC 3339, or a duration before now such as `30m`, `2h` or `7d`.
"""

import argparse
import datetime
import json
import re
import sys
import urllib.parse
from typing import Any

import httpx

from faashub import errors
from faashub.cli.gateway_client import (
    GATEWAY_HELP,
    GatewayError,
    check_response,
    error_text,
    gateway_client,
    print_table,
    resolve_gateway,
)

DEAD_LETTERS_PATH = "/system/dead-letters"
ASYNC_CALLS_PATH = "/async-calls"

_FILTERS = ("function", "namespace", "queue", "reason", "kind", "since", "until")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
# The error of a failed item whose call id or seq selects no dead letter.
NOT_FOUND = "not found"
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Add `dlq`, `status` and `cancel` to the `faashub` parser."""
    dlq = commands.add_parser(
        "dlq",
        help="Inspect, redrive and purge dead-lettered async calls.",
        description="Dead letters are async calls that did not succeed after their "
        "retries, and results that could not be delivered to their callback.",
    )
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="List dead letters, oldest first.")
    _add_gateway_argument(listing)
    _add_filter_arguments(listing)
    listing.add_argument(
        "--limit",
        type=_whole_number,
        default=100,
        help="Most dead letters to show, 1 to 1000 (default 100).",
    )
    listing.add_argument(
        "--after-seq",
        type=_whole_number,
        help="Continue after this sequence number, as a truncated list suggests.",
    )
    listing.add_argument(
        "--json", action="store_true", help="Print the gateway's JSON response."
    )
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="Show one dead letter in full, as JSON.")
    _add_gateway_argument(show)
    show.add_argument(
        "call_id", metavar="CALL_ID", type=_call_id, help="The call's X-Call-Id."
    )
    show.add_argument(
        "--kind",
        choices=("call", "callback"),
        help="Which dead letter of the call, when it has both (default: the newest).",
    )
    show.set_defaults(handler=run_show)

    for name, help_text, handler in (
        (
            "redrive",
            "Queue dead-lettered calls again, or post failed callbacks again.",
            run_redrive,
        ),
        ("purge", "Delete dead letters for good.", run_purge),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        _add_gateway_argument(action)
        action.add_argument(
            "call_ids", nargs="*", metavar="CALL_ID", help="Call ids to select."
        )
        action.add_argument(
            "--seq",
            dest="seqs",
            action="append",
            default=[],
            type=_whole_number,
            metavar="N",
            help="Select the single dead letter at this stream sequence, the Seq "
            "column of 'dlq list'; repeatable.",
        )
        _add_filter_arguments(action)
        action.add_argument(
            "--all", action="store_true", help="Select every dead letter."
        )
        action.add_argument(
            "--json", action="store_true", help="Print the gateway's JSON response."
        )
        if name == "purge":
            action.add_argument(
                "--yes", action="store_true", help="Confirm a purge with --all."
            )
        action.set_defaults(handler=handler)

    status = commands.add_parser("status", help="Show the status of an async call.")
    _add_gateway_argument(status)
    status.add_argument(
        "call_id", metavar="CALL_ID", type=_call_id, help="The call's X-Call-Id."
    )
    status.add_argument(
        "--json", action="store_true", help="Print the gateway's JSON response."
    )
    status.set_defaults(handler=run_status)

    cancel = commands.add_parser(
        "cancel", help="Cancel an async call that is queued or waiting for a retry."
    )
    _add_gateway_argument(cancel)
    cancel.add_argument(
        "call_id", metavar="CALL_ID", type=_call_id, help="The call's X-Call-Id."
    )
    cancel.set_defaults(handler=run_cancel)


def _add_gateway_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-g",
        "--gateway",
        help=GATEWAY_HELP,
    )


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument("--function", help="Function name, or NAME.NAMESPACE.")
    group.add_argument("--namespace", help="Function namespace.")
    group.add_argument("--queue", help="Named queue.")
    group.add_argument(
        "--reason", help="Why it was dead-lettered, e.g. attempts-exhausted."
    )
    group.add_argument(
        "--kind",
        choices=("call", "callback"),
        help="'call': the function did not succeed; 'callback': its result "
        "could not be delivered.",
    )
    group.add_argument(
        "--since", help="Dead-lettered at or after: RFC 3339, or a duration ago (2h)."
    )
    group.add_argument(
        "--until", help="Dead-lettered at or before: RFC 3339, or a duration ago."
    )


def run_list(args: argparse.Namespace) -> int:
    params = _filter_params(args)
    params["limit"] = str(args.limit)
    if args.after_seq is not None:
        params["after_seq"] = str(args.after_seq)
    response = _request(args.gateway, "GET", DEAD_LETTERS_PATH, params=params)
    check_response(response, "Listing dead letters")
    listing = response.json()
    if args.json:
        _print_json(listing)
        return 0
    rows = [
        [
            str(item["seq"]),
            item["call_id"],
            item["kind"],
            item["reason"],
            f"{item['function']}.{item['namespace']}",
            item["dead_lettered_at"] or "",
            str(item["attempts"]),
            "" if item["last_status"] is None else str(item["last_status"]),
        ]
        for item in listing["dead_letters"]
    ]
    print_table(
        [
            "Seq",
            "Call id",
            "Kind",
            "Reason",
            "Function",
            "Dead-lettered",
            "Attempts",
            "Last",
        ],
        rows,
    )
    if listing.get("truncated"):
        print(
            f"More dead letters match; show them with --after-seq "
            f"{listing['next_after_seq']}.",
            file=sys.stderr,
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    params = {"kind": args.kind} if args.kind else {}
    response = _request(
        args.gateway,
        "GET",
        f"{DEAD_LETTERS_PATH}/{_quote(args.call_id)}",
        params=params,
    )
    if response.status_code == 404 and error_text(response).startswith(
        "No dead letter"
    ):
        # The gateway's message names its HTTP route, so this one names the command.
        kind_text = f" of kind {args.kind!r}" if args.kind else ""
        raise GatewayError(
            f"No dead letter{kind_text} for call id {args.call_id!r} at "
            f"{resolve_gateway(args.gateway)}. 'faashub dlq list' lists the dead "
            "letters there are."
        )
    check_response(response, f"Showing the dead letter of {args.call_id}")
    _print_json(response.json())
    return 0


def run_redrive(args: argparse.Namespace) -> int:
    selection = _selection(args)
    response = _request(
        args.gateway, "POST", f"{DEAD_LETTERS_PATH}/redrive", json=selection
    )
    check_response(response, "Redriving dead letters")
    report = response.json()
    if args.json:
        _print_json(report)
    else:
        for item in report["redriven"]:
            if item["kind"] == "call":
                print(f"{item['call_id']} -> {item['new_call_id']}")
            else:
                print(f"{item['call_id']}: callback delivered")
    return _summarize(report, done="redriven", verb="Redrove")


def run_purge(args: argparse.Namespace) -> int:
    selection = _selection(args)
    if selection.get("all") and not args.yes:
        raise errors.SettingsError(
            "Purging every dead letter cannot be undone; add --yes to confirm."
        )
    response = _request(args.gateway, "DELETE", DEAD_LETTERS_PATH, json=selection)
    check_response(response, "Purging dead letters")
    report = response.json()
    if args.json:
        _print_json(report)
    return _summarize(report, done="purged", verb="Purged")


def _call_id(value: str) -> str:
    """Return a CALL_ID argument, or raise ArgumentTypeError for an empty one."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            f"invalid call id {value!r}: give the X-Call-Id header of the call's "
            "202 response"
        )
    return value


def run_status(args: argparse.Namespace) -> int:
    response = _request(
        args.gateway, "GET", f"{ASYNC_CALLS_PATH}/{_quote(args.call_id)}"
    )
    check_response(response, f"Reading the status of {args.call_id}")
    status = response.json()
    if args.json:
        _print_json(status)
        return 0
    fields = [
        ("Call id", status.get("call_id")),
        ("State", status.get("state")),
        ("Function", f"{status.get('function')}.{status.get('namespace')}"),
        ("Queue", status.get("queue")),
        ("Attempts", _attempts_text(status)),
        ("Last status", status.get("last_status")),
        ("Last error", status.get("last_error")),
        ("Next attempt at", status.get("next_attempt_at")),
        ("Accepted at", status.get("accepted_at")),
        ("Started at", status.get("started_at")),
        ("Finished at", status.get("finished_at")),
        ("Dead-letter reason", status.get("dead_letter_reason")),
        ("Callback status", status.get("callback_status")),
        ("Original call id", status.get("original_call_id")),
    ]
    shown = [(label, str(value)) for label, value in fields if value not in (None, "")]
    width = max(len(label) for label, _ in shown)
    for label, value in shown:
        print(f"{label + ':':<{width + 2}}{value}")
    return 0


def _attempts_text(status: dict[str, Any]) -> str:
    """Return the attempts that count against the retry budget, then the others.

    A 429, or a gateway that does not pass the call on, uses no attempt of
    the budget, so `attempts` alone can exceed `max_attempts`. A gateway from
    before the `throttled_attempts` field omits it, and every attempt then
    shows as counted.
    """
    throttled = status.get("throttled_attempts") or 0
    text = str(status.get("attempts", 0) - throttled)
    if status.get("max_attempts"):
        text += f" of {status['max_attempts']}"
    if throttled:
        text += f" (plus {throttled} throttled, not counted)"
    return text


def run_cancel(args: argparse.Namespace) -> int:
    response = _request(
        args.gateway, "DELETE", f"{ASYNC_CALLS_PATH}/{_quote(args.call_id)}"
    )
    check_response(response, f"Cancelling {args.call_id}")
    print(f"Cancelled {args.call_id}.")
    return 0


def _filter_params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    for name in _FILTERS:
        value = getattr(args, name)
        if value is None:
            continue
        if name in ("since", "until"):
            value = _moment(value, flag=f"--{name}")
        params[name] = value
    return params


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    filters = _filter_params(args)
    selectors = [bool(args.call_ids), bool(args.seqs), bool(filters), args.all]
    if sum(selectors) > 1:
        raise errors.SettingsError(
            "Give call ids, --seq, filters (--function, --reason, ...) or --all, "
            "not several."
        )
    if args.call_ids:
        return {"call_ids": args.call_ids}
    if args.seqs:
        return {"seqs": args.seqs}
    if filters:
        return {"filter": filters}
    if args.all:
        return {"all": True}
    raise errors.SettingsError(
        "Select dead letters with call ids, --seq, filters (--function, --reason, "
        "--kind, --since, ...) or --all."
    )


def _moment(value: str, *, flag: str) -> str:
    """Return `value` as RFC 3339: a time as given, or now minus a duration."""
    match = _DURATION.match(value)
    if match:
        seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]
        moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
            seconds=seconds
        )
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise errors.SettingsError(
            f"Invalid {flag} {value!r}: give RFC 3339 with a zone "
            "(2030-01-02T03:04:05Z) or a duration before now (30m, 2h, 7d)."
        )
    return value


def _summarize(report: dict[str, Any], *, done: str, verb: str) -> int:
    for failure in report["failed"]:
        print(f"faashub: {_failure_text(failure)}", file=sys.stderr)
    count = len(report[done])
    noun = "dead letter" if count == 1 else "dead letters"
    failed = f"; {len(report['failed'])} failed" if report["failed"] else ""
    print(f"{verb} {count} {noun}{failed}.", file=sys.stderr)
    return 1 if report["failed"] else 0


def _failure_text(failure: dict[str, Any]) -> str:
    """Return one line for a failed item, which may lack a call id, kind or seq."""
    call_id, kind, seq = failure.get("call_id"), failure.get("kind"), failure.get("seq")
    if failure.get("error") == NOT_FOUND:
        selected = f"call id {call_id!r}" if call_id is not None else f"seq {seq}"
        return f"No dead letter has {selected}; 'faashub dlq list' lists them."
    details = [text for text in (kind, None if seq is None else f"seq {seq}") if text]
    name = call_id if call_id is not None else "dead letter"
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{name}{suffix}: {failure.get('error')}"


def _whole_number(text: str) -> int:
    """Parse a command-line number of ASCII digits, as the gateway accepts it."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a whole number in digits 0-9"
        )
    return int(text)


def _request(
    gateway_flag: str | None, method: str, path: str, **options: Any
) -> httpx.Response:
    with gateway_client(resolve_gateway(gateway_flag)) as client:
        return client.request(method, path, **options)


def _quote(call_id: str) -> str:
    return urllib.parse.quote(call_id, safe="")


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))
