"""Classic mode: one process per request, as the OpenFaaS watchdog forks.

The function's command gets the request body on stdin, and its stdout becomes
the response body with status 200 when it exits with code 0. The request is
described to the process in CGI-style variables: each header as
`Http_<Name_With_Underscores>` (`Http_Content_Type`, `Http_X_Call_Id`), plus
`Http_Method`, `Http_Path`, `Http_Raw_Path` and `Http_Query`. `Http_Path` is
the path percent-decoded, as the OpenFaaS watchdogs give it (Go's
`r.URL.Path`), so functions ported from OpenFaaS read the same value.
`Http_Raw_Path` is the path as the caller sent it, still percent-encoded, so
that `%2F` in a path segment stays apart from `/`.

stderr is never returned: each of its lines goes to the function's log as it
arrives, as instance `<name>-<pid>`, so the lines of one request share an
instance. stdout is the response, so it is not a log. The whole process
group is killed when the request ends, so nothing the function started
outlives it.

The request body streams into stdin as the caller sends it, so an upload is
never held whole. stdout is held until the process exits, because the exit
code decides between 200 and 500. A process that writes more than the
provider's max_classic_output_bytes is killed and the call fails with 500.
A caller that goes away during its upload ends the call too: the process is
killed and no response is sent. This module does not enforce `limits`, `requests` or
`readOnlyRootFilesystem`.

A failure of the function itself (a non-zero exit, a run past the exec
timeout, too much stdout) is returned as the function's own response, a 500
or a 504 without `X-OpenFaaS-Internal`, so a queue-worker applies the
function's retry codes to it. The OpenFaaS classic watchdog
(openfaas/classic-watchdog, handler.go) marks none of its errors either: a
non-zero exit is a 500, and an exec timeout is a 408, where faashub keeps
the 504 of its http mode. Only failures of the provider (the command cannot
start, the function was removed during the call) raise FunctionFailed,
which the API marks as internal.
"""

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Final

from faashub.headers import canonical_header_name
from provider.backend import (
    ClientDisconnected,
    FunctionFailed,
    Invocation,
    InvocationResponse,
)
from provider.local import processes
from provider.local.definition import FunctionSpec
from provider.local.function_logs import FunctionLog

logger = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
ERROR_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
# The start of a failed process's stderr that goes into the provider's log.
MAX_LOGGED_STDERR_BYTES: Final = 4 * 1024


def request_environment(spec: FunctionSpec, invocation: Invocation) -> dict[str, str]:
    """Return the environment of the process that serves `invocation`."""
    env = spec.process_env()
    for name, value in _merge_headers(invocation.headers).items():
        env["Http_" + canonical_header_name(name).replace("-", "_")] = _raw(value)
    # Set after the headers, so a request header cannot replace them.
    env["Http_Method"] = invocation.method
    env["Http_Path"] = invocation.path
    env["Http_Raw_Path"] = _raw(invocation.raw_path)
    env["Http_Query"] = _raw(invocation.query)
    return env


def _raw(wire_text: str) -> str:
    """Return a str that the OS encodes back to the bytes that came on the wire.

    Header values and the query arrive as Latin-1 text, one character per
    byte. Python encodes an environment value with the file system encoding
    (UTF-8 here), which would turn each byte above 127 into two. Decoding the
    bytes with that encoding and `surrogateescape` makes the process see the
    request's own bytes, as a watchdog passes them.
    """
    if wire_text.isascii():
        return wire_text
    return wire_text.encode("latin-1").decode(
        sys.getfilesystemencoding(), "surrogateescape"
    )


def _merge_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Join repeated headers with ", ", the way HTTP allows them to be combined."""
    merged: dict[str, str] = {}
    for name, value in headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


async def run(
    spec: FunctionSpec,
    invocation: Invocation,
    *,
    tracker: processes.ProcessTracker,
    log: FunctionLog,
    removed: asyncio.Event,
    max_output_bytes: int,
) -> InvocationResponse:
    """Run the function's command once for `invocation` and return its response.

    stdout is held in memory until the exit, so it may be at most
    `max_output_bytes` long. A command that exits with a non-zero code or
    writes more than that gets a 500 response, and one that runs past the
    exec timeout a 504. Raise FunctionFailed when the command cannot start
    or is killed because the function was removed (`removed` set).
    ClientDisconnected from the request body passes through.
    """
    context = {"function": spec.ref, "call_id": invocation.call_id}
    process = await _start(spec, invocation, tracker=tracker)
    started_at = time.monotonic()
    stderr = _StderrLog(log, instance=f"{spec.name}-{process.pid}")
    communicating = asyncio.ensure_future(
        _communicate(
            process, invocation, stderr=stderr, max_output_bytes=max_output_bytes
        )
    )
    removal = asyncio.ensure_future(removed.wait())
    try:
        await asyncio.wait(
            (communicating, removal),
            timeout=spec.exec_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not communicating.done():
            communicating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await communicating
            if removal.done():
                raise FunctionFailed(
                    f"Function {spec.ref} was removed while this call ran, and "
                    "its process was killed."
                )
            return _timeout_response(spec, exited=process.returncode is not None)
        try:
            stdout_chunks = communicating.result()
        except _OutputTooLarge:
            logger.warning(
                "function output too large, process killed",
                extra={"ctx": {**context, "max_bytes": max_output_bytes}},
            )
            return _error_response(
                500,
                f"Function {spec.ref} wrote more than {max_output_bytes} bytes to "
                "stdout and was killed. A classic function's response is held "
                "whole until it exits, so its size is limited by the provider's "
                "--max-classic-output-bytes. Return a larger body from an "
                "http-mode function (mode=http in its envVars), or raise that "
                "limit.",
            )
    finally:
        removal.cancel()
        if not communicating.done():
            # The caller went away (this task was cancelled).
            communicating.cancel()
        # Runs on success too: children that the function left behind
        # would otherwise outlive the request.
        await tracker.kill(process)

    duration_s = time.monotonic() - started_at
    if process.returncode != 0:
        start = stderr.start()
        logger.warning(
            "function process failed: %s",
            start or "it wrote nothing to stderr",
            extra={"ctx": {**context, "exit_code": process.returncode}},
        )
        return _error_response(
            500,
            f"Function {spec.ref} {processes.describe_exit(process.returncode)} "
            f"after {duration_s:.3f} s. Read its stderr with GET "
            f"/system/logs?name={spec.name} ('faashub logs {spec.name}').",
        )
    headers = [
        ("Content-Type", _response_content_type(spec, invocation)),
        ("Content-Length", str(sum(len(chunk) for chunk in stdout_chunks))),
    ]
    if len(stdout_chunks) <= 1:
        body = b"".join(stdout_chunks)
        return InvocationResponse(status=200, headers=headers, body=body)
    return InvocationResponse(
        status=200, headers=headers, stream=_send_chunks(stdout_chunks)
    )


def _timeout_response(spec: FunctionSpec, *, exited: bool) -> InvocationResponse:
    """Build the 504 for a call that ran past the exec timeout.

    `exited` is whether the function's own process had exited by then, which
    means that a process it started in the background kept stdout open, so
    the end of the response never came.
    """
    if exited:
        return _error_response(
            504,
            f"Function {spec.ref} exited, but a child process that it started "
            "kept its stdout open, so the response did not end within the exec "
            f"timeout of {spec.exec_timeout_s:g} s. Its process group was "
            "killed and the output dropped. Redirect the output of background "
            "commands, "
            "for example 'sleep 30 > /dev/null &', or wait for them to end.",
        )
    return _error_response(
        504,
        f"Function {spec.ref} did not finish within its exec timeout of "
        f"{spec.exec_timeout_s:g} s and was killed. Raise exec_timeout in "
        "its envVars if it needs longer, or set it to 0 for no timeout.",
    )


def _error_response(status: int, message: str) -> InvocationResponse:
    """Build the plain-text response for a failure of the function itself."""
    body = message.encode()
    headers = [
        ("Content-Type", ERROR_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
    ]
    return InvocationResponse(status=status, headers=headers, body=body)


class _StderrLog:
    """Stores each stderr line in the function log and keeps the first few KiB."""

    def __init__(self, log: FunctionLog, *, instance: str) -> None:
        self._log = log
        self._instance = instance
        self._start: list[str] = []
        self._kept_bytes = 0
        self._dropped_bytes = 0

    def add_line(self, text: str) -> None:
        self._log.append(self._instance, text)
        size = len(text.encode()) + 1
        if self._kept_bytes + size <= MAX_LOGGED_STDERR_BYTES:
            self._start.append(text)
            self._kept_bytes += size
        else:
            self._dropped_bytes += size

    def start(self) -> str:
        """Return the kept lines for a log message, noting how much was left out."""
        text = " | ".join(self._start)
        if self._dropped_bytes:
            text += f" ... ({self._dropped_bytes} more bytes)"
        return text


class _OutputTooLarge(Exception):
    """The process wrote more than its limit to stdout."""


async def _communicate(
    process: asyncio.subprocess.Process,
    invocation: Invocation,
    *,
    stderr: _StderrLog,
    max_output_bytes: int,
) -> list[bytes]:
    """Feed the request body to stdin while reading stdout and stderr.

    Return the chunks of stdout once the process has exited. The first
    failure (the caller went away, or stdout is too large) cancels the other
    steps and is raised.
    """
    assert process.stdin is not None, "spawned with a stdin pipe"
    assert process.stdout is not None, "spawned with a stdout pipe"
    assert process.stderr is not None, "spawned with a stderr pipe"
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_feed_stdin(process.stdin, invocation))
            reading = group.create_task(
                _read_stdout(process.stdout, max_bytes=max_output_bytes)
            )
            group.create_task(
                processes.read_lines(process.stderr, on_line=stderr.add_line)
            )
    except* (ClientDisconnected, _OutputTooLarge) as failures:
        raise failures.exceptions[0] from None
    await process.wait()
    return reading.result()


async def _feed_stdin(stdin: asyncio.StreamWriter, invocation: Invocation) -> None:
    """Write the request body to stdin as it arrives, then close stdin."""
    try:
        if invocation.body_stream is None:
            await _write_stdin(stdin, invocation.body)
            return
        async for chunk in invocation.body_stream:
            if not await _write_stdin(stdin, chunk):
                return
    except (BrokenPipeError, ConnectionResetError):
        pass  # the function exited without reading all of its input
    finally:
        stdin.close()


async def _write_stdin(stdin: asyncio.StreamWriter, data: bytes) -> bool:
    """Write `data` to stdin, or return False when the pipe is already closing."""
    # NB: is_closing() and write() run without yielding to the event loop,
    # so the pipe cannot close between them. Under uvloop, a write to a pipe
    # that closed when the process exited raises RuntimeError.
    if stdin.is_closing():
        return False
    if data:
        stdin.write(data)
        await stdin.drain()
    return True


async def _read_stdout(stdout: asyncio.StreamReader, *, max_bytes: int) -> list[bytes]:
    """Read stdout to its end as chunks, raising _OutputTooLarge past `max_bytes`.

    The chunks are kept apart, because joining them would copy the output.
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await stdout.read(processes.READ_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise _OutputTooLarge
        chunks.append(chunk)
    return chunks


async def _send_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """Yield the chunks in order, removing each from the list as it goes.

    The list is then the only reference, so a chunk's memory is freed once
    the API has sent it.
    """
    chunks.reverse()
    while chunks:
        yield chunks.pop()


async def _start(
    spec: FunctionSpec,
    invocation: Invocation,
    *,
    tracker: processes.ProcessTracker,
) -> asyncio.subprocess.Process:
    env = request_environment(spec, invocation)
    command = spec.argv[0]
    try:
        return await tracker.spawn(spec.argv, env=env, stdin=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        # The PATH that was searched is a detail of the provider's machine,
        # so it goes to the provider's log and not to the caller.
        logger.warning(
            "function command not found",
            extra={
                "ctx": {
                    "function": spec.ref,
                    "call_id": invocation.call_id,
                    "command": command,
                    "path": env["PATH"],
                }
            },
        )
        raise FunctionFailed(
            f"Function {spec.ref} cannot start: command {command!r} not found. "
            "Fix the function's envProcess (fprocess), or give the command's "
            "full path."
        ) from exc
    except PermissionError as exc:
        raise FunctionFailed(
            f"Function {spec.ref} cannot start: command {command!r} is not "
            "executable. Check its permissions, or run it through an interpreter "
            "in envProcess."
        ) from exc
    except OSError as exc:
        logger.warning(
            "function command failed to start: %s",
            exc,
            extra={"ctx": {"function": spec.ref, "call_id": invocation.call_id}},
        )
        raise FunctionFailed(
            f"Function {spec.ref} cannot start command {command!r}: "
            f"{exc.strerror or type(exc).__name__}."
        ) from exc


def _response_content_type(spec: FunctionSpec, invocation: Invocation) -> str:
    if spec.content_type:
        return spec.content_type
    for name, value in invocation.headers:
        if name == "content-type":
            return value
    return DEFAULT_CONTENT_TYPE
