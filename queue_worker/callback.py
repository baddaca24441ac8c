"""Post a finished call's result to the caller's `X-Callback-Url`.

The callback request follows the OpenFaaS queue-worker contract: `POST` with
the function's response body and the function's response headers (minus
hop-by-hop ones, `Content-Length` and `Host`), with these set on top:

* `X-Call-Id`: the call id;
* `X-Function-Status`: the function's HTTP status, or the worker's 503/504;
* `X-Function-Name`: `name`, or `name.namespace` outside `openfaas-fn`;
* `X-Duration-Seconds`: seconds, with 6 decimals, from the moment the worker
  started the call to the function's response.

Redirects are not followed. A failed callback is logged and reported to the
caller of `post_callback`; it is neither retried nor stored.
"""

import logging

import aiohttp
import yarl

from faashub import constants
from faashub.queued_call import QueuedCall
from queue_worker.invoke import FunctionResult, wire_text

logger = logging.getLogger(__name__)

# Function response headers that the callback request does not repeat:
# hop-by-hop ones, the ones aiohttp computes, and the ones set below.
_NOT_FORWARDED = constants.HOP_BY_HOP | {
    "host",
    "content-length",
    constants.CALL_ID.lower(),
    constants.FUNCTION_STATUS.lower(),
    constants.FUNCTION_NAME.lower(),
    constants.DURATION_SECONDS.lower(),
}


async def post_callback(
    session: aiohttp.ClientSession,
    call: QueuedCall,
    result: FunctionResult,
    *,
    duration_s: float,
    http_timeout: aiohttp.ClientTimeout,
) -> int | None:
    """Post `result` to `call.callback_url`.

    Return the callback's HTTP status, or None when no response arrived.
    Failures (no response, or a 5xx status) are logged as warnings here, and
    this coroutine raises only when it is cancelled.
    """
    headers = callback_headers(call, result, duration_s=duration_s)
    try:
        async with session.post(
            call.callback_url,
            data=result.body,
            headers=headers,
            timeout=http_timeout,
            allow_redirects=False,
        ) as response:
            await response.read()
            status = response.status
    except TimeoutError:
        _warn_failed(call, f"timed out after {http_timeout.total:g} s")
        return None
    except aiohttp.InvalidURL:
        # The message of InvalidURL repeats the URL, query string included.
        _warn_failed(call, "invalid callback URL")
        return None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # ValueError covers a header value that aiohttp refuses to send.
        _warn_failed(call, str(exc) or type(exc).__name__)
        return None
    if status >= 500:
        _warn_failed(call, f"status {status}")
    return status


def callback_headers(
    call: QueuedCall, result: FunctionResult, *, duration_s: float
) -> list[tuple[str, str]]:
    """Return the callback request's headers, repeated names kept apart."""
    headers = [
        (name, value)
        for name, value in result.headers
        if name.lower() not in _NOT_FORWARDED
    ]
    headers.append((constants.CALL_ID, wire_text(call.call_id)))
    headers.append((constants.FUNCTION_STATUS, str(result.status)))
    headers.append((constants.FUNCTION_NAME, function_name(call)))
    headers.append((constants.DURATION_SECONDS, f"{duration_s:.6f}"))
    return headers


def function_name(call: QueuedCall) -> str:
    """Return the function as OpenFaaS names it in `X-Function-Name`."""
    if call.namespace == constants.DEFAULT_NAMESPACE:
        return call.function
    return f"{call.function}.{call.namespace}"


def loggable_url(url: str) -> str:
    """Return `url` without credentials, query and fragment, which may hold secrets."""
    try:
        parsed = yarl.URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        # Cut by hand what could be credentials, a query or a fragment.
        scheme, separator, rest = url.rpartition("://")
        rest = rest.rpartition("@")[2].partition("?")[0].partition("#")[0]
        return scheme + separator + rest


def _warn_failed(call: QueuedCall, reason: str) -> None:
    # NOTE: the call is acknowledged even when its callback fails, so the
    # result is lost. Callback retries and dead-lettering come with the retry
    # work.
    logger.warning(
        "callback failed: %s",
        reason,
        extra={
            "ctx": {
                "function": str(call.ref),
                "call_id": call.call_id,
                "callback_url": loggable_url(call.callback_url),
            }
        },
    )
