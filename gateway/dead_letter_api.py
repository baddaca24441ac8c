"""The dead-letter API under `/system/dead-letters`, served by the gateway itself.

Routes (JSON in and out; errors are `{"detail": "..."}`):

* `GET /system/dead-letters`: a listing, oldest first, with the filters
  `function` (NAME or NAME.NAMESPACE), `namespace`, `queue`, `reason`, `kind`
  (`call` or `callback`), `since` and `until` (RFC 3339, compared with the
  time the worker dead-lettered the call), `limit` (default 100, at most
  1000) and `after_seq` (continue after the `seq` of the last item seen).
  `truncated` is true when more match after the items returned.
* `GET /system/dead-letters/{call_id}`: the newest dead letter of a call, in
  full (`?kind=` picks one kind). Bodies are base64. The values of
  credential headers are redacted: Authorization, Cookie,
  Proxy-Authorization, Set-Cookie and any name that contains auth, token,
  secret, password, passwd, api-key, apikey, api_key, session, signature,
  credential or cookie. The callback URL, and any header value that is an
  http or https URL (X-Callback-Url among them), lose user info and query.
* `POST /system/dead-letters/redrive` with `{"call_ids": [...]}` (every dead
  letter of each call id), `{"seqs": [...]}` (the dead letters at these
  stream sequences, as the listing's `seq` gives them), `{"filter": {...}}`
  (the listing's filters) or `{"all": true}`: returns
  `{"redriven": [...], "failed": [...]}`, each item with `call_id`, `kind`,
  `seq`, and `new_call_id` for a redriven call or `error` for a failure.
* `DELETE /system/dead-letters` with the same selection, as a JSON body or as
  query parameters (`call_id` or `seq`, repeatable; `all=true`; or the
  filters), and `DELETE /system/dead-letters/{call_id}`: purge, returning
  `{"purged": [...], "failed": [...]}`.

A selection that matches nothing is a 200 with empty lists, except that the
error `not found` is a `failed` item for each selected seq the stream does
not store (with `call_id` and `kind` null) and for each selected call id that
has no dead letter (with `kind` and `seq` null). A selection with no ids, no seqs, no
filter condition and no `all` is a 400, so that an empty request never
purges everything. The work itself is in `gateway.dead_letters`.
"""

import base64
import datetime
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import yarl
from fastapi import APIRouter, HTTPException, Query, Request

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.dead_letter import DeadLetter
from faashub.queued_call import is_valid_token
from gateway import constants, errors
from gateway.dead_letters import (
    DeadLetterFilter,
    DeadLetterStore,
    Report,
    Selection,
    StoredDeadLetter,
    known_reasons,
)

logger = logging.getLogger(__name__)

_FILTER_FIELDS = ("function", "namespace", "queue", "reason", "kind", "since", "until")
_LIST_FIELDS = frozenset(_FILTER_FIELDS) | {"limit", "after_seq"}
# Largest after_seq a list accepts. JetStream stream sequences are unsigned
# 64-bit numbers, and a list starts at after_seq + 1.
MAX_AFTER_SEQ = 2**64 - 2
MAX_SEQ = 2**64 - 1
# Max seqs in one redrive or purge request. The console's requests have the
# same limit.
MAX_SELECTED_SEQS = 500
_KINDS = ("call", "callback")
_REDACTED = "<redacted>"
# Parts of a header name that mark its value as a credential, beside the names
# in constants.REDACTED_HEADERS: X-Api-Key, X-Auth-Token, X-Hub-Signature and
# X-Session-Id match, for example. The rule goes by name only, so a credential
# sent under a name without these parts is still shown in full.
_CREDENTIAL_NAME_PARTS = (
    "auth",
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "apikey",
    "api_key",
    "session",
    "signature",
    "credential",
    "cookie",
)
_NS_PER_S = 1_000_000_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_MICROSECOND = datetime.timedelta(microseconds=1)
_SELECTION_HELP = (
    'Send {"call_ids": ["..."]}, {"seqs": [17, 18]}, '
    '{"filter": {"function": "...", ...}} or {"all": true}.'
)


def create_router(store: DeadLetterStore) -> APIRouter:
    """Return the routes of the dead-letter API, bound to `store`."""
    router = APIRouter(prefix=constants.DEAD_LETTERS_PATH, tags=["dead letters"])

    @router.get("", summary="List dead letters, oldest first")
    async def list_dead_letters(
        request: Request,
        function: str | None = Query(None, description="NAME or NAME.NAMESPACE."),
        namespace: str | None = Query(None, description="Function namespace."),
        queue: str | None = Query(None, description="Named queue."),
        reason: str | None = Query(None, description="Why it was dead-lettered."),
        kind: str | None = Query(None, description="'call' or 'callback'."),
        since: str | None = Query(None, description="RFC 3339; at or after."),
        until: str | None = Query(None, description="RFC 3339; at or before."),
        limit: str | None = Query(None, description="1 to 1000; default 100."),
        after_seq: str | None = Query(None, description="Continue after this seq."),
    ) -> dict[str, Any]:
        # The parameters above document the route; the checks read the query
        # itself, so that they can reject names they do not know.
        with _http_errors():
            _reject_unknown(request.query_params.keys(), _LIST_FIELDS)
            selected = parse_filter(request.query_params)
            count = _integer(
                "limit",
                limit,
                default=constants.DEAD_LETTER_LIST_LIMIT,
                low=1,
                high=constants.DEAD_LETTER_LIST_MAX_LIMIT,
            )
            after = parse_after_seq(after_seq)
            found, truncated = await store.list_matching(
                selected, limit=count, after_seq=after
            )
        listing: dict[str, Any] = {
            "dead_letters": [summary(stored) for stored in found],
            "count": len(found),
            "order": "oldest-first",
            "truncated": truncated,
        }
        if truncated and found:
            listing["next_after_seq"] = found[-1].seq
        return listing

    @router.post("/redrive", summary="Queue dead-lettered calls or callbacks again")
    async def redrive(request: Request) -> dict[str, Any]:
        with _http_errors():
            selection = parse_selection_body(await request.body())
            report = await store.redrive(selection)
        return _report(report, done="redriven")

    @router.delete("", summary="Purge the selected dead letters")
    async def purge(request: Request) -> dict[str, Any]:
        with _http_errors():
            body = await request.body()
            if body.strip():
                if request.query_params:
                    raise errors.InvalidRequest(
                        "Give the selection either as a JSON body or as query "
                        "parameters, not both."
                    )
                selection = parse_selection_body(body)
            else:
                selection = parse_selection_query(request.query_params)
            report = await store.purge(selection)
        return _report(report, done="purged")

    @router.get("/{call_id:path}", summary="Show the newest dead letter of a call")
    async def show(
        call_id: str,
        kind: str | None = Query(None, description="'call' or 'callback'."),
    ) -> dict[str, Any]:
        with _http_errors():
            stored = await store.get(call_id, kind=_kind(kind))
        return detail(stored)

    @router.delete("/{call_id:path}", summary="Purge the dead letters of a call")
    async def purge_one(
        call_id: str,
        kind: str | None = Query(None, description="'call' or 'callback'."),
    ) -> dict[str, Any]:
        with _http_errors():
            wanted_kind = _kind(kind)
            # One scan finds them, so a 404 is certain before anything is deleted.
            await store.get(call_id, kind=wanted_kind)
            selection = Selection(call_ids=(call_id,))
            if wanted_kind is not None:
                selection = Selection(
                    call_ids=(call_id,), filter=DeadLetterFilter(kind=wanted_kind)
                )
            report = await store.purge(selection)
        return _report(report, done="purged")

    return router


# Request parsing.


def parse_filter(values: Mapping[str, Any]) -> DeadLetterFilter:
    """Build a filter from the listing's parameters; raise InvalidRequest."""
    function, namespace = _function_and_namespace(values)

    queue = _text(values, "queue")
    if queue is not None and not is_valid_token(queue):
        raise errors.InvalidRequest(
            f"Invalid filter queue {queue!r}: expected letters, digits, '-' or '_'."
        )
    reason = _text(values, "reason")
    reasons = sorted(known_reasons())
    if reason is not None and reason not in reasons:
        raise errors.InvalidRequest(
            f"Unknown filter reason {reason!r}; use one of {', '.join(reasons)}."
        )

    since_ns = _time(values, "since")
    until_ns = _time(values, "until")
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        raise errors.InvalidRequest(
            "The filter's since is after its until, so nothing can match; swap them."
        )
    return DeadLetterFilter(
        function=function,
        namespace=namespace,
        queue=queue,
        reason=reason,
        kind=_kind(_text(values, "kind")),
        since_ns=since_ns,
        until_ns=until_ns,
    )


def _function_and_namespace(values: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Return the filter's function and namespace, from NAME.NAMESPACE too."""
    function = _text(values, "function")
    namespace = _text(values, "namespace")
    if function is not None and "." in function:
        try:
            ref = names.parse_function_ref(function)
        except shared_errors.InvalidFunctionName as exc:
            raise errors.InvalidRequest(f"Invalid filter function: {exc}") from exc
        if namespace is not None and namespace != ref.namespace:
            raise errors.InvalidRequest(
                f"The filter function {function!r} names namespace "
                f"{ref.namespace!r} but namespace is {namespace!r}; give one."
            )
        function, namespace = ref.name, ref.namespace
    try:
        if function is not None:
            names.validate_label(function)
        if namespace is not None:
            names.validate_label(namespace, what="namespace")
    except shared_errors.InvalidFunctionName as exc:
        raise errors.InvalidRequest(f"Invalid filter: {exc}") from exc
    return function, namespace


def parse_selection_body(body: bytes) -> Selection:
    """Parse a JSON selection; raise InvalidRequest for an empty or invalid one."""
    try:
        document = json.loads(body) if body.strip() else {}
    except ValueError as exc:
        raise errors.InvalidRequest(
            f"The request body is not valid JSON ({exc}). {_SELECTION_HELP}"
        ) from exc
    if not isinstance(document, dict):
        raise errors.InvalidRequest(
            f"The request body must be a JSON object. {_SELECTION_HELP}"
        )
    _reject_unknown(document.keys(), frozenset({"call_ids", "seqs", "filter", "all"}))
    call_ids = document.get("call_ids")
    if call_ids is not None and (
        not isinstance(call_ids, list)
        or not all(isinstance(item, str) and item for item in call_ids)
    ):
        raise errors.InvalidRequest(
            "call_ids must be a list of non-empty strings, such as "
            '["0b6c...", "order-17"].'
        )
    raw_filter = document.get("filter")
    if raw_filter is not None:
        if not isinstance(raw_filter, dict):
            raise errors.InvalidRequest(
                'filter must be a JSON object, such as {"function": "resize"}.'
            )
        _reject_unknown(raw_filter.keys(), frozenset(_FILTER_FIELDS))
    all_selected = document.get("all", False)
    if not isinstance(all_selected, bool):
        raise errors.InvalidRequest("all must be true or false.")
    seqs = document.get("seqs")
    return _selection(
        call_ids=call_ids or [],
        seqs=[] if seqs is None else parse_seqs(seqs),
        selected=None if raw_filter is None else parse_filter(raw_filter),
        all_selected=all_selected,
    )


def parse_seqs(value: Any) -> list[int]:
    """Check a JSON list of stream sequences and return it, or raise InvalidRequest.

    A list is valid with 1 to MAX_SELECTED_SEQS whole numbers from 1 to
    MAX_SEQ. JSON true and false are rejected although Python counts them as
    integers.
    """
    if not isinstance(value, list) or not value:
        raise errors.InvalidRequest(
            f"Invalid seqs {_excerpt(value)}: expected a non-empty list of stream "
            "sequences, such as [17, 18], as the seq of each listed dead letter."
        )
    if len(value) > MAX_SELECTED_SEQS:
        raise errors.InvalidRequest(
            f"seqs has {len(value)} items, more than the {MAX_SELECTED_SEQS} one "
            "request may select. Send them in several requests, or select by a "
            "filter."
        )
    for item in value:
        if (
            not isinstance(item, int)
            or isinstance(item, bool)
            or not 1 <= item <= MAX_SEQ
        ):
            raise errors.InvalidRequest(
                f"Invalid seq {_excerpt(item)} in seqs: expected a whole number "
                f"from 1 to {MAX_SEQ}, the seq of a listed dead letter."
            )
    return value


def _excerpt(value: Any) -> str:
    """Return `value` as JSON, cut to 40 characters for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def parse_selection_query(values: Any) -> Selection:
    """Parse a selection from query parameters (`call_id`, `seq`, `all`, filters)."""
    _reject_unknown(
        values.keys(), frozenset(_FILTER_FIELDS) | {"call_id", "seq", "all"}
    )
    call_ids: list[str] = values.getlist("call_id")
    if any(not call_id for call_id in call_ids):
        raise errors.InvalidRequest("call_id must not be empty.")
    seq_texts: list[str] = values.getlist("seq")
    if len(seq_texts) > MAX_SELECTED_SEQS:
        raise errors.InvalidRequest(
            f"seq is given {len(seq_texts)} times, more than the "
            f"{MAX_SELECTED_SEQS} one request may select. Send several requests."
        )
    seqs = [_integer("seq", text, default=0, low=1, high=MAX_SEQ) for text in seq_texts]
    all_text = values.get("all")
    if all_text not in (None, "true", "false"):
        raise errors.InvalidRequest(f"Invalid all {all_text!r}: use true or false.")
    has_filter = any(values.get(name) is not None for name in _FILTER_FIELDS)
    return _selection(
        call_ids=call_ids,
        seqs=seqs,
        selected=parse_filter(values) if has_filter else None,
        all_selected=all_text == "true",
    )


def _selection(
    *,
    call_ids: list[str],
    seqs: list[int],
    selected: DeadLetterFilter | None,
    all_selected: bool,
) -> Selection:
    selectors = [bool(call_ids), bool(seqs), selected is not None, all_selected]
    if sum(selectors) > 1:
        raise errors.InvalidRequest(
            "Give one of call ids, seqs, a filter or all, not several. "
            f"{_SELECTION_HELP}"
        )
    if selected is not None and selected.is_empty:
        raise errors.InvalidRequest(
            "The filter has no condition, so it would select every dead letter; "
            'add a condition, or send {"all": true} to mean all of them.'
        )
    if not any(selectors):
        raise errors.InvalidRequest(f"The selection is empty. {_SELECTION_HELP}")
    if all_selected:
        return Selection(all=True)
    if seqs:
        return Selection(seqs=tuple(dict.fromkeys(seqs)))
    return Selection(call_ids=tuple(dict.fromkeys(call_ids)), filter=selected)


def _text(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise errors.InvalidRequest(f"Filter {name} must be a non-empty string.")
    return value


def _kind(value: str | None) -> str | None:
    if value is not None and value not in _KINDS:
        raise errors.InvalidRequest(
            f"Invalid kind {value!r}: use 'call' (the function did not complete) or "
            "'callback' (its result could not be delivered)."
        )
    return value


def _time(values: Mapping[str, Any], name: str) -> int | None:
    text = _text(values, name)
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise errors.InvalidRequest(
            f"Invalid {name} {text!r}: expected RFC 3339 with a zone, such as "
            "2030-01-02T03:04:05Z."
        )
    return (moment - _EPOCH) // _ONE_MICROSECOND * 1000


def parse_after_seq(text: str | None) -> int:
    """Return a list's `after_seq` parameter, 0 when absent; raise InvalidRequest."""
    return _integer("after_seq", text, default=0, low=0, high=MAX_AFTER_SEQ)


def _integer(name: str, text: str | None, *, default: int, low: int, high: int) -> int:
    """Return `text` as a whole number from `low` to `high`; raise InvalidRequest.

    Only ASCII digits pass: `int()` also takes other Unicode digits, and
    raises ValueError for a string of more than 4300 digits.
    """
    if text is None:
        return default
    fits = text.isascii() and text.isdigit() and len(text) <= len(str(high))
    value = int(text) if fits else -1
    if value < low or value > high:
        excerpt = text if len(text) <= 40 else text[:40] + "..."
        raise errors.InvalidRequest(
            f"Invalid {name} {excerpt!r}: expected a whole number from {low} to {high}."
        )
    return value


def _reject_unknown(given: Any, known: frozenset[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise errors.InvalidRequest(
            f"Unknown parameter {', '.join(map(repr, unknown))}; known ones are "
            f"{', '.join(sorted(known))}."
        )


@contextmanager
def _http_errors() -> Iterator[None]:
    """Turn the gateway's errors into HTTP errors with their message as detail."""
    try:
        yield
    except (errors.InvalidRequest, errors.CallNotFound, errors.FunctionNotFound) as exc:
        status = 400 if isinstance(exc, errors.InvalidRequest) else 404
        raise HTTPException(status_code=status, detail=str(exc)) from exc
    except (errors.QueueUnavailable, errors.ProviderUnavailable) as exc:
        status = 503 if isinstance(exc, errors.QueueUnavailable) else 502
        if isinstance(exc, errors.ProviderTokenRejected):
            # Logged at WARNING where it was raised, once a minute at most.
            logger.debug("dead-letter request failed: %s", exc)
        else:
            logger.warning("dead-letter request failed: %s", exc)
        raise HTTPException(
            status_code=status,
            detail=str(exc),
            headers={shared.OPENFAAS_INTERNAL: "gateway"},
        ) from exc


# Responses.


def summary(stored: StoredDeadLetter) -> dict[str, Any]:
    """Return the listing's view of one dead letter."""
    letter = stored.letter
    call = letter.call
    last = letter.attempts[-1] if letter.attempts else None
    return {
        "seq": stored.seq,
        "call_id": call.call_id,
        "kind": letter.kind,
        "reason": letter.reason,
        "detail": letter.detail,
        "function": call.function,
        "namespace": call.namespace,
        "queue": call.queue,
        "dead_lettered_at": _rfc3339(letter.dead_lettered_at_ns),
        "accepted_at": _rfc3339(call.accepted_at_ns),
        "attempts": len(letter.attempts),
        "last_status": None if last is None else last.status,
        "original_call_id": call.original_call_id,
    }


def detail(stored: StoredDeadLetter) -> dict[str, Any]:
    """Return one dead letter in full, secrets redacted, bodies in base64."""
    letter = stored.letter
    call = letter.call
    document = summary(stored)
    document["stored_at"] = stored.stored_at.isoformat().replace("+00:00", "Z")
    document["attempts"] = [
        {
            "status": attempt.status,
            "error": attempt.error,
            "at": _rfc3339(attempt.at_ns),
        }
        for attempt in letter.attempts
    ]
    document["request"] = {
        "method": call.method,
        "path": call.path,
        "query": call.query,
        "headers": redact_headers(call.headers),
        "body": None if call.body_ref else _base64(call.body),
        "body_ref": call.body_ref,
        "body_size": call.body_size if call.body_ref else len(call.body),
        "callback_url": redact_url(call.callback_url),
    }
    document["result"] = _result(letter)
    return document


def _result(letter: DeadLetter) -> dict[str, Any] | None:
    if letter.kind != "callback":
        return None
    return {
        "status": letter.result_status,
        "headers": redact_headers(letter.result_headers),
        "body": _base64(letter.result_body),
    }


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return `headers` with credentials and URL secrets hidden.

    The value of a credential header (see `_is_credential_header`) is replaced
    whole. A value that is an absolute http or https URL, such as
    X-Callback-Url or Referer, is shown as `redact_url` shows it. Other values
    are shown unchanged.
    """
    redacted: dict[str, str] = {}
    for name, value in headers.items():
        if _is_credential_header(name):
            redacted[name] = _REDACTED
        elif value.lower().startswith(("http://", "https://")):
            redacted[name] = redact_url(value)
        else:
            redacted[name] = value
    return redacted


def _is_credential_header(name: str) -> bool:
    lowered = name.lower()
    if lowered in constants.REDACTED_HEADERS:
        return True
    return any(word in lowered for word in _CREDENTIAL_NAME_PARTS)


def redact_url(url: str) -> str:
    """Return `url` without user info and with its query replaced, as it may hold
    tokens."""
    if not url:
        return ""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return _REDACTED
    shown = parsed.with_user(None).with_fragment(None)
    if parsed.query_string:
        return str(shown.with_query(None)) + "?" + _REDACTED
    return str(shown)


def _report(report: Report, *, done: str) -> dict[str, Any]:
    return {done: report.done, "failed": report.failed}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _rfc3339(unix_ns: int) -> str | None:
    if not unix_ns:
        return None
    moment = datetime.datetime.fromtimestamp(unix_ns / _NS_PER_S, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
