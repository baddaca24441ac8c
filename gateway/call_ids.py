"""Call ids: the check of a caller's X-Call-Id, and new ids for calls without one.

A caller's id must be printable ASCII (0x20 to 0x7E), on the sync and the
async route alike. The id goes back to callers and functions in HTTP headers,
which the gateway writes as Latin-1 and aiohttp (in the queue-worker) writes
as UTF-8, so any other byte would reach one of them changed.

The OpenFaaS contract generates a UUID as the call id when the caller sent
none, and callers may parse it as one. `uuid.uuid4()` reads 16 bytes from
`os.urandom` on every call. That system call was about 4 µs of the accept
path's per-request CPU time (timeit on the 2-core benchmark VM, Python
3.11). `new_call_id` reads the kernel's random bytes 8 KiB at a time instead,
so the ids stay as unpredictable as `uuid4`'s, at about a quarter of the
cost. This module does not speak HTTP and does not decide when an id is
needed.
"""

import os

from gateway import asgi, errors

_BYTES_PER_ID = 16
_IDS_PER_READ = 512
# The variant field of RFC 9562: the two top bits of byte 8 are 10.
_VARIANT_DIGITS = "89ab"

_pool = b""
_position = 0


def check_call_id(call_id: str) -> str:
    """Return a caller's X-Call-Id, read as Latin-1, if it is printable ASCII.

    Raises InvalidRequest naming the value and the rule otherwise.
    """
    if call_id.isascii() and call_id.isprintable():
        return call_id
    raise errors.InvalidRequest(
        f"Invalid X-Call-Id {asgi.shown_header_value(call_id)!r}: a call id may "
        "contain only printable ASCII characters (letters, digits, punctuation "
        "and space), because it is sent back in HTTP headers. Percent-encode "
        "other characters, or send no X-Call-Id to get a generated one."
    )


def new_call_id() -> str:
    """Return a new random UUID (version 4) in its 36-character text form."""
    global _pool, _position
    if _position >= len(_pool):
        _pool = os.urandom(_BYTES_PER_ID * _IDS_PER_READ)
        _position = 0
    digits = _pool[_position : _position + _BYTES_PER_ID].hex()
    _position += _BYTES_PER_ID
    variant = _VARIANT_DIGITS[int(digits[16], 16) & 3]
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{variant}{digits[17:20]}-{digits[20:]}"
    )


def _discard_pool() -> None:
    global _pool, _position
    _pool = b""
    _position = 0


# A forked child must not hand out the ids its parent still holds.
os.register_at_fork(after_in_child=_discard_pool)
