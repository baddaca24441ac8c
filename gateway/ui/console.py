"""The web console at `/ui`: pages, static files and the console's JSON routes.

`GatewayApp` sends every request under `/ui` here after `gateway.auth` has
admitted it, with the same credentials as `/system/*`. Pages:

* `GET /ui`: every function of every namespace the provider lists, with the
  deploy form and a remove button per function;
* `GET /ui/functions/{namespace}/{name}`: one function, its invoke form, its
  recent async calls (`gateway.async_call_list`) and a chart of its sync
  and async calls (see `function_metrics`);
* `GET /ui/dead-letters[?after_seq=N]`: the dead letters, `DEAD_LETTERS_SHOWN`
  a page, with redrive and purge.

The console's script calls the JSON routes under `/ui/api/`. Each route that
changes state checks the request against forgery first (`gateway.ui.guard`).
Deploys, removals and function listings go through the `/system` FastAPI app
in process, so they get the same checks and provider credentials as a
faas-cli request. Invocations go through the gateway's own ASGI app
(`gateway.ui.invoke`). Nothing here is on the invocation routes' path.
"""

import asyncio
import importlib.resources
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.logs import LimitedWarning
from faashub.settings import GatewaySettings
from gateway import asgi, constants, dead_letter_api, errors, limits
from gateway.async_call_list import AsyncCallLister
from gateway.call_queue import CallQueue
from gateway.dead_letter_api import summary
from gateway.dead_letters import (
    DeadLetterFilter,
    DeadLetterStore,
    Selection,
)
from gateway.metrics import GatewayMetrics
from gateway.ui import guard, invoke, pages
from gateway.ui.async_outcomes import AsyncOutcomes

logger = logging.getLogger(__name__)

# Dead letters one page of the dead-letter list shows at most, oldest first.
DEAD_LETTERS_SHOWN = 200
# Async calls a function page lists at most.
CALLS_SHOWN = 20
# Max call ids or seqs in one redrive or purge request of the console.
MAX_SELECTED_IDS = dead_letter_api.MAX_SELECTED_SEQS
# Extra seconds an in-process invocation may take beyond upstream_timeout_s.
INVOKE_TIMEOUT_MARGIN_S = 10.0
# Request body bytes an invocation route reads at most: room for a body of
# invoke.MAX_REQUEST_BODY_BYTES as a JSON string, and its headers.
# NOTE: JSON writes a control character as \uXXXX (6 bytes), so a 1 MiB body
# made mostly of control characters passes this cap and gets 413.
MAX_INVOKE_JSON_BYTES = 2 * 1024 * 1024
# Request body bytes the deploy, redrive and purge routes read at most.
MAX_JSON_BYTES = 256 * 1024

_STATIC_FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# Host name of the in-process requests to the /system app; never resolved.
_INTERNAL_BASE_URL = "http://gateway.internal"


class Console:
    """The ASGI app of `/ui`, bound to the gateway's parts it reads and drives."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        system_app: ASGIApp,
        gateway: ASGIApp,
        dead_letters: DeadLetterStore,
        metrics: GatewayMetrics,
        queue: CallQueue,
        async_accepted: Mapping[names.FunctionRef, int],
    ) -> None:
        self._settings = settings
        self._system_app = system_app
        self._gateway = gateway
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._queue = queue
        self._async_accepted = async_accepted
        self._async_outcomes = AsyncOutcomes(queue)
        # An open function page requests its counts every 2 s.
        self._outcome_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._lister = AsyncCallLister(queue)
        self._app = Starlette(
            routes=[
                Route("/ui", self.functions_page, methods=["GET"]),
                Route("/ui/", self.functions_page, methods=["GET"]),
                Route(
                    "/ui/functions/{namespace}/{name}",
                    self.function_page,
                    methods=["GET"],
                ),
                Route("/ui/dead-letters", self.dead_letters_page, methods=["GET"]),
                Route("/ui/static/{file}", self.static_file, methods=["GET"]),
                Route("/ui/api/functions", self.deploy, methods=["POST"]),
                Route(
                    "/ui/api/functions/{namespace}/{name}",
                    self.remove,
                    methods=["DELETE"],
                ),
                Route(
                    "/ui/api/functions/{namespace}/{name}/invoke",
                    self.invoke,
                    methods=["POST"],
                ),
                Route(
                    "/ui/api/functions/{namespace}/{name}/metrics",
                    self.function_metrics,
                    methods=["GET"],
                ),
                Route("/ui/api/dead-letters/redrive", self.redrive, methods=["POST"]),
                Route("/ui/api/dead-letters/purge", self.purge, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send_with_headers = guard.with_security_headers(send)
        problem = guard.cross_origin_problem(scope["headers"])
        if problem is not None:
            logger.warning(
                "console rejected cross-origin request",
                extra={"ctx": {"path": scope["path"]}},
            )
            await asgi.send_text(send_with_headers, 403, problem + "\n")
            return
        await self._app(scope, receive, send_with_headers)

    # Pages.

    async def functions_page(self, request: Request) -> Response:
        namespaces, functions, problem = await self._list_functions()
        return HTMLResponse(
            pages.functions_page(functions, namespaces=namespaces, problem=problem),
            status_code=502 if problem else 200,
        )

    async def function_page(self, request: Request) -> Response:
        try:
            ref = _function_ref(request)
        except errors.InvalidRequest as exc:
            return HTMLResponse(pages.error_page("Invalid function", str(exc)), 400)
        async with self._system_client() as client:
            found = await client.get(
                f"/system/function/{ref.name}", params={"namespace": ref.namespace}
            )
        if found.status_code != 200:
            return HTMLResponse(
                pages.error_page(
                    f"Function {ref.name}",
                    f"The provider returned {found.status_code} for function "
                    f"{ref}: {found.text.strip()}",
                ),
                status_code=404 if found.status_code == 404 else 502,
            )
        entry = found.json()
        notes: list[str] = []
        calls: list[dict[str, Any]] = []
        try:
            listing = await self._lister.list_calls(ref, limit=CALLS_SHOWN)
        except errors.QueueUnavailable as exc:
            notes.append(str(exc))
        else:
            calls = [status.to_api() for status in listing.calls]
            if listing.scan_limit_reached:
                notes.append(
                    f"Only the newest {self._lister.scan_limit} status records "
                    "and queued calls were read; older calls are not shown."
                )
        count = self._metrics.invocation_counts().get(str(ref), 0.0)
        return HTMLResponse(
            pages.function_page(
                entry,
                invocation_count=int(count),
                calls=pages.calls_table(calls, notes=notes),
            )
        )

    async def dead_letters_page(self, request: Request) -> Response:
        try:
            after_seq = parse_after_seq(request.query_params.getlist("after_seq"))
        except errors.InvalidRequest as exc:
            return HTMLResponse(
                pages.error_page("Invalid dead-letter page", str(exc)), 400
            )
        letters: list[dict[str, Any]] = []
        next_after_seq: int | None = None
        stored_count: int | None = None
        problem = ""
        try:
            found, truncated = await self._dead_letters.list_matching(
                DeadLetterFilter(), limit=DEAD_LETTERS_SHOWN, after_seq=after_seq
            )
            letters = [summary(stored) for stored in found]
            if truncated and found:
                next_after_seq = found[-1].seq
            stored_count = await self._stored_dead_letters()
        except errors.QueueUnavailable as exc:
            problem = str(exc)
        listing = pages.DeadLetterListing(
            after_seq=after_seq, next_after_seq=next_after_seq, stored=stored_count
        )
        return HTMLResponse(
            pages.dead_letters_page(letters, listing=listing, problem=problem),
            status_code=503 if problem else 200,
        )

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["file"]
        content_type = _STATIC_FILES.get(name)
        if content_type is None:
            return Response(f"No console file {name!r}.\n", 404)
        data = importlib.resources.files("gateway.ui").joinpath("static", name)
        return Response(data.read_bytes(), media_type=content_type)

    # JSON routes.

    async def function_metrics(self, request: Request) -> Response:
        try:
            ref = _function_ref(request)
        except errors.InvalidRequest as exc:
            return _json_error(400, str(exc))
        document = function_metrics(self._metrics, str(ref))
        document["async_calls"] = await self._async_counts(ref)
        return JSONResponse(document)

    async def deploy(self, request: Request) -> Response:
        document = await self._checked_json(request, max_bytes=MAX_JSON_BYTES)
        if isinstance(document, Response):
            return document
        if not isinstance(document, dict) or not isinstance(
            document.get("service"), str
        ):
            return _json_error(
                400, 'Send a FunctionDeployment JSON object with a "service" name.'
            )
        async with self._system_client() as client:
            response = await client.post("/system/functions", json=document)
        if response.status_code == 409:
            namespace = document.get("namespace") or shared.DEFAULT_NAMESPACE
            return _json_error(
                409,
                f"Function {document['service']!r} already exists in namespace "
                f"{namespace!r}. The console cannot update a function: remove "
                "it first, or update it with 'faashub deploy' or 'faas-cli "
                "deploy'.",
            )
        if response.status_code >= 300:
            return _json_error(response.status_code, response.text.strip())
        logger.info(
            "console deployed function",
            extra={"ctx": {"function": document["service"]}},
        )
        return JSONResponse({"deployed": document["service"]}, status_code=202)

    async def remove(self, request: Request) -> Response:
        problem = guard.forgery_problem(request.scope["headers"], method="DELETE")
        if problem is not None:
            return _json_error(403, problem)
        try:
            ref = _function_ref(request)
        except errors.InvalidRequest as exc:
            return _json_error(400, str(exc))
        async with self._system_client() as client:
            response = await client.request(
                "DELETE",
                "/system/functions",
                json={"functionName": ref.name, "namespace": ref.namespace},
            )
        if response.status_code >= 300:
            return _json_error(response.status_code, response.text.strip())
        logger.info("console removed function", extra={"ctx": {"function": str(ref)}})
        return JSONResponse({"removed": str(ref)}, status_code=202)

    async def invoke(self, request: Request) -> Response:
        document = await self._checked_json(request, max_bytes=MAX_INVOKE_JSON_BYTES)
        if isinstance(document, Response):
            return document
        try:
            ref = _function_ref(request)
            invocation = invoke.parse_request(document)
        except errors.InvalidRequest as exc:
            return _json_error(400, str(exc))
        authorization = None
        if self._settings.auth_invoke:
            authorization = request.headers.get("authorization")
        try:
            result = await invoke.call_gateway(
                self._gateway,
                invocation,
                function=str(ref),
                outer_scope=request.scope,
                authorization=authorization,
                timeout_s=self._settings.upstream_timeout_s + INVOKE_TIMEOUT_MARGIN_S,
            )
        except TimeoutError:
            return _json_error(
                504,
                f"The call of {ref} did not finish within "
                f"{self._settings.upstream_timeout_s:g} s (upstream_timeout_s).",
            )
        logger.info(
            "console invoked function",
            extra={
                "ctx": {
                    "function": str(ref),
                    "mode": invocation.mode,
                    "status": result.status,
                }
            },
        )
        return JSONResponse(result.to_api())

    async def redrive(self, request: Request) -> Response:
        selection = await self._selection(request)
        if isinstance(selection, Response):
            return selection
        try:
            report = await self._dead_letters.redrive(selection)
        except errors.QueueUnavailable as exc:
            return _json_error(503, str(exc))
        logger.info(
            "console redrove dead letters",
            extra={"ctx": {"redriven": len(report.done), "failed": len(report.failed)}},
        )
        return JSONResponse(
            {
                "redriven": report.done,
                "failed": report.failed,
                "stored": await self._stored_or_none(),
            }
        )

    async def purge(self, request: Request) -> Response:
        selection = await self._selection(request)
        if isinstance(selection, Response):
            return selection
        try:
            report = await self._dead_letters.purge(selection)
        except errors.QueueUnavailable as exc:
            return _json_error(503, str(exc))
        logger.info(
            "console purged dead letters",
            extra={"ctx": {"purged": len(report.done), "failed": len(report.failed)}},
        )
        return JSONResponse(
            {
                "purged": report.done,
                "failed": report.failed,
                "stored": await self._stored_or_none(),
            }
        )

    # Helpers.

    async def _checked_json(self, request: Request, *, max_bytes: int) -> Any:
        """Return the request's JSON body, or an error response to send instead."""
        problem = guard.forgery_problem(request.scope["headers"], method=request.method)
        if problem is not None:
            logger.warning(
                "console rejected request that may be forged",
                extra={"ctx": {"path": request.url.path}},
            )
            return _json_error(403, problem)
        timeout_s = self._settings.body_read_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                body = await _read_body(request, max_bytes=max_bytes)
        except TimeoutError:
            return JSONResponse(
                {"detail": limits.body_read_timeout_text(timeout_s).strip()},
                status_code=408,
                headers={"Connection": "close"},
            )
        if isinstance(body, Response):
            return body
        try:
            return json.loads(body)
        except ValueError as exc:
            return _json_error(400, f"The request body is not valid JSON: {exc}.")

    async def _selection(self, request: Request) -> Selection | Response:
        """Return the request's seqs or call ids, or an error response to send.

        The console's script sends `{"seqs": [...]}`, so that a row acts on
        its own dead letter only. `{"call_ids": [...]}` still selects every
        dead letter of each id.
        """
        document = await self._checked_json(request, max_bytes=MAX_JSON_BYTES)
        if isinstance(document, Response):
            return document
        if isinstance(document, dict) and "seqs" in document:
            if "call_ids" in document:
                return _json_error(
                    400,
                    'Send either {"seqs": [...]} or {"call_ids": [...]}, not both.',
                )
            try:
                seqs = dead_letter_api.parse_seqs(document["seqs"])
            except errors.InvalidRequest as exc:
                return _json_error(400, str(exc))
            return Selection(seqs=tuple(dict.fromkeys(seqs)))
        call_ids = document.get("call_ids") if isinstance(document, dict) else None
        if (
            not isinstance(call_ids, list)
            or not call_ids
            or len(call_ids) > MAX_SELECTED_IDS
            or not all(isinstance(item, str) and item for item in call_ids)
        ):
            return _json_error(
                400,
                f'Send {{"seqs": [...]}} with 1 to {MAX_SELECTED_IDS} seqs, or '
                f'{{"call_ids": [...]}} with 1 to {MAX_SELECTED_IDS} non-empty '
                "call ids.",
            )
        return Selection(call_ids=tuple(dict.fromkeys(call_ids)))

    async def _async_counts(self, ref: names.FunctionRef) -> dict[str, Any]:
        """Return the async calls of `ref` accepted and finished, as totals.

        `finished` is None while NATS is unavailable, and the chart then
        plots accepted calls only.
        """
        finished: dict[str, int] | None = None
        skipped: int | None = None
        try:
            outcomes = await self._async_outcomes.counts(ref)
        except errors.QueueUnavailable as exc:
            self._outcome_warnings.warning(
                "cannot count async outcomes: %s", exc, ctx={"function": str(ref)}
            )
        else:
            finished = outcomes.by_state
            skipped = outcomes.skipped
        return {
            "accepted": self._async_accepted.get(ref, 0),
            "finished": finished,
            "not_counted": skipped,
        }

    async def _stored_dead_letters(self) -> int:
        """Return how many dead letters the stream stores; raise QueueUnavailable."""
        js = self._queue.layout().js
        with self._queue.translate_errors("count the dead letters"):
            info = await js.stream_info(shared.DEAD_LETTER_STREAM)
        return info.state.messages

    async def _stored_or_none(self) -> int | None:
        """Return the stored dead letters after a redrive or purge, or None.

        The redrive or purge itself succeeded, so a failed count only leaves
        the page's total as it was.
        """
        try:
            return await self._stored_dead_letters()
        except errors.QueueUnavailable as exc:
            logger.warning("cannot count dead letters: %s", exc)
            return None

    def _system_client(self) -> httpx.AsyncClient:
        """Return a client that sends requests to the /system app in process."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self._system_app),
            base_url=_INTERNAL_BASE_URL,
            timeout=self._settings.upstream_timeout_s,
        )

    async def _list_functions(self) -> tuple[list[str], list[dict[str, Any]], str]:
        """Return the namespaces, every function in them, and a problem or ""."""
        async with self._system_client() as client:
            listed = await client.get("/system/namespaces")
            namespaces: list[str] = []
            if listed.status_code == 200 and isinstance(listed.json(), list):
                namespaces = [item for item in listed.json() if isinstance(item, str)]
            functions: list[dict[str, Any]] = []
            # A provider without namespaces lists its functions without the query.
            for namespace in namespaces or [""]:
                params = {"namespace": namespace} if namespace else {}
                response = await client.get("/system/functions", params=params)
                if response.status_code != 200:
                    return (
                        namespaces,
                        functions,
                        f"Cannot list the functions of namespace "
                        f"{namespace or 'default'}: the provider returned "
                        f"{response.status_code}: {response.text.strip()}",
                    )
                for entry in response.json():
                    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                        entry.setdefault("namespace", namespace)
                        functions.append(entry)
        functions.sort(key=lambda entry: (entry["namespace"], entry["name"]))
        return namespaces, functions, ""


def function_metrics(metrics: GatewayMetrics, label: str) -> dict[str, Any]:
    """Return the gateway's `/function/` counters for one function (`name.namespace`).

    The route adds `async_calls` (see `Console._async_counts`). The chart
    samples the route every 2 s and plots the differences between samples,
    in calls per second on one axis:

    * requests that finished through this gateway's `/function/` route
      (`gateway_function_invocation_total`), blue. These are the sync calls,
      and the attempts of async calls that the queue-worker sends through
      the gateway: those of classic functions and of functions without
      reported replicas (docs/async.md);
    * async calls that this gateway accepted (`AsyncAccept.accepted`), green;
    * async calls that a queue-worker finished as succeeded, failed or
      dead-lettered (`gateway.ui.async_outcomes`), purple.

    The red line is the share of errors, from 0 to 100 %: 5xx responses of
    `/function/` plus async calls finished as failed or dead-lettered,
    divided by `/function/` requests plus finished async calls. Every total
    restarts at zero with the gateway, and the chart then takes the new
    total as that interval's count.

    NOTE: an async call whose attempts go through `/function/` counts on
    both sides of the share, so such calls weigh more than sync calls in it.
    """
    by_code: dict[str, float] = {}
    for family in metrics.invocations.collect():
        for sample in family.samples:
            if (
                sample.name.endswith("_total")
                and sample.labels.get("function_name") == label
            ):
                by_code[sample.labels["code"]] = sample.value
    duration_sum_s = 0.0
    for family in metrics.duration.collect():
        for sample in family.samples:
            if (
                sample.name.endswith("_sum")
                and sample.labels.get("function_name") == label
            ):
                duration_sum_s += sample.value
    total = sum(by_code.values())
    server_errors = sum(
        count for code, count in by_code.items() if code.startswith("5")
    )
    return {
        "function": label,
        "at": time.time(),
        "invocations": {code: int(count) for code, count in sorted(by_code.items())},
        "total": int(total),
        "server_errors": int(server_errors),
        "duration_seconds_sum": duration_sum_s,
    }


def parse_after_seq(values: list[str]) -> int:
    """Return the dead-letter page's after_seq, 0 when absent; raise InvalidRequest."""
    if len(values) > 1:
        raise errors.InvalidRequest(
            "Parameter after_seq is given more than once; give it once."
        )
    return dead_letter_api.parse_after_seq(values[0] if values else None)


def _function_ref(request: Request) -> names.FunctionRef:
    name = request.path_params["name"]
    namespace = request.path_params["namespace"]
    try:
        names.validate_label(name)
        names.validate_label(namespace, what="namespace")
    except shared_errors.InvalidFunctionName as exc:
        raise errors.InvalidRequest(str(exc)) from exc
    return names.FunctionRef(name, namespace)


async def _read_body(request: Request, *, max_bytes: int) -> bytes | Response:
    """Return the request body, or a 413 response once it passes `max_bytes`.

    A Content-Length above the cap is rejected before any byte is read.
    """
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        return _body_too_large(request, max_bytes=max_bytes)
    body = bytearray()
    stream = request.stream()
    async for chunk in stream:
        body.extend(chunk)
        if len(body) > max_bytes:
            await limits.discard_rest(stream)
            return _body_too_large(request, max_bytes=max_bytes)
    return bytes(body)


def _body_too_large(request: Request, *, max_bytes: int) -> Response:
    logger.warning(
        "console rejected oversized request body",
        extra={"ctx": {"path": request.url.path, "max_bytes": max_bytes}},
    )
    return JSONResponse(
        {
            "detail": f"The request body exceeds {max_bytes} bytes, the most "
            f"that {request.method} {request.url.path} accepts. Send a smaller "
            "body. To invoke a function with a larger one, call its "
            "/function/NAME or /async-function/NAME route directly (faashub "
            "invoke, faas-cli invoke or curl)."
        },
        status_code=413,
        # The unread rest of the body makes the connection unusable.
        headers={"Connection": "close"},
    )


def _json_error(status: int, detail: str) -> Response:
    headers = {shared.OPENFAAS_INTERNAL: "gateway"} if status >= 500 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
