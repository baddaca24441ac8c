"""The JetStream stream that holds queued calls, shared by gateway and worker.

Both the gateway and the queue-worker call `ensure_calls_stream` at start, so
either may start first. The stream is file-backed and uses work-queue
retention: a call stays stored until a worker acknowledges it.
"""

import logging

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError

from faashub import constants

logger = logging.getLogger(__name__)


async def ensure_calls_stream(
    js: JetStreamContext, *, duplicate_window_s: float = 120.0
) -> None:
    """Create the calls stream, or update the settings faashub owns on it."""
    config = jsapi.StreamConfig(
        name=constants.CALLS_STREAM,
        subjects=[f"{constants.CALLS_SUBJECT_PREFIX}.>"],
        retention=jsapi.RetentionPolicy.WORK_QUEUE,
        storage=jsapi.StorageType.FILE,
        duplicate_window=duplicate_window_s,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # The stream exists with other settings: keep its data, apply ours.
        await js.update_stream(config)
    logger.debug("calls stream %s is ready", constants.CALLS_STREAM)


def worker_durable_name(queue: str) -> str:
    """Return the durable consumer name of the workers serving `queue`."""
    return f"{constants.WORKER_DURABLE_PREFIX}-{queue}"
