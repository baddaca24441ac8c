"""Delete messages and change their visibility, in batches where SQS allows.

A message is settled in one of three ways. It is deleted once its outcome
is final. After a temporary failure it is hidden for a backoff with
ChangeMessageVisibility, so SQS hands it out again later. When the connector
gives it back unfinished, it is made visible at once (visibility 0). Deletes wait
`DELETE_LINGER_S` for others to share one DeleteMessageBatch call of up to
10 entries. Visibility extensions and releases go out in
ChangeMessageVisibilityBatch calls.

A batch call whose request fails is tried `SETTLE_ATTEMPTS` times. After
that, or when SQS rejects an entry (an expired receipt handle, for
example), the message is logged and left alone: it comes back after its
visibility timeout, so at worst a function gets it again.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from connectors.sqs import constants
from connectors.sqs.messages import ReceivedMessage
from connectors.sqs.queues import Queue, QueueError, call

logger = logging.getLogger(__name__)


class QueueSettler:
    """Deletes and visibility changes for the messages of one queue."""

    def __init__(
        self,
        client: Any,
        queue: Queue,
        *,
        delete_linger_s: float = constants.DELETE_LINGER_S,
        retry_wait_s: float = 0.5,
    ) -> None:
        self._client = client
        self._queue = queue
        self._delete_linger_s = delete_linger_s
        self._retry_wait_s = retry_wait_s
        self._deletes: list[tuple[ReceivedMessage, asyncio.Future[bool]]] = []
        self._delete_task: asyncio.Task[None] | None = None

    async def delete(self, message: ReceivedMessage) -> bool:
        """Delete `message` in the next batch; return whether SQS deleted it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._deletes.append((message, future))
        if self._delete_task is None or self._delete_task.done():
            self._delete_task = asyncio.create_task(self._flush_deletes())
        # Shielded: a handler cancelled while it waits still gets its
        # message deleted, because its outcome was final.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Send the deletes still waiting for their batch."""
        if self._delete_task is not None:
            await asyncio.wait({self._delete_task})
            self._delete_task = None

    async def change_visibility(self, message: ReceivedMessage, timeout_s: int) -> bool:
        """Hide `message` for `timeout_s` seconds from now; return whether SQS did."""
        try:
            await call(
                self._client.change_message_visibility,
                f"queue {self._queue.name}",
                QueueUrl=self._queue.url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=timeout_s,
            )
        except QueueError as exc:
            logger.warning(
                "visibility change failed; the message returns after its "
                "current visibility timeout",
                extra={"ctx": {**message.context, "error": str(exc)}},
            )
            return False
        return True

    async def change_visibilities(
        self, changes: Sequence[tuple[ReceivedMessage, int]]
    ) -> list[ReceivedMessage]:
        """Set each message's visibility timeout; return the messages SQS changed."""
        changed: list[ReceivedMessage] = []
        for start in range(0, len(changes), constants.MAX_BATCH_ENTRIES):
            chunk = changes[start : start + constants.MAX_BATCH_ENTRIES]
            entries = [
                {
                    "Id": str(index),
                    "ReceiptHandle": message.receipt_handle,
                    "VisibilityTimeout": timeout_s,
                }
                for index, (message, timeout_s) in enumerate(chunk)
            ]
            messages = [message for message, _ in chunk]
            succeeded = await self._batch(
                self._client.change_message_visibility_batch,
                entries,
                messages,
                action="visibility change",
            )
            changed.extend(succeeded)
        return changed

    async def _flush_deletes(self) -> None:
        await asyncio.sleep(self._delete_linger_s)
        while self._deletes:
            chunk = self._deletes[: constants.MAX_BATCH_ENTRIES]
            del self._deletes[: constants.MAX_BATCH_ENTRIES]
            entries = [
                {"Id": str(index), "ReceiptHandle": message.receipt_handle}
                for index, (message, _) in enumerate(chunk)
            ]
            messages = [message for message, _ in chunk]
            deleted = await self._batch(
                self._client.delete_message_batch, entries, messages, action="delete"
            )
            deleted_ids = {id(message) for message in deleted}
            for message, future in chunk:
                if not future.done():
                    future.set_result(id(message) in deleted_ids)

    async def _batch(
        self,
        method: Any,
        entries: list[dict[str, Any]],
        messages: list[ReceivedMessage],
        *,
        action: str,
    ) -> list[ReceivedMessage]:
        """Send one batch call, retrying its request; return the entries that worked."""
        subject = f"queue {self._queue.name}"
        for attempt in range(1, constants.SETTLE_ATTEMPTS + 1):
            try:
                response = await call(
                    method, subject, QueueUrl=self._queue.url, Entries=entries
                )
                break
            except QueueError as exc:
                if attempt == constants.SETTLE_ATTEMPTS:
                    logger.warning(
                        "%s failed; the messages return after their visibility timeout",
                        action,
                        extra={
                            "ctx": {
                                "queue": self._queue.name,
                                "messages": len(messages),
                                "error": str(exc),
                            }
                        },
                    )
                    return []
                await asyncio.sleep(self._retry_wait_s * attempt)
        for failure in response.get("Failed", []):
            message = messages[int(failure["Id"])]
            logger.warning(
                "%s rejected by SQS; the message returns after its visibility timeout",
                action,
                extra={
                    "ctx": {
                        **message.context,
                        "error": f"{failure.get('Code', '')}: "
                        f"{failure.get('Message', '')}",
                    }
                },
            )
        return [messages[int(success["Id"])] for success in response["Successful"]]
