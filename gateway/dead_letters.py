"""Dead letters as the gateway serves them: scan, select, redrive and purge.

The worker writes dead letters into the `FAASHUB_DEAD_LETTERS` stream (see
`faashub.dead_letter`); this module reads and removes them for the API in
`gateway.dead_letter_api`:

* a scan walks the stream with an ephemeral pull consumer that acknowledges
  nothing, filtered by subject (queue, namespace, function, call key), and
  fetches a batch at a time, so it never keeps the whole stream in memory.
  Reason, kind and time filters are applied to each message. Scans go from
  the oldest to the newest, and stop at the last message that was stored
  when they began, so a call redriven and dead-lettered again is not
  redriven twice by the same request;
* a redrive of a `call` dead letter queues a new call with a new id, which
  records the old one in `original_call_id`, and deletes the dead letter
  once JetStream has acknowledged the new call. A large body is copied to an
  object under the new call's key, so the new call and the old dead letter
  never share an object. A redrive of a `callback` dead letter posts the
  stored result to the callback URL again, and deletes the dead letter when
  the receiver responds 2xx; the function does not run again;
* a purge deletes dead letters, and the large body each refers to once no
  other dead letter or queued call uses it.

A redrive or purge selects by call ids (every dead letter of each id), by a
filter, all, or by stream sequences. A selection by sequences reads each
message with a direct get, so it acts on exactly the dead letters given even
when one call id has several.

Every operation reports each dead letter it touched, and why any failed. A
selected sequence that the stream no longer stores, and a selected call id
with no dead letter, are reported as not found.
"""

import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Any

import aiohttp
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from faashub import callback_request, dead_letter
from faashub import constants as shared
from faashub import errors as shared_errors
from faashub.call_status import CallStatus, status_key
from faashub.callback_guard import CallbackGuard, CallbackRefused, literal_refusal
from faashub.dead_letter import DeadLetter
from faashub.names import FunctionRef
from faashub.queued_call import QueuedCall, call_key
from gateway import constants, errors, large_bodies
from gateway.async_calls import find_queued
from gateway.call_queue import CallQueue
from gateway.function_lookup import FunctionLookup

logger = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
# The error of a report item whose dead letter the stream no longer stores.
NOT_FOUND = "not found"
# Seconds a fetch waits when the scan expects more messages; JetStream
# returns them at once when they are there.
_FETCH_TIMEOUT_S = 2.0
# Dead-letter reasons of a callback, which a delivered redrive clears from
# the call's status record.
_CALLBACK_REASONS = frozenset(
    {dead_letter.REASON_CALLBACK_FAILED, dead_letter.REASON_CALLBACK_REFUSED}
)
# Headers of a stored function result that a redriven callback does not
# repeat: hop-by-hop ones, the ones aiohttp computes, and the ones set anew.
# Request headers that the worker sets from a call's metadata when it runs it.
_SET_BY_WORKER = frozenset({shared.CALL_ID.lower(), shared.START_TIME.lower()})


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Conditions on dead letters; None matches any value."""

    function: str | None = None
    namespace: str | None = None
    queue: str | None = None
    reason: str | None = None
    kind: str | None = None
    since_ns: int | None = None
    """Dead-lettered at or after this Unix time in ns."""
    until_ns: int | None = None
    """Dead-lettered at or before this Unix time in ns."""

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)

    def subject(self) -> str:
        return dead_letter.dead_letter_filter_subject(
            queue=self.queue or "*",
            namespace=self.namespace or "*",
            function=self.function or "*",
        )

    def matches(self, letter: DeadLetter) -> bool:
        at_ns = letter.dead_lettered_at_ns
        call = letter.call
        return (
            (self.function is None or call.function == self.function)
            and (self.namespace is None or call.namespace == self.namespace)
            and (self.queue is None or call.queue == self.queue)
            and (self.reason is None or letter.reason == self.reason)
            and (self.kind is None or letter.kind == self.kind)
            and (self.since_ns is None or at_ns >= self.since_ns)
            and (self.until_ns is None or at_ns <= self.until_ns)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """The dead letters a redrive or purge acts on: ids, seqs, a filter, or all.

    With call ids, a filter narrows them further (the API uses its kind).
    Seqs select single dead letters and combine with nothing else.
    """

    call_ids: tuple[str, ...] = ()
    seqs: tuple[int, ...] = ()
    """Stream sequences of single dead letters."""
    filter: DeadLetterFilter | None = None
    all: bool = False

    def __post_init__(self) -> None:
        if self.seqs and (self.call_ids or self.filter is not None or self.all):
            raise ValueError(
                "A selection by seqs cannot also have call ids, a filter or all."
            )


@dataclasses.dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter with its place in the stream."""

    seq: int
    stored_at: datetime.datetime
    letter: DeadLetter


@dataclasses.dataclass
class Report:
    """The outcome of a redrive or purge, one item per selected dead letter."""

    done: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class DeadLetterStore:
    """Reads, redrives and purges dead letters through the gateway's NATS connection."""

    def __init__(self, queue: CallQueue) -> None:
        self._queue = queue
        self._session: aiohttp.ClientSession | None = None
        self._lookup: FunctionLookup | None = None
        self._callback_session: aiohttp.ClientSession | None = None
        self._callback_guard = CallbackGuard()
        self._signing_secrets: list[str] = []

    def bind(
        self,
        *,
        session: aiohttp.ClientSession,
        lookup: FunctionLookup,
        callback_session: aiohttp.ClientSession,
        callback_guard: CallbackGuard,
        signing_secrets: list[str],
    ) -> None:
        """Give the store its HTTP sessions and the function lookup, once started.

        `callback_session` comes from `faashub.callback_guard.new_callback_session`
        with `callback_guard`, so a redriven callback reaches only addresses
        that the queue-worker's callbacks may reach. `signing_secrets` sign
        redriven callbacks as the queue-worker signs its own.
        """
        self._session = session
        self._lookup = lookup
        self._callback_session = callback_session
        self._callback_guard = callback_guard
        self._signing_secrets = signing_secrets

    def unbind(self) -> None:
        self._session = None
        self._lookup = None
        self._callback_session = None

    async def list_matching(
        self, selected: DeadLetterFilter, *, limit: int, after_seq: int = 0
    ) -> tuple[list[StoredDeadLetter], bool]:
        """Return up to `limit` matching dead letters, oldest first.

        The flag returned with them tells whether more match after them.
        """
        found: list[StoredDeadLetter] = []
        with self._queue.translate_errors("list dead letters"):
            async with aclosing(
                self._scan_filter(selected, after_seq=after_seq)
            ) as stored_letters:
                async for stored in stored_letters:
                    if len(found) == limit:
                        return found, True
                    found.append(stored)
        return found, False

    async def get(self, call_id: str, *, kind: str | None = None) -> StoredDeadLetter:
        """Return the newest dead letter of `call_id` (of `kind` if given).

        Raises CallNotFound when there is none, QueueUnavailable when NATS fails.
        """
        newest: StoredDeadLetter | None = None
        with self._queue.translate_errors(f"read the dead letter of {call_id!r}"):
            async with aclosing(self._scan_ids([call_id])) as stored_letters:
                async for stored in stored_letters:
                    if kind is None or stored.letter.kind == kind:
                        newest = stored
        if newest is None:
            kind_text = f" of kind {kind!r}" if kind else ""
            raise errors.CallNotFound(
                f"No dead letter{kind_text} for call id {call_id!r}; 'GET "
                f"{constants.DEAD_LETTERS_PATH}' lists the dead letters there are."
            )
        return newest

    async def redrive(self, selection: Selection) -> Report:
        """Redrive every selected dead letter; see the module docstring."""
        report = Report()
        with self._queue.translate_errors("redrive dead letters"):
            async with aclosing(
                self._scan_selection(selection, report)
            ) as stored_letters:
                async for stored in stored_letters:
                    await self._redrive_one(stored, report)
        report.failed.extend(_not_found_ids(selection, report))
        logger.info(
            "redrove dead letters",
            extra={"ctx": {"redriven": len(report.done), "failed": len(report.failed)}},
        )
        return report

    async def purge(self, selection: Selection) -> Report:
        """Delete every selected dead letter and the large bodies they alone use."""
        report = Report()
        with self._queue.translate_errors("purge dead letters"):
            async with aclosing(
                self._scan_selection(selection, report)
            ) as stored_letters:
                async for stored in stored_letters:
                    await self._purge_one(stored, report)
        report.failed.extend(_not_found_ids(selection, report))
        logger.info(
            "purged dead letters",
            extra={"ctx": {"purged": len(report.done), "failed": len(report.failed)}},
        )
        return report

    # Redrive and purge of one dead letter.

    async def _redrive_one(self, stored: StoredDeadLetter, report: Report) -> None:
        item = _item(stored)
        try:
            if stored.letter.kind == "callback":
                status = await self._post_callback_again(stored.letter)
                await self._record_callback_delivered(stored.letter, status)
            else:
                item["new_call_id"] = await self._queue_again(stored.letter)
        except errors.GatewayError as exc:
            report.failed.append({**item, "error": str(exc)})
            logger.warning(
                "cannot redrive dead letter: %s",
                exc,
                extra={"ctx": _context(stored)},
            )
            return
        warning = await self._delete_letter(stored)
        if warning:
            item["warning"] = warning
        report.done.append(item)
        logger.info(
            "redrove dead letter",
            extra={"ctx": {**_context(stored), "new_call_id": item.get("new_call_id")}},
        )

    async def _queue_again(self, letter: DeadLetter) -> str:
        """Queue a new call from a `call` dead letter and return its id."""
        old = letter.call
        if self._lookup is None:
            raise errors.QueueUnavailable("The gateway is starting; retry in a moment.")

        # A call to a function that is gone would only be dead-lettered again.
        if await self._lookup.find(FunctionRef(old.function, old.namespace)) is None:
            raise errors.FunctionNotFound(
                f"Function {old.function!r} not found in namespace {old.namespace!r}. "
                "Deploy it again before redriving its calls, or purge them."
            )
        body = old.body
        if old.body_ref:
            layout = self._queue.layout()
            body = await large_bodies.read_body(layout.bodies, old.body_ref)

        # The same request under a new id, to run at once. Calls stored by
        # older gateways repeat the old id in X-Call-Id and X-Start-Time,
        # which the worker sets from the new call's metadata instead.
        accepted_at_ns = time.time_ns()
        new_call_id = str(uuid.uuid4())
        headers = {
            name: value
            for name, value in old.headers.items()
            if name.lower() not in _SET_BY_WORKER
        }
        new = dataclasses.replace(
            old,
            call_id=new_call_id,
            original_call_id=old.call_id,
            accepted_at_ns=accepted_at_ns,
            not_before_ns=0,
            headers=headers,
            body=body,
            body_ref="",
            body_size=0,
        )
        # The queue stores a large body again, under the new call's key.
        await self._queue.publish(new)
        return new_call_id

    async def _record_callback_delivered(self, letter: DeadLetter, status: int) -> None:
        """Record the delivered callback in the call's status record.

        The record then shows the receiver's status, as it would have after a
        first delivery, and loses a callback dead-letter reason. A failed or
        dead-lettered call keeps its own reason, such as `rejected`, because
        the record has room for one reason and the call's outcome is unchanged. A
        record that is gone (past status_ttl_s) or that changes meanwhile is
        left as it is, with a warning: the callback was delivered all the same.
        """
        call_id = letter.call.call_id
        context = {"call_id": call_id, "function": str(letter.call.ref)}
        try:
            bucket = self._queue.layout().status
            entry = await bucket.get(status_key(call_id))
            record = CallStatus.from_json(entry.value or b"")
            reason = record.dead_letter_reason
            if reason in _CALLBACK_REASONS:
                reason = ""
            if reason == record.dead_letter_reason and record.callback_status == status:
                return
            updated = dataclasses.replace(
                record,
                dead_letter_reason=reason,
                callback_status=status,
                updated_at_ns=time.time_ns(),
            )
            await bucket.update(
                status_key(call_id), updated.to_json(), last=entry.revision
            )
        except nats.js.errors.KeyNotFoundError:
            return
        except (
            nats.errors.Error,
            TimeoutError,
            errors.GatewayError,
            shared_errors.InvalidQueuedCall,
        ) as exc:
            logger.warning(
                "callback redriven, but its status record not updated: %s",
                str(exc) or type(exc).__name__,
                extra={"ctx": context},
            )

    async def _post_callback_again(self, letter: DeadLetter) -> int:
        """Post the stored result to the callback URL; return the receiver's status."""
        call = letter.call
        # A callback-refused letter is posted too: the gateway's own guard
        # checks the address again, so one that an operator allowed since
        # is delivered, and one still denied is refused below.
        if not call.callback_url or self._callback_session is None:
            raise errors.InvalidRequest(
                "The dead letter has no callback URL to post to."
            )
        refusal = literal_refusal(self._callback_guard, call.callback_url)
        if refusal:
            raise errors.InvalidRequest(
                f"The gateway does not post this callback: {refusal}. Purge the "
                "dead letter instead."
            )

        headers = callback_request.signed_headers(
            callback_request.callback_headers(
                call,
                letter.result_status or 0,
                letter.result_headers.items(),
                duration_s=letter.duration_s,
                retry=letter.retry,
                retry_max=letter.retry_max,
            ),
            letter.result_body,
            self._signing_secrets,
            timestamp_s=int(time.time()),
        )
        # NB: error messages leave the URL out, because its query may hold a
        # token and the messages are logged and returned to the caller.
        try:
            async with self._callback_session.post(
                call.callback_url,
                data=letter.result_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=constants.CALLBACK_REDRIVE_TIMEOUT_S
                ),
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError as exc:
            raise errors.ProviderUnavailable(
                "The callback POST timed out after "
                f"{constants.CALLBACK_REDRIVE_TIMEOUT_S:g} s; redrive it again later."
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise errors.InvalidRequest(
                "The callback URL is not valid, so it cannot be posted to. Purge "
                "the dead letter instead."
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, CallbackRefused):
                raise errors.InvalidRequest(
                    f"The gateway does not post this callback: {exc.os_error}. "
                    "Purge the dead letter instead."
                ) from exc
            raise errors.ProviderUnavailable(
                f"The callback POST failed ({str(exc) or type(exc).__name__}); "
                "redrive it again once the receiver is up."
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise errors.ProviderUnavailable(
                f"The callback POST failed ({str(exc) or type(exc).__name__}); "
                "redrive it again once the receiver is up."
            ) from exc
        if not 200 <= status < 300:
            raise errors.ProviderUnavailable(
                f"The callback receiver returned status {status}; redrive it again "
                "once it accepts the result."
            )
        return status

    async def _purge_one(self, stored: StoredDeadLetter, report: Report) -> None:
        item = _item(stored)
        warning = await self._delete_letter(stored)
        if warning:
            report.failed.append({**item, "error": warning})
            return
        report.done.append(item)
        logger.debug("purged dead letter", extra={"ctx": _context(stored)})

    async def _delete_letter(self, stored: StoredDeadLetter) -> str:
        """Delete a dead letter and release its body; return a warning or ""."""
        layout = self._queue.layout()
        try:
            await layout.js.delete_msg(shared.DEAD_LETTER_STREAM, stored.seq)
        except nats.js.errors.APIError as exc:
            # Gone already, for example purged by a request running beside this
            # one; the result is the same.
            logger.debug(
                "dead letter already deleted",
                extra={"ctx": {**_context(stored), "error": repr(exc)}},
            )
        except nats.errors.Error as exc:
            return f"The dead letter could not be deleted ({exc!r}); purge it later."
        call = stored.letter.call
        if call.body_ref and not await self._body_in_use(call):
            await large_bodies.delete_body(layout.bodies, call.body_ref)
        return ""

    async def _body_in_use(self, call: QueuedCall) -> bool:
        """Tell whether another dead letter or a queued call has the call's key."""
        js = self._queue.layout().js
        subject = dead_letter.dead_letter_filter_subject(key=call.key)
        try:
            await js.get_last_msg(shared.DEAD_LETTER_STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return await find_queued(self._queue, call.call_id) is not None
        return True

    # Scans.

    async def _scan_selection(
        self, selection: Selection, report: Report
    ) -> AsyncGenerator[StoredDeadLetter, None]:
        """Yield the selected dead letters, and report the selected seqs it skips."""
        if selection.seqs:
            async with aclosing(self._read_seqs(selection.seqs, report)) as by_seqs:
                async for stored in by_seqs:
                    yield stored
            return
        if not selection.call_ids:
            async with aclosing(
                self._scan_filter(selection.filter or DeadLetterFilter())
            ) as stored_letters:
                async for stored in stored_letters:
                    yield stored
            return
        # Call ids, narrowed by the filter when there is one.
        selected = selection.filter or DeadLetterFilter()
        async with aclosing(self._scan_ids(list(selection.call_ids))) as by_ids:
            async for stored in by_ids:
                if selected.matches(stored.letter):
                    yield stored

    async def _read_seqs(
        self, seqs: tuple[int, ...], report: Report
    ) -> AsyncGenerator[StoredDeadLetter, None]:
        """Yield the dead letter stored at each of `seqs`, in the order given.

        A seq with no message, or one that is not a readable dead letter, goes
        to `report.failed` instead.
        """
        for seq in dict.fromkeys(seqs):
            stored = await self._read_seq(seq)
            if isinstance(stored, str):
                report.failed.append(
                    {"call_id": None, "kind": None, "seq": seq, "error": stored}
                )
            else:
                yield stored

    async def _read_seq(self, seq: int) -> StoredDeadLetter | str:
        """Return the dead letter at `seq`, or the error to report for it."""
        js = self._queue.layout().js
        try:
            message = await js.get_msg(shared.DEAD_LETTER_STREAM, seq, direct=True)
        except nats.js.errors.NotFoundError:
            logger.debug("selected dead letter not found", extra={"ctx": {"seq": seq}})
            return NOT_FOUND
        prefix = f"{shared.DEAD_LETTER_SUBJECT_PREFIX}."
        if not (message.subject or "").startswith(prefix):
            logger.warning(
                "selected message is not a dead letter",
                extra={"ctx": {"seq": seq, "subject": message.subject}},
            )
            return f"not a dead letter: the message's subject is {message.subject!r}"
        try:
            letter = DeadLetter.from_nats(message.headers, message.data or b"")
        except shared_errors.InvalidQueuedCall as exc:
            logger.warning(
                "selected dead letter is unreadable",
                extra={"ctx": {"seq": seq, "error": str(exc)}},
            )
            return f"not a readable dead letter: {exc}"
        stored_at = message.time or datetime.datetime.fromtimestamp(0, tz=datetime.UTC)
        return StoredDeadLetter(seq=seq, stored_at=stored_at, letter=letter)

    async def _scan_ids(
        self, call_ids: list[str]
    ) -> AsyncGenerator[StoredDeadLetter, None]:
        wanted = set(call_ids)
        keys = sorted({call_key(call_id) for call_id in wanted})
        last_seq = await self._last_seq()
        size = constants.DEAD_LETTER_IDS_PER_SCAN
        for start in range(0, len(keys), size):
            subjects = [
                dead_letter.dead_letter_filter_subject(key=key)
                for key in keys[start : start + size]
            ]
            async with aclosing(
                self._scan(subjects, last_seq=last_seq, start=_start_config())
            ) as stored_letters:
                async for stored in stored_letters:
                    # NB: two ids may share a digest key only in theory, but the
                    # key of an id is not the id, so compare the ids themselves.
                    if stored.letter.call.call_id in wanted:
                        yield stored

    async def _scan_filter(
        self, selected: DeadLetterFilter, *, after_seq: int = 0
    ) -> AsyncGenerator[StoredDeadLetter, None]:
        slack_ns = int(constants.DEAD_LETTER_TIME_SLACK_S * _NS_PER_S)
        start = _start_config(
            after_seq=after_seq,
            from_ns=None if selected.since_ns is None else selected.since_ns - slack_ns,
        )
        stop_after_ns = None
        if selected.until_ns is not None:
            stop_after_ns = selected.until_ns + slack_ns
        last_seq = await self._last_seq()
        async with aclosing(
            self._scan([selected.subject()], last_seq=last_seq, start=start)
        ) as stored_letters:
            async for stored in stored_letters:
                if stop_after_ns is not None and _ns(stored.stored_at) > stop_after_ns:
                    return
                if selected.matches(stored.letter):
                    yield stored

    async def _last_seq(self) -> int:
        js = self._queue.layout().js
        info = await js.stream_info(shared.DEAD_LETTER_STREAM)
        return info.state.last_seq

    async def _scan(
        self, subjects: list[str], *, last_seq: int, start: dict[str, Any]
    ) -> AsyncGenerator[StoredDeadLetter, None]:
        """Yield the dead letters stored on `subjects` up to `last_seq`."""
        if last_seq == 0:
            return
        js = self._queue.layout().js
        config = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=constants.DEAD_LETTER_SCAN_INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
            **start,
        )
        if len(subjects) == 1:
            config.filter_subject = subjects[0]
        else:
            config.filter_subjects = subjects
        info = await js.add_consumer(shared.DEAD_LETTER_STREAM, config)
        consumer = info.name
        try:
            if not info.num_pending:
                return
            subscription = await js.pull_subscribe_bind(
                consumer=consumer, stream=shared.DEAD_LETTER_STREAM
            )
            try:
                async for message in _fetch_all(subscription):
                    metadata = message.metadata
                    if metadata.sequence.stream > last_seq:
                        return
                    stored = _parse(message)
                    if stored is not None:
                        yield stored
                    if metadata.num_pending == 0:
                        return
            finally:
                await subscription.unsubscribe()
        finally:
            await _delete_consumer(js, consumer)


def _start_config(*, after_seq: int = 0, from_ns: int | None = None) -> dict[str, Any]:
    """Return the consumer settings that start a scan after a sequence or at a time."""
    if after_seq:
        return {
            "deliver_policy": jsapi.DeliverPolicy.BY_START_SEQUENCE,
            "opt_start_seq": after_seq + 1,
        }
    if from_ns is not None:
        return {
            "deliver_policy": jsapi.DeliverPolicy.BY_START_TIME,
            "opt_start_time": datetime.datetime.fromtimestamp(
                max(from_ns, 0) / _NS_PER_S, tz=datetime.UTC
            ),
        }
    return {"deliver_policy": jsapi.DeliverPolicy.ALL}


async def _fetch_all(
    subscription: JetStreamContext.PullSubscription,
) -> AsyncGenerator[Msg, None]:
    while True:
        try:
            messages: list[Msg] = await subscription.fetch(
                constants.DEAD_LETTER_SCAN_BATCH, timeout=_FETCH_TIMEOUT_S
            )
        except nats.errors.TimeoutError:
            # Nothing more arrived: the rest was deleted meanwhile.
            return
        for message in messages:
            yield message


async def _delete_consumer(js: JetStreamContext, consumer: str) -> None:
    # The consumer also expires by itself after DEAD_LETTER_SCAN_INACTIVE_S.
    try:
        await js.delete_consumer(shared.DEAD_LETTER_STREAM, consumer)
    except nats.errors.Error as exc:
        logger.debug(
            "cannot delete scan consumer; it expires by itself",
            extra={"ctx": {"consumer": consumer, "error": repr(exc)}},
        )


def _parse(message: Msg) -> StoredDeadLetter | None:
    metadata = message.metadata
    try:
        letter = DeadLetter.from_nats(message.headers, message.data)
    except shared_errors.InvalidQueuedCall as exc:
        logger.warning(
            "skipped unreadable dead letter",
            extra={
                "ctx": {
                    "seq": metadata.sequence.stream,
                    "subject": message.subject,
                    "error": str(exc),
                }
            },
        )
        return None
    return StoredDeadLetter(
        seq=metadata.sequence.stream, stored_at=metadata.timestamp, letter=letter
    )


def _not_found_ids(selection: Selection, report: Report) -> list[dict[str, Any]]:
    """Return a failure item for each selected call id that `report` lacks.

    A call id with no dead letter (mistyped, or redriven or purged by another
    request) selects nothing, so without these items it would look done.
    """
    touched = {item["call_id"] for item in (*report.done, *report.failed)}
    return [
        {"call_id": call_id, "kind": None, "seq": None, "error": NOT_FOUND}
        for call_id in selection.call_ids
        if call_id not in touched
    ]


def _ns(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * _NS_PER_S)


def _item(stored: StoredDeadLetter) -> dict[str, Any]:
    return {
        "call_id": stored.letter.call.call_id,
        "kind": stored.letter.kind,
        "seq": stored.seq,
    }


def _context(stored: StoredDeadLetter) -> dict[str, object]:
    call = stored.letter.call
    return {
        "function": f"{call.function}.{call.namespace}",
        "call_id": call.call_id,
        "kind": stored.letter.kind,
        "seq": stored.seq,
    }


def known_reasons() -> Iterator[str]:
    """Yield the reasons the worker dead-letters with (`faashub.dead_letter`)."""
    for name, value in vars(dead_letter).items():
        if name.startswith("REASON_") and isinstance(value, str):
            yield value
