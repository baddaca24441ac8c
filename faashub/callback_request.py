"""The headers and the signature of a callback request.

The queue-worker posts each finished call's result to the caller's
`X-Callback-Url`, and the gateway posts it again when a dead letter of kind
`callback` is redriven. Both build the request here, so a receiver gets the
same headers from either:

* the function's response headers, except hop-by-hop ones, the ones aiohttp
  computes and the ones listed next;
* `X-Call-Id`, `X-Function-Status` and `X-Function-Name`;
* `X-Duration-Seconds`, `X-Retry` and `X-Retry-Max`, when they are known
  (dead letters that earlier workers stored lack them);
* the call's `traceparent` and `tracestate`, so that the callback belongs to
  the caller's trace;
* `X-Faashub-Signature`, when a signing secret is set.

The signature header is `t=<unix seconds>,v1=<hex>` with one `v1=` entry per
configured secret (the current one first, then the previous one while keys
rotate). Each entry is the HMAC-SHA256, keyed with the secret, of the ASCII
timestamp, a dot and the raw body: `<t>.<body>`. A receiver recomputes it
with its secret, compares in constant time and rejects an old `t`, so a
captured callback cannot be replayed later. docs/callbacks.md shows a
receiver that verifies it.
"""

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from faashub import constants
from faashub.headers import wire_text
from faashub.queued_call import QueuedCall

# W3C Trace Context headers, copied from the queued call to the callback.
TRACE_HEADERS = ("traceparent", "tracestate")

# Function response headers that the callback request does not repeat:
# hop-by-hop ones, the ones aiohttp computes, and the ones set here.
NOT_REPEATED = constants.HOP_BY_HOP | {
    *TRACE_HEADERS,
    "host",
    "content-length",
    constants.CALL_ID.lower(),
    constants.FUNCTION_STATUS.lower(),
    constants.FUNCTION_NAME.lower(),
    constants.DURATION_SECONDS.lower(),
    constants.RETRY.lower(),
    constants.RETRY_MAX.lower(),
    constants.CALLBACK_SIGNATURE.lower(),
}


def callback_headers(
    call: QueuedCall,
    status: int,
    result_headers: Iterable[tuple[str, str]],
    *,
    duration_s: float | None,
    retry: int | None,
    retry_max: int | None,
) -> list[tuple[str, str]]:
    """Return the callback request's headers, repeated names kept apart."""
    headers = [
        (name, value)
        for name, value in result_headers
        if name.lower() not in NOT_REPEATED
    ]
    headers.append((constants.CALL_ID, wire_text(call.call_id)))
    headers.append((constants.FUNCTION_STATUS, str(status)))
    headers.append((constants.FUNCTION_NAME, function_name(call)))
    if duration_s is not None:
        headers.append((constants.DURATION_SECONDS, f"{duration_s:.6f}"))
    if retry is not None:
        headers.append((constants.RETRY, str(retry)))
    if retry_max is not None:
        headers.append((constants.RETRY_MAX, str(retry_max)))
    headers.extend(trace_headers(call))
    return headers


def trace_headers(call: QueuedCall) -> list[tuple[str, str]]:
    """Return the call's `traceparent` and `tracestate` headers, if it has them."""
    found = []
    for name, value in call.headers.items():
        if name.lower() in TRACE_HEADERS:
            found.append((name.lower(), wire_text(value)))
    return found


def function_name(call: QueuedCall) -> str:
    """Return the function as OpenFaaS names it in `X-Function-Name`."""
    if call.namespace == constants.DEFAULT_NAMESPACE:
        return call.function
    return f"{call.function}.{call.namespace}"


def signature_header(body: bytes, secrets: Sequence[str], *, timestamp_s: int) -> str:
    """Return the header value for `body` signed at `timestamp_s` with `secrets`."""
    signed = f"{timestamp_s}.".encode() + body
    entries = [f"t={timestamp_s}"]
    for secret in secrets:
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        entries.append(f"v1={digest}")
    return ",".join(entries)


def signed_headers(
    headers: list[tuple[str, str]],
    body: bytes,
    secrets: Sequence[str],
    *,
    timestamp_s: int,
) -> list[tuple[str, str]]:
    """Return `headers` with the signature header added, if a secret is set."""
    if not secrets:
        return headers
    signature = signature_header(body, secrets, timestamp_s=timestamp_s)
    return [*headers, (constants.CALLBACK_SIGNATURE, signature)]


def secrets_of(current: str, previous: str) -> list[str]:
    """Return the signing secrets that are set, the current one first."""
    return [secret for secret in (current, previous) if secret]
