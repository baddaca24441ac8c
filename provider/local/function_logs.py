"""The function log store: each function's output lines, with timestamps, on disk.

Each function has one file, `<state_dir>/logs/functions/<name>.<namespace>.log`,
of ndjson lines in the faas-provider `logs.Message` shape (`name`,
`namespace`, `instance`, `timestamp`, `text`), so a read sends stored lines
unchanged. When a line would take the file past `max_file_bytes`, the file is
renamed to `.log.1`, replacing the previous one, and a new file starts. A
function therefore keeps at most about twice `max_file_bytes` of log. A
following reader that has `max_backlog_lines` new lines waiting has its
stream ended, so a client that stops reading cannot make the provider buffer
without limit.

A line is stamped when the provider reads it from the process, not when the
process wrote it. The process readers of `classic` and `http_mode` append
lines and `LogReader` reads them, all on the provider's event loop. A reader
copies the file bytes and subscribes to new lines in one step without
awaiting, so a follower neither misses nor repeats a line. It filters the
copy in a worker thread.

Removing a function deletes its files and ends its followers. This module
does not write function output to the provider's own log.

Functions write tokens and payloads to stderr, so the folder is 0700 and the
files 0600, as for secrets. `LogStore.prepare` sets these modes on the
folder and on the files that an older version left readable by others.
"""

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

from faashub.names import FunctionRef
from provider.backend import StorageError
from provider.types import LogRequest

logger = logging.getLogger(__name__)

LOGS_FOLDER: Final = Path("logs") / "functions"
LOG_SUFFIX: Final = ".log"
ROTATED_SUFFIX: Final = ".log.1"
# Stored lines are sent in chunks of about this size.
CHUNK_BYTES: Final = 64 * 1024
FOLDER_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def _open_private(path: str, flags: int) -> int:
    """Open a log file for `open(opener=...)`, creating it with mode 0600."""
    return os.open(path, flags, FILE_MODE)


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with microseconds and `Z`."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


@dataclass(eq=False, slots=True)
class _Follower:
    """New lines waiting for one following reader. None ends the stream."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    overflowed: bool = False


class FunctionLog:
    """The log file of one function, its rotated predecessor and its followers."""

    def __init__(
        self,
        folder: Path,
        ref: FunctionRef,
        *,
        max_file_bytes: int,
        max_backlog_lines: int,
    ) -> None:
        self.ref = ref
        self.path = folder / f"{ref.name}.{ref.namespace}{LOG_SUFFIX}"
        self.rotated_path = folder / f"{ref.name}.{ref.namespace}{ROTATED_SUFFIX}"
        self.max_backlog_lines = max_backlog_lines
        self._max_file_bytes = max_file_bytes
        self._file: BinaryIO | None = None
        self._size = 0
        self._followers: set[_Follower] = set()
        self._write_failed = False
        self._closed = False

    def append(self, instance: str, text: str) -> None:
        """Stamp one output line, store it and pass it to the followers."""
        if self._closed:
            return
        message = {
            "name": self.ref.name,
            "namespace": self.ref.namespace,
            "instance": instance,
            "timestamp": format_timestamp(datetime.now(UTC)),
            "text": text,
        }
        line = json.dumps(message, ensure_ascii=False).encode() + b"\n"
        self._store(line)
        for follower in self._followers:
            _offer(follower, line, max_backlog_lines=self.max_backlog_lines)

    def snapshot(self) -> bytes:
        """Return the stored lines, oldest first, as they are on disk now."""
        data = b""
        for path in (self.rotated_path, self.path):
            try:
                data += path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(
                    f"Cannot read the log of function {self.ref} from {path}: {exc}.",
                    summary=f"Cannot read the log of function {self.ref}.",
                ) from exc
        return data

    def subscribe(self) -> _Follower:
        """Return a follower that gets every line appended from now on."""
        follower = _Follower()
        self._followers.add(follower)
        return follower

    def unsubscribe(self, follower: _Follower) -> None:
        self._followers.discard(follower)

    def close(self) -> None:
        """End every follower's stream and close the file. Later lines are dropped.

        Processes that are being stopped can still write a last line, and it
        must not create the file of a removed function again.
        """
        self._closed = True
        for follower in self._followers:
            follower.queue.put_nowait(None)
        self._followers.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove_files(self) -> None:
        """Close the log and delete its files."""
        self.close()
        for path in (self.path, self.rotated_path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning(
                    "cannot delete function log: %s",
                    exc,
                    extra={"ctx": {"function": str(self.ref), "path": str(path)}},
                )

    def _store(self, line: bytes) -> None:
        """Append `line` to the file, rotating it first when it would be too big.

        A failed write is logged once until a write succeeds again, and the
        line is then only passed to the followers.
        """
        try:
            if self._file is None:
                _make_private_folder(self.path.parent)
                self._file = self._open()
                self._size = self._file.tell()
            if self._size and self._size + len(line) > self._max_file_bytes:
                self._file.close()
                self._file = None
                self.path.replace(self.rotated_path)
                self._file = self._open()
                self._size = 0
            self._file.write(line)
            self._size += len(line)
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                logger.warning(
                    "cannot write function log, keeping new lines for followers "
                    "only: %s",
                    exc,
                    extra={"ctx": {"function": str(self.ref), "path": str(self.path)}},
                )
            self._write_failed = True

    def _open(self) -> BinaryIO:
        return open(self.path, "ab", buffering=0, opener=_open_private)


def _make_private_folder(folder: Path) -> None:
    """Create `folder` if needed and set its mode to 0700, whatever the umask."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(folder, FOLDER_MODE)


def _offer(follower: _Follower, line: bytes, *, max_backlog_lines: int) -> None:
    if follower.overflowed:
        return
    if follower.queue.qsize() >= max_backlog_lines:
        follower.overflowed = True
        follower.queue.put_nowait(None)
        return
    follower.queue.put_nowait(line)


class LogStore:
    """The logs of every function, under `<state_dir>/logs/functions/`."""

    def __init__(
        self, state_dir: Path, *, max_file_bytes: int, max_backlog_lines: int
    ) -> None:
        self.folder = state_dir / LOGS_FOLDER
        self._max_file_bytes = max_file_bytes
        self._max_backlog_lines = max_backlog_lines
        self._logs: dict[FunctionRef, FunctionLog] = {}

    def prepare(self) -> None:
        """Create the log folder and make it and its files private.

        Raise StorageError when that fails.
        """
        try:
            _make_private_folder(self.folder)
            for path in self.folder.iterdir():
                if path.is_file() and path.stat().st_mode & 0o077:
                    os.chmod(path, FILE_MODE)
        except OSError as exc:
            raise StorageError(
                f"Cannot use the function log folder {self.folder}: {exc}. Check "
                "that the state folder is writable, or pass another --state-dir.",
                summary="Cannot use the function log folder.",
            ) from exc

    def log_of(self, ref: FunctionRef) -> FunctionLog:
        """Return the function's log, opening it on first use."""
        log = self._logs.get(ref)
        if log is None:
            log = self._new_log(ref)
            self._logs[ref] = log
        return log

    def remove(self, ref: FunctionRef) -> None:
        """Delete a function's log files and end its followers."""
        log = self._logs.pop(ref, None) or self._new_log(ref)
        log.remove_files()

    def _new_log(self, ref: FunctionRef) -> FunctionLog:
        return FunctionLog(
            self.folder,
            ref,
            max_file_bytes=self._max_file_bytes,
            max_backlog_lines=self._max_backlog_lines,
        )

    def close(self) -> None:
        """End every follower and close every file, as the provider stops."""
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    def open_reader(self, ref: FunctionRef, request: LogRequest) -> "LogReader":
        """Return a reader of the function's stored lines, and new ones if following.

        NB: the copy of the stored lines and the subscription happen here, in
        one step without awaiting, so no line falls between them.
        """
        log = self.log_of(ref)
        snapshot = log.snapshot()
        follower = log.subscribe() if request.follow else None
        return LogReader(log, snapshot, follower=follower, request=request)


class LogReader:
    """An async iterator of ndjson chunks: stored lines, then followed ones."""

    def __init__(
        self,
        log: FunctionLog,
        snapshot: bytes,
        *,
        follower: _Follower | None,
        request: LogRequest,
    ) -> None:
        self._log = log
        self._snapshot: bytes | None = snapshot
        self._stored_chunks: list[bytes] = []
        self._follower = follower
        self._request = request

    def __aiter__(self) -> "LogReader":
        return self

    async def __anext__(self) -> bytes:
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            self._stored_chunks = await asyncio.to_thread(
                _stored_chunks, snapshot, self._request
            )
        if self._stored_chunks:
            return self._stored_chunks.pop(0)
        while self._follower is not None:
            chunk = await self._next_followed_chunk(self._follower)
            if chunk:
                return chunk
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop following, which ends the iterator."""
        if self._follower is not None:
            self._log.unsubscribe(self._follower)
            self._follower = None
        self._stored_chunks = []
        self._snapshot = None

    async def _next_followed_chunk(self, follower: _Follower) -> bytes:
        """Wait for new lines and return those that match, or b"" when none do.

        A None in the queue ends the stream: the reader stops following.
        """
        lines: list[bytes] = []
        size = 0
        ended = False
        while size < CHUNK_BYTES:
            if lines and follower.queue.empty():
                break
            line = await follower.queue.get()
            if line is None:
                ended = True
                break
            lines.append(line)
            size += len(line)
        if ended:
            if follower.overflowed:
                logger.warning(
                    "log follower fell behind, ended its stream",
                    extra={
                        "ctx": {
                            "function": str(self._log.ref),
                            "backlog_lines": self._log.max_backlog_lines,
                        }
                    },
                )
            await self.aclose()
        return b"".join(line for line in lines if _matches(line, self._request))


def _stored_chunks(snapshot: bytes, request: LogRequest) -> list[bytes]:
    """Select the stored lines that match the request, in chunks."""
    lines = [line + b"\n" for line in snapshot.split(b"\n") if line]
    if request.instance or request.since is not None:
        lines = [line for line in lines if _matches(line, request)]
    if request.tail > 0:
        lines = lines[-request.tail :]
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        current.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            chunks.append(b"".join(current))
            current, size = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks


def _matches(line: bytes, request: LogRequest) -> bool:
    """Return whether a stored line passes the request's instance and since filters.

    A line that is not a JSON object never matches: only a crash in the middle
    of a write leaves one.
    """
    if not request.instance and request.since is None:
        return True
    try:
        message = json.loads(line)
        if request.instance and message["instance"] != request.instance:
            return False
        if request.since is not None:
            stamped_at = datetime.fromisoformat(message["timestamp"])
            return stamped_at >= request.since
        return True
    except (ValueError, KeyError, TypeError):
        return False
