"""The `X-Faashub-Signature` header that lets a receiver trust a callback.

The header is `t=<unix seconds>,v1=<hex>` with one `v1=` entry per
configured secret (the current one first, then the previous one while keys
rotate). Each entry is the HMAC-SHA256, keyed with the secret, of the ASCII
timestamp, a dot and the raw body: `<t>.<body>`. A receiver recomputes it
with its secret, compares in constant time and rejects an old `t`, so a
captured callback cannot be replayed later. docs/callbacks.md shows a
receiver that verifies it.
"""

import hashlib
import hmac
from collections.abc import Sequence


def signature_header(body: bytes, secrets: Sequence[str], *, timestamp_s: int) -> str:
    """Return the header value for `body` signed at `timestamp_s` with `secrets`."""
    signed = f"{timestamp_s}.".encode() + body
    entries = [f"t={timestamp_s}"]
    for secret in secrets:
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        entries.append(f"v1={digest}")
    return ",".join(entries)
