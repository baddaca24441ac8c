"""JetStream streams and buckets that faashub components share.

* `FAASHUB_CALLS` (stream): queued async calls, written by the gateway and
  consumed by queue-workers. File-backed, work-queue retention: a call stays
  stored until a worker acknowledges it.
* `FAASHUB_DEAD_LETTERS` (stream): calls and callbacks that could not
  complete, kept for a configurable time (see `faashub.dead_letter`).
* `FAASHUB_CALL_STATUS` (key-value): one status record per call
  (see `faashub.call_status`), expiring after a configurable time.
* `FAASHUB_BODIES` (object store): bodies too large for one NATS message.
* `FAASHUB_CRON_LEASES` (key-value): the cron connector's claims on ticks,
  so that one replica fires each tick of a sync schedule.
* `FAASHUB_CRON_LAST_FIRED` (key-value): the last tick each cron function
  fired, kept without expiry, so that a restarted connector can catch up.

Every component calls the `ensure_*` functions it needs at start, so any may
start first. Only the gateway passes its settings, and so owns the limits;
the worker creates a missing stream or bucket with the defaults and never
changes an existing one.
"""

import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from faashub import constants

logger = logging.getLogger(__name__)

# Added to a NATS authorization error, which names no setting by itself.
_TOKEN_HINT = (
    "; the NATS server refused this client's credentials: check the token in "
    "--nats-token-file (FAASHUB_NATS_TOKEN_FILE)"
)

DEFAULT_DUPLICATE_WINDOW_S = 120.0
DEFAULT_DEAD_LETTER_MAX_AGE_S = 14 * 24 * 3600.0
DEFAULT_STATUS_TTL_S = 24 * 3600.0


async def ensure_calls_stream(
    js: JetStreamContext, *, duplicate_window_s: float | None = None
) -> None:
    """Create the calls stream if it is missing; with a window, also apply it."""
    config = jsapi.StreamConfig(
        name=constants.CALLS_STREAM,
        subjects=[f"{constants.CALLS_SUBJECT_PREFIX}.>"],
        retention=jsapi.RetentionPolicy.WORK_QUEUE,
        storage=jsapi.StorageType.FILE,
        duplicate_window=duplicate_window_s or DEFAULT_DUPLICATE_WINDOW_S,
        # The gateway and the status API read queued calls by subject.
        allow_direct=True,
    )
    await _ensure_stream(js, config, update=duplicate_window_s is not None)


async def ensure_dead_letter_stream(
    js: JetStreamContext, *, max_age_s: float | None = None
) -> None:
    """Create the dead-letter stream if it is missing; with a max age, apply it."""
    config = jsapi.StreamConfig(
        name=constants.DEAD_LETTER_STREAM,
        subjects=[f"{constants.DEAD_LETTER_SUBJECT_PREFIX}.>"],
        retention=jsapi.RetentionPolicy.LIMITS,
        storage=jsapi.StorageType.FILE,
        max_age=max_age_s or DEFAULT_DEAD_LETTER_MAX_AGE_S,
        allow_direct=True,
    )
    await _ensure_stream(js, config, update=max_age_s is not None)


async def _ensure_stream(
    js: JetStreamContext, config: jsapi.StreamConfig, *, update: bool
) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            logger.info("created stream %s", config.name)
            return
        except BadRequestError:
            # Another component created it in the meantime.
            pass
    if update:
        await js.update_stream(config)


async def ensure_status_bucket(
    js: JetStreamContext, *, ttl_s: float | None = None
) -> KeyValue:
    """Return the call-status bucket, creating it if it is missing.

    With `ttl_s`, an existing bucket gets that max age too. Direct gets are
    switched on in an existing bucket that lacks them, because the worker
    reads records with batched direct gets.
    """
    try:
        bucket = await js.key_value(constants.STATUS_BUCKET)
    except BucketNotFoundError:
        pass
    else:
        # A key-value bucket is the stream KV_<bucket>; its max age is the TTL.
        info = await js.stream_info(f"KV_{constants.STATUS_BUCKET}")
        config = info.config
        changed = False
        if ttl_s is not None and config.max_age != ttl_s:
            config.max_age = ttl_s
            if config.duplicate_window and config.duplicate_window > ttl_s:
                config.duplicate_window = ttl_s
            changed = True
        if not config.allow_direct:
            # NB: on a replicated bucket, direct gets may be served by a
            # follower that has not applied the latest write yet.
            config.allow_direct = True
            changed = True
        if not changed:
            return bucket
        await js.update_stream(config)
        # The bucket object chose direct or API gets from the old config.
        return await js.key_value(constants.STATUS_BUCKET)
    return await js.create_key_value(
        config=jsapi.KeyValueConfig(
            bucket=constants.STATUS_BUCKET,
            history=1,
            ttl=ttl_s or DEFAULT_STATUS_TTL_S,
            storage=jsapi.StorageType.FILE,
            direct=True,
        )
    )


async def ensure_bodies_bucket(js: JetStreamContext) -> ObjectStore:
    """Return the object store for large bodies, creating it if it is missing."""
    try:
        return await js.object_store(constants.BODIES_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(
            constants.BODIES_BUCKET,
            config=jsapi.ObjectStoreConfig(storage=jsapi.StorageType.FILE),
        )


async def ensure_cron_lease_bucket(js: JetStreamContext, *, ttl_s: float) -> KeyValue:
    """Return the cron connector's tick-claim bucket, creating it if it is missing.

    Claims expire after `ttl_s`; an existing bucket keeps its own TTL.
    """
    try:
        return await js.key_value(constants.CRON_LEASE_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            config=jsapi.KeyValueConfig(
                bucket=constants.CRON_LEASE_BUCKET,
                history=1,
                ttl=ttl_s,
                storage=jsapi.StorageType.FILE,
            )
        )
    except BadRequestError:
        # Another replica created it in the meantime.
        return await js.key_value(constants.CRON_LEASE_BUCKET)


async def ensure_cron_last_fired_bucket(js: JetStreamContext) -> KeyValue:
    """Return the cron connector's last-fired-tick bucket, creating it if missing.

    Its records do not expire: a connector that was down for a week must
    still find them. The connector deletes the record of a removed function.
    """
    try:
        return await js.key_value(constants.CRON_LAST_FIRED_BUCKET)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            config=jsapi.KeyValueConfig(
                bucket=constants.CRON_LAST_FIRED_BUCKET,
                history=1,
                storage=jsapi.StorageType.FILE,
            )
        )
    except BadRequestError:
        # Another replica created it in the meantime.
        return await js.key_value(constants.CRON_LAST_FIRED_BUCKET)


def worker_durable_name(queue: str) -> str:
    """Return the durable consumer name of the workers serving `queue`."""
    return f"{constants.WORKER_DURABLE_PREFIX}-{queue}"


def describe_nats_error(exc: BaseException) -> str:
    """Describe an error of the NATS client, naming the token setting on a refusal."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, nats.errors.AuthorizationError) or (
        "Authorization Violation" in text
    ):
        text += _TOKEN_HINT
    return text
