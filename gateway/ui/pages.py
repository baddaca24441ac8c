"""The console's HTML pages, rendered on the server with every value escaped.

Each function here takes plain data (function listings from the provider,
call statuses, dead-letter summaries) and returns a whole HTML document. Every
value from outside the code passes through `_text` or `_attribute`, both
`html.escape` with quotes, so a function name, annotation, header or reason
renders as text and never as markup. The pages carry no inline script or
style: `console.js` and `console.css` under `/ui/static/` add the behaviour,
and the lists read without them.
"""

import dataclasses
import html
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from faashub import constants as shared

STATIC_PREFIX = "/ui/static/"
# Annotation that names the cron schedule of a function subscribed to the
# cron-function topic.
ANNOTATION_SCHEDULE = "schedule"


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _attribute(value: object) -> str:
    return html.escape(str(value), quote=True)


def function_url(name: str, namespace: str) -> str:
    """Return the console path of one function's page."""
    return (
        f"/ui/functions/{urllib.parse.quote(namespace, safe='')}/"
        f"{urllib.parse.quote(name, safe='')}"
    )


def _document(title: str, body: str, *, page: str, data: Mapping[str, str]) -> str:
    data_attributes = "".join(
        f' data-{name}="{_attribute(value)}"' for name, value in data.items()
    )
    links = []
    for key, href, label in (
        ("functions", "/ui", "Functions"),
        ("dead-letters", "/ui/dead-letters", "Dead letters"),
    ):
        current = ' aria-current="page"' if key == page else ""
        links.append(f'<a href="{href}"{current}>{label}</a>')
    navigation = "".join(links)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)} · faashub</title>"
        # An empty icon, so the browser does not request /favicon.ico.
        '<link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{STATIC_PREFIX}console.css">'
        f'<script src="{STATIC_PREFIX}console.js" defer></script>'
        f'</head><body data-page="{_attribute(page)}"{data_attributes}>'
        f'<header><span class="brand">faashub</span><nav>{navigation}</nav></header>'
        f"<main><h1>{_text(title)}</h1>"
        '<div id="notice" role="status" hidden></div>'
        f"{body}</main></body></html>\n"
    )


def error_page(title: str, message: str) -> str:
    """Return a page that shows one error message."""
    return _document(
        title, f'<p class="error">{_text(message)}</p>', page="error", data={}
    )


def _badges(annotations: Mapping[str, str]) -> str:
    badges = []
    topic = annotations.get(shared.ANNOTATION_TOPIC)
    if topic:
        badges.append(f'<span class="badge topic">topic: {_text(topic)}</span>')
    schedule = annotations.get(ANNOTATION_SCHEDULE)
    if schedule:
        badges.append(
            f'<span class="badge schedule">schedule: {_text(schedule)}</span>'
        )
    return "".join(badges)


def _pairs(values: Mapping[str, Any], *, css_class: str) -> str:
    if not values:
        return '<span class="muted">none</span>'
    items = "".join(
        f"<li><code>{_text(key)}</code>=<code>{_text(value)}</code></li>"
        for key, value in sorted(values.items())
    )
    return f'<ul class="{css_class}">{items}</ul>'


def _string_map(entry: Mapping[str, Any], field: str) -> dict[str, str]:
    value = entry.get(field)
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}


def functions_page(
    functions: Iterable[Mapping[str, Any]], *, namespaces: list[str], problem: str
) -> str:
    """Return the list of functions, with the deploy form."""
    rows = []
    for entry in functions:
        name = str(entry.get("name", ""))
        namespace = str(entry.get("namespace") or shared.DEFAULT_NAMESPACE)
        annotations = _string_map(entry, "annotations")
        rows.append(
            f'<tr data-function="{_attribute(name)}" '
            f'data-namespace="{_attribute(namespace)}">'
            f'<td><a href="{_attribute(function_url(name, namespace))}">'
            f"{_text(name)}</a><div>{_badges(annotations)}</div></td>"
            f"<td>{_text(namespace)}</td>"
            f"<td><code>{_text(entry.get('image', ''))}</code></td>"
            f'<td class="number">{_text(entry.get("replicas", 0))} / '
            f"{_text(entry.get('availableReplicas', 0))}</td>"
            f'<td class="number">{_text(int(entry.get("invocationCount") or 0))}</td>'
            f"<td>{_pairs(annotations, css_class='annotations')}</td>"
            '<td><button type="button" class="danger" data-action="remove">'
            "Remove</button></td></tr>"
        )
    if rows:
        table = (
            '<table id="functions"><thead><tr><th>Name</th><th>Namespace</th>'
            "<th>Image</th><th>Replicas / available</th><th>Invocations</th>"
            "<th>Annotations</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    else:
        table = '<p class="muted" id="functions">No function is deployed.</p>'
    if problem:
        table = f'<p class="error">{_text(problem)}</p>' + table
    options = "".join(
        f'<option value="{_attribute(namespace)}">{_text(namespace)}</option>'
        for namespace in namespaces or [shared.DEFAULT_NAMESPACE]
    )
    form = (
        '<section><h2>Deploy a function</h2><form id="deploy" class="grid">'
        '<label>Name <input name="service" required '
        # Browsers compile `pattern` with the `v` flag, under which a literal
        # "-" in a character class must be escaped.
        'pattern="[a-z0-9]([\\-a-z0-9]*[a-z0-9])?" maxlength="63"></label>'
        f'<label>Namespace <select name="namespace">{options}</select></label>'
        '<label>Image <input name="image" placeholder="ghcr.io/org/fn:1.0">'
        "</label>"
        '<label>Process (fprocess) <input name="envProcess" '
        'placeholder="wc -c"></label>'
        '<label>Environment (KEY=VALUE per line) <textarea name="envVars" '
        'rows="3"></textarea></label>'
        '<label>Annotations (KEY=VALUE per line) <textarea name="annotations" '
        'rows="3"></textarea></label>'
        '<label>Labels (KEY=VALUE per line) <textarea name="labels" rows="3">'
        "</textarea></label>"
        '<div><button type="submit">Deploy</button></div></form>'
        '<noscript><p class="muted">Deploying and removing need JavaScript, '
        "or use faas-cli.</p></noscript></section>"
    )
    return _document(
        "Functions",
        f"<section>{table}</section>{form}",
        page="functions",
        data={},
    )


def calls_table(calls: Iterable[Mapping[str, Any]], *, notes: list[str]) -> str:
    """Return the table of a function's async calls (`CallStatus.to_api` shape)."""
    rows = "".join(
        f'<tr data-call-id="{_attribute(call.get("call_id", ""))}">'
        f"<td><code>{_text(call.get('call_id', ''))}</code></td>"
        f'<td><span class="state state-{_attribute(call.get("state", ""))}">'
        f"{_text(call.get('state', ''))}</span></td>"
        f'<td class="number">{_text(call.get("attempts", 0))}</td>'
        f"<td>{_text(call.get('last_status') or '')}</td>"
        f"<td>{_text(call.get('accepted_at') or '')}</td>"
        f"<td>{_text(call.get('finished_at') or '')}</td></tr>"
        for call in calls
    )
    if not rows:
        rows = '<tr><td colspan="6" class="muted">No async calls found.</td></tr>'
    note = "".join(f'<p class="muted">{_text(text)}</p>' for text in notes)
    return (
        '<table id="calls"><thead><tr><th>Call id</th><th>State</th>'
        "<th>Attempts</th><th>Last status</th><th>Accepted</th><th>Finished</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>{note}"
    )


def function_page(
    entry: Mapping[str, Any],
    *,
    invocation_count: int,
    calls: str,
) -> str:
    """Return one function's page: details, invoke form, calls and chart."""
    name = str(entry.get("name", ""))
    namespace = str(entry.get("namespace") or shared.DEFAULT_NAMESPACE)
    annotations = _string_map(entry, "annotations")
    details = (
        '<dl class="details">'
        f"<dt>Namespace</dt><dd>{_text(namespace)}</dd>"
        f"<dt>Image</dt><dd><code>{_text(entry.get('image', ''))}</code></dd>"
        f"<dt>Process</dt><dd><code>{_text(entry.get('envProcess', ''))}</code></dd>"
        f"<dt>Replicas / available</dt><dd>{_text(entry.get('replicas', 0))} / "
        f"{_text(entry.get('availableReplicas', 0))}</dd>"
        f"<dt>Invocations</dt><dd>{_text(invocation_count)}</dd>"
        f"<dt>Annotations</dt><dd>{_badges(annotations)}"
        f"{_pairs(annotations, css_class='annotations')}</dd>"
        f"<dt>Labels</dt><dd>{_pairs(_string_map(entry, 'labels'), css_class='labels')}"
        "</dd></dl>"
    )
    methods = "".join(
        f"<option{' selected' if method == 'POST' else ''}>{method}</option>"
        for method in ("POST", "GET", "PUT", "PATCH", "DELETE")
    )
    invoke = (
        '<section><h2>Invoke</h2><form id="invoke" class="grid">'
        '<fieldset class="inline"><legend>Mode</legend>'
        '<label><input type="radio" name="mode" value="sync" checked> sync</label>'
        '<label><input type="radio" name="mode" value="async"> async</label>'
        "</fieldset>"
        f'<label>Method <select name="method">{methods}</select></label>'
        '<label>Path and query <input name="path" placeholder="/items/7?x=1">'
        "</label>"
        '<label>Headers (Name: value per line) <textarea name="headers" rows="3">'
        "</textarea></label>"
        '<label>Callback URL (async) <input name="callback" type="url" '
        'placeholder="http://127.0.0.1:9000/done"></label>'
        '<label>Body <textarea name="body" rows="6"></textarea></label>'
        '<div><button type="submit">Invoke</button></div></form>'
        '<div id="result" hidden><h3>Response <span id="result-status"></span></h3>'
        '<p id="async-call" hidden>Call <code id="async-call-id"></code>: '
        '<span id="async-call-state" class="state"></span></p>'
        '<table id="result-headers"><tbody></tbody></table>'
        '<p id="result-size" class="muted"></p><pre id="result-body"></pre></div>'
        '<noscript><p class="muted">Invoking needs JavaScript, or use faas-cli.'
        "</p></noscript></section>"
    )
    chart = (
        "<section><h2>Invocations per second</h2>"
        '<p class="muted">Sampled every 2 s from this gateway\'s counters.</p>'
        '<ul class="legend">'
        '<li><span class="swatch rate"></span>requests through /function/: sync '
        "calls, and async attempts the queue-worker sends through the gateway</li>"
        '<li><span class="swatch accepted"></span>async calls accepted</li>'
        '<li><span class="swatch finished"></span>async calls finished by the '
        "queue-worker</li>"
        '<li><span class="swatch errors"></span>share of errors (0 to 100 %): '
        "5xx responses of /function/ and async calls that failed or were "
        "dead-lettered</li></ul>"
        '<div id="chart" class="chart"></div></section>'
    )
    recent = (
        f'<section><h2>Recent async calls</h2><div id="calls-list">{calls}</div>'
        "</section>"
    )
    return _document(
        name,
        details + invoke + recent + chart,
        page="function",
        data={"function": name, "namespace": namespace},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterListing:
    """The position of one page of the dead-letter list in the stream."""

    after_seq: int
    """The page lists dead letters with a greater sequence; 0 on the first page."""
    next_after_seq: int | None
    """The after_seq of the next page, or None when no more dead letters follow."""
    stored: int | None
    """Dead letters in the stream on all pages together; None when unknown."""


def dead_letters_url(after_seq: int) -> str:
    """Return the console path of the dead-letter page after `after_seq`."""
    if not after_seq:
        return "/ui/dead-letters"
    return f"/ui/dead-letters?after_seq={after_seq}"


def _dead_letter_row(letter: Mapping[str, Any]) -> str:
    call_id = letter.get("call_id", "")
    seq = _attribute(letter.get("seq", ""))
    # The script selects a row's dead letter by its stream sequence, because a
    # call id may have several dead letters.
    return (
        f'<tr data-call-id="{_attribute(call_id)}" data-seq="{seq}">'
        # autocomplete=off: Firefox restores checkbox states by position on a
        # reload, which would select other dead letters once rows are gone.
        '<td><input type="checkbox" name="selected" autocomplete="off" '
        f'value="{seq}" aria-label="select"></td>'
        f"<td>{_text(letter.get('function', ''))}.{_text(letter.get('namespace', ''))}"
        "</td>"
        f"<td><code>{_text(call_id)}</code></td>"
        f"<td>{_text(letter.get('kind', ''))}</td>"
        f"<td>{_text(letter.get('reason', ''))}"
        f'<div class="muted">{_text(letter.get("detail", ""))}</div></td>'
        f'<td class="number">{_text(letter.get("attempts", 0))}</td>'
        f"<td>{_text(letter.get('dead_lettered_at') or '')}</td>"
        '<td class="actions"><button type="button" data-action="redrive">Redrive'
        '</button> <button type="button" class="danger" data-action="purge">Purge'
        "</button></td></tr>"
    )


def _dead_letter_counts(shown_count: int, listing: DeadLetterListing) -> str:
    """Return the line with the number of dead letters shown and stored."""
    of_stored = ""
    if listing.stored is not None:
        of_stored = f' of <span id="stored-count">{_text(listing.stored)}</span>'
    position = "oldest first"
    if listing.after_seq:
        position += f", after sequence {_text(listing.after_seq)}"
    return (
        '<p id="dead-letter-counts" class="muted">Showing '
        f'<span id="shown-count">{_text(shown_count)}</span>{of_stored} dead letters, '
        f"{position}.</p>"
    )


def _pager(listing: DeadLetterListing) -> str:
    links = []
    if listing.after_seq:
        links.append(
            f'<a href="{_attribute(dead_letters_url(0))}" rel="first">First page</a>'
        )
    if listing.next_after_seq is not None:
        href = dead_letters_url(listing.next_after_seq)
        links.append(f'<a href="{_attribute(href)}" rel="next">Next page</a>')
    if not links:
        return ""
    return f'<nav class="pager" aria-label="dead-letter pages">{" ".join(links)}</nav>'


def dead_letters_page(
    letters: Iterable[Mapping[str, Any]], *, listing: DeadLetterListing, problem: str
) -> str:
    """Return one page of the dead-letter list with redrive and purge controls."""
    rows = [_dead_letter_row(letter) for letter in letters]
    if rows:
        table = (
            '<div class="toolbar"><button type="button" data-action="redrive-selected">'
            'Redrive selected</button> <button type="button" class="danger" '
            'data-action="purge-selected">Purge selected</button> '
            '<span id="selected-count" class="muted">0 selected</span></div>'
            '<table id="dead-letters"><thead><tr><th><input type="checkbox" '
            'id="select-page" autocomplete="off" '
            'aria-label="select every dead letter on this page" '
            'title="Select every dead letter on this page"></th><th>Function</th>'
            "<th>Call id</th><th>Kind</th><th>Reason</th><th>Attempts</th>"
            f"<th>Dead-lettered at</th><th></th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>"
        )
    elif listing.after_seq:
        table = (
            '<p class="muted" id="dead-letters">No dead letters after sequence '
            f"{_text(listing.after_seq)}.</p>"
        )
    else:
        table = '<p class="muted" id="dead-letters">No dead letters.</p>'
    body = _dead_letter_counts(len(rows), listing) + table + _pager(listing)
    if problem:
        body = f'<p class="error">{_text(problem)}</p>' + _pager(listing)
    return _document("Dead letters", body, page="dead-letters", data={})
