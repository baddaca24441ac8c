"""Request bodies too large for one NATS message, kept in a JetStream object store.

The gateway stores such a body in the `FAASHUB_BODIES` object store under the
call's key, and queues the call with an empty body and `body_ref` naming the
object. The worker reads the object when it runs the call, and deletes it
once the call is final and not dead-lettered. A dead letter keeps its body
until it is redriven or purged, which deletes the object here.

An accept retried with the same X-Call-Id finds the object of the first
accept. When its digest matches, the object is kept as it is, so a call that
is already queued never sees its body rewritten; a different body under the
same id replaces it.
"""

import base64
import hashlib
import logging

import nats.errors
import nats.js.errors
from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.object_store import ObjectStore

from gateway import errors

logger = logging.getLogger(__name__)

# nats-py stores an object's digest as this prefix and the URL-safe base64 of
# its SHA-256, as the NATS object store specification (ADR-20) writes it.
_DIGEST_PREFIX = "SHA-256="
# Chunk size of stored bodies: nats-py's default, unless the server's
# max_payload is smaller, in which case each chunk leaves this much room for
# the message's own headers.
_MAX_CHUNK_BYTES = 128 * 1024
_CHUNK_HEADROOM_BYTES = 1024


def body_digest(body: bytes) -> str:
    """Return the digest the object store records for `body`."""
    return (
        _DIGEST_PREFIX
        + base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
    )


async def store_body(
    bodies: ObjectStore, name: str, body: bytes, *, max_payload_bytes: int
) -> bool:
    """Store `body` as object `name`; return True if the object did not exist.

    An existing object with the same size and digest is left untouched.
    Raises QueueUnavailable when the object store fails.
    """
    chunk_bytes = min(_MAX_CHUNK_BYTES, max_payload_bytes - _CHUNK_HEADROOM_BYTES)
    try:
        try:
            existing = await bodies.get_info(name)
        except nats.js.errors.NotFoundError:
            existing = None
        if (
            existing is not None
            and existing.size == len(body)
            and existing.digest == body_digest(body)
        ):
            return False
        await bodies.put(
            name,
            body,
            meta=ObjectMeta(
                name=name, options=ObjectMetaOptions(max_chunk_size=chunk_bytes)
            ),
        )
    except nats.errors.Error as exc:
        raise errors.QueueUnavailable(
            f"The async queue is unavailable: storing the {len(body)}-byte body in "
            f"the object store failed ({exc!r}). Nothing was queued. Retry later "
            "with the same X-Call-Id."
        ) from exc
    return existing is None


async def read_body(bodies: ObjectStore, name: str) -> bytes:
    """Return the body stored as object `name`.

    Raises CallNotFound when the object is missing and QueueUnavailable when
    the object store fails.
    """
    try:
        result = await bodies.get(name)
    except nats.js.errors.NotFoundError as exc:
        raise errors.CallNotFound(
            f"The stored body {name!r} is missing from the object store."
        ) from exc
    except nats.errors.Error as exc:
        raise errors.QueueUnavailable(
            f"Reading the stored body {name!r} from the object store failed "
            f"({exc!r}). Retry later."
        ) from exc
    return bytes(result.data or b"")


async def delete_body(bodies: ObjectStore, name: str) -> bool:
    """Delete object `name`; return False if it did not exist.

    Raises QueueUnavailable when the object store fails.
    """
    try:
        await bodies.delete(name)
    except nats.js.errors.NotFoundError:
        return False
    except nats.errors.Error as exc:
        raise errors.QueueUnavailable(
            f"Deleting the stored body {name!r} from the object store failed "
            f"({exc!r}). Retry later."
        ) from exc
    logger.debug("deleted stored body", extra={"ctx": {"object": name}})
    return True
