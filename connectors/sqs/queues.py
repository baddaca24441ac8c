"""The SQS client, the configured queues and the translation of SQS errors.

`open_client(settings)` opens one aiobotocore SQS client that the whole
connector shares. Its credentials come from the standard AWS chain
(environment, shared files, container or instance role). The region comes
from `--region` or that chain, and the endpoint from `--endpoint-url` when it
is set.

`resolve_queue` turns a configured entry (URL or name) into a `Queue`: its
URL, name, whether it is FIFO, and the maxReceiveCount of its redrive policy.
Every SQS error crosses into connector code here or in `settle` as a
`QueueError` with a one-line reason. The reason of a missing queue names
the region in use and the setting to fix: `--sqs-queues` for the polled
queues, `--dead-letter-queue` for the dead-letter queue. The source logs
the error with the queue and retries, so a queue that is missing or
forbidden never ends the process.
"""

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from connectors.core.errors import ConnectorError
from connectors.core.outage import one_line
from connectors.sqs import constants
from faashub import __version__, errors
from faashub.connector_settings import SqsConnectorSettings

logger = logging.getLogger(__name__)

# Error codes of a queue that does not exist. The JSON protocol returns the
# first, the older query protocol (and some emulators) the second.
QUEUE_MISSING_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)


class QueueError(ConnectorError):
    """An SQS call failed; the message names the queue and the SQS error."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue the connector polls."""

    url: str
    name: str
    """The last part of the URL; functions subscribe with it."""
    fifo: bool
    max_receive_count: int | None
    """maxReceiveCount of the queue's redrive policy; None without one."""


def queue_name(entry: str) -> str:
    """Return the queue name of a configured entry, a queue URL or a name."""
    if entry.startswith(("http://", "https://")):
        return entry.rstrip("/").rsplit("/", 1)[-1]
    return entry


@contextlib.asynccontextmanager
async def open_client(settings: SqsConnectorSettings) -> AsyncIterator[Any]:
    """Open the SQS client that the connector shares, closed after the block."""
    config = AioConfig(
        user_agent_extra=f"faashub-sqs/{__version__}",
        # Polls, deletes, visibility changes and dead letters of every queue
        # share the pool, so it must not be what limits them.
        max_pool_connections=100,
        # The read timeout must outlast a long poll of wait_time_s.
        read_timeout=settings.wait_time_s + 20,
        connect_timeout=10,
        retries={"mode": "standard", "max_attempts": 3},
    )
    session = aioboto3.Session()
    try:
        client_context = session.client(
            "sqs",
            region_name=settings.region or None,
            endpoint_url=settings.endpoint_url or None,
            config=config,
        )
        async with client_context as client:
            yield client
    except NoRegionError as exc:
        raise errors.SettingsError(
            "No AWS region is configured for SQS: set --region, or AWS_REGION "
            "in the environment."
        ) from exc


async def resolve_queue(
    client: Any,
    entry: str,
    *,
    subject: str = "queue",
    setting: str = constants.SOURCE_QUEUES_SETTING,
) -> Queue:
    """Look a configured queue up; raise QueueError when SQS refuses.

    `subject` starts the error message ("queue" or "dead-letter queue"), and
    a missing queue's error names `setting` as the one to fix.
    """
    name = queue_name(entry)
    if entry.startswith(("http://", "https://")):
        url = entry
    else:
        response = await call(
            client.get_queue_url, f"{subject} {name}", setting=setting, QueueName=name
        )
        url = response["QueueUrl"]
    response = await call(
        client.get_queue_attributes,
        f"{subject} {name}",
        setting=setting,
        QueueUrl=url,
        AttributeNames=["FifoQueue", "RedrivePolicy"],
    )
    attributes: dict[str, str] = response.get("Attributes", {})
    fifo = attributes.get("FifoQueue", "false").lower() == "true" or name.endswith(
        ".fifo"
    )
    return Queue(
        url=url,
        name=name,
        fifo=fifo,
        max_receive_count=_max_receive_count(attributes.get("RedrivePolicy", "")),
    )


def _max_receive_count(redrive_policy: str) -> int | None:
    if not redrive_policy:
        return None
    try:
        policy = json.loads(redrive_policy)
        return int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError):
        logger.warning(
            "unreadable redrive policy ignored",
            extra={"ctx": {"redrive_policy": redrive_policy}},
        )
        return None


async def call(
    method: Any,
    subject: str,
    *,
    setting: str = constants.SOURCE_QUEUES_SETTING,
    **arguments: Any,
) -> dict[str, Any]:
    """Await one SQS API call; raise QueueError naming `subject` when it fails.

    `method` is a bound method of an SQS client, and `arguments` are its
    request parameters. A missing queue's error names `setting` and the
    client's region.
    """
    try:
        response: dict[str, Any] = await method(**arguments)
    except ClientError as exc:
        code = error_code(exc)
        reason = describe(exc, setting=setting, region=_client_region(method))
        raise QueueError(f"{subject}: {reason}", code=code) from exc
    except (BotoCoreError, OSError) as exc:
        raise QueueError(f"{subject}: {describe(exc)}") from exc
    return response


def _client_region(method: Any) -> str:
    """Return the region of the client that `method` is bound to, or ""."""
    client = getattr(method, "__self__", None)
    meta = getattr(client, "meta", None)
    region = getattr(meta, "region_name", None)
    return region if isinstance(region, str) else ""


def error_code(exc: ClientError) -> str:
    """Return the SQS error code of a ClientError, such as AccessDenied."""
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


def describe(
    exc: BaseException,
    *,
    setting: str = constants.SOURCE_QUEUES_SETTING,
    region: str = "",
) -> str:
    """Return a one-line reason for an SQS error, with a hint where one helps.

    A missing queue's reason names `region`, and `setting` as the one to
    fix. Any other error text is cut to one short line, because some
    SQS-compatible servers return a whole HTML page for a failure.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code in QUEUE_MISSING_CODES:
            where = f" in region {region}" if region else ""
            return (
                f"the queue does not exist{where} ({code}); create it, or fix "
                f"{setting} or the region"
            )
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if "AccessDenied" in code or code == "InvalidClientTokenId" or status == 403:
            # Some SQS-compatible servers return a denied JSON request's error
            # as XML, which botocore cannot parse, so only the 403 is left.
            reason = code if message.startswith("<") else f"{code}: {message}"
            return (
                f"access denied ({one_line(reason)}); grant this identity the "
                "sqs:ReceiveMessage, sqs:DeleteMessage, sqs:ChangeMessageVisibility "
                "and sqs:GetQueueAttributes permissions"
            )
        return one_line(f"{code}: {message}" if code else message)
    name, text = exc.__class__.__name__, str(exc)
    if not text:
        return name
    return one_line(text if text.startswith(name) else f"{name}: {text}")
