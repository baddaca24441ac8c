"""HTTP mode: long-running server processes per function, as of-watchdog's mode=http.

An `HttpFunction` runs a number of replicas of the function's command. Each
`HttpReplica` is one process in its own process group, with `PORT` set to
the port it must listen on at 127.0.0.1 (or to the port of the function's
`upstream_url`, which allows one replica only). A replica counts as
responding once any HTTP response, whatever the status, comes back from GET
`/_/health`, the path the OpenFaaS watchdog reserves for health checks. Each
request goes to the responding replica with the fewest requests in flight,
taking turns among equals. The request body streams to the process as the
caller sends it, and the response streams back unchanged, so neither is held
whole in the provider. The exec timeout covers the whole exchange, upload
included. Both output streams of every replica go to the function's log as
instance `<name>-<index>`, so an instance keeps its name across restarts.

A replica whose process exits, or does not respond within the start timeout,
is restarted after a delay that starts at 0.5 s and doubles up to 10 s. A
command that cannot start at all (not found, not executable) is retried
with a delay that doubles up to 60 s, because it can start only after
someone installs or fixes it. The delay falls back to 0.5 s once a process
has run for a minute. Each replica logs its start failures and restarts at
WARNING at most once a minute, and the repeats in between at DEBUG, so a
function that never starts does not flood the provider's log. While no
replica responds, a request waits as long as some replica's process is
starting, up to the start timeout. When every replica's process has exited
and waits for its restart, the request fails at once with
FunctionUnavailable. The error names the exit code and carries the seconds
until the next start, so a crash-looping function does not hold each caller
for the whole start timeout. `scale` starts replicas or stops the ones with the
highest indexes. `stop` terminates every process group, SIGTERM first and
SIGKILL after a grace period.

The path and query of a request reach the process byte for byte as the
caller sent them: no dot segments are resolved and no percent-escape is
decoded or added.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Final

import aiohttp
import yarl

from faashub.logs import LimitedWarning
from faashub.replica_urls import exec_timeout_message
from provider.backend import (
    FunctionFailed,
    FunctionTimeout,
    FunctionUnavailable,
    Invocation,
    InvocationResponse,
)
from provider.headers import (
    end_to_end_headers,
    upstream_body,
    upstream_failure_message,
    upstream_headers,
)
from provider.local import processes
from provider.local.definition import FunctionSpec
from provider.local.function_logs import FunctionLog

logger = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
HEALTH_PATH: Final = "/_/health"
FIRST_RESTART_DELAY_S: Final = 0.5
MAX_RESTART_DELAY_S: Final = 10.0
# The longest delay before another start of a command that could not start.
MAX_START_FAILURE_DELAY_S: Final = 60.0
# Each replica logs a start failure or a restart at WARNING at most this often.
RESTART_WARNING_INTERVAL_S: Final = 60.0
# A process that ran this long counts as healthy: its next restart waits only
# FIRST_RESTART_DELAY_S again.
STABLE_RUN_S: Final = 60.0
PROBE_INTERVAL_S: Final = 0.05
PROBE_TIMEOUT_S: Final = 1.0
REFUSED_RETRY_DELAY_S: Final = 0.1

# Headers that aiohttp adds to a request unless skip_auto_headers lists them.
# A proxy sends only the caller's.
_SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def pick_free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class HttpReplica:
    """One server process of an http-mode function, restarted until `stop`."""

    def __init__(
        self,
        spec: FunctionSpec,
        index: int,
        *,
        session: aiohttp.ClientSession,
        tracker: processes.ProcessTracker,
        start_timeout_s: float,
        stop_grace_s: float,
        log: FunctionLog,
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.instance = f"{spec.name}-{index}"
        self.base_url = ""
        self.in_flight = 0
        self.last_failure = "it has not started yet"
        self._session = session
        self._tracker = tracker
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._log = log
        self._on_change = on_change
        self._responding = False
        self._restart_at: float | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._restart_warnings = LimitedWarning(
            logger, interval_s=RESTART_WARNING_INTERVAL_S
        )

    @property
    def available(self) -> bool:
        """Whether the replica's process responds to HTTP now."""
        return self._responding

    @property
    def waiting_to_restart(self) -> bool:
        """Whether the replica's process has ended and its restart delay runs."""
        return self._restart_at is not None

    def restart_in_s(self) -> float:
        """Return the seconds until the next start, 0 when no restart is waiting."""
        if self._restart_at is None:
            return 0.0
        return max(0.0, self._restart_at - asyncio.get_running_loop().time())

    def start(self) -> None:
        """Start the process and keep it running until `stop`."""
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"http-function-{self.spec.ref}-{self.instance}"
        )

    async def stop(self) -> None:
        """Terminate the process group and stop restarting it."""
        if self._supervisor is None:
            return
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor
        self._supervisor = None
        logger.info(
            "function process stopped",
            extra={"ctx": {"function": self.spec.ref, "instance": self.instance}},
        )

    def _set_responding(self, responding: bool) -> None:
        self._responding = responding
        self._on_change()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s = FIRST_RESTART_DELAY_S
        while True:
            started_at = loop.time()
            exit_code = await self._run_once()
            started = exit_code is not None
            if loop.time() - started_at >= STABLE_RUN_S:
                delay_s = FIRST_RESTART_DELAY_S
            # A start failure was logged by _run_once already.
            if started:
                self._restart_warnings.warning(
                    "function process stopped, restarting",
                    ctx={
                        "function": self.spec.ref,
                        "instance": self.instance,
                        "exit_code": exit_code,
                        "restart_in_s": delay_s,
                    },
                )

            # Requests that wait for this replica learn that it is down, so
            # they can fail now instead of at the end of the start timeout.
            self._restart_at = loop.time() + delay_s
            self._on_change()
            try:
                await asyncio.sleep(delay_s)
            finally:
                self._restart_at = None
            max_delay_s = MAX_RESTART_DELAY_S if started else MAX_START_FAILURE_DELAY_S
            delay_s = min(delay_s * 2, max_delay_s)

    async def _run_once(self) -> int | None:
        """Run one process until it exits and return its exit code.

        Return None when the process could not be started.
        """
        spec = self.spec
        if spec.upstream_url:
            port, self.base_url = spec.upstream_port, spec.upstream_url
        else:
            port = pick_free_port()
            self.base_url = f"http://{LOOPBACK}:{port}"
        env = spec.process_env()
        env["PORT"] = str(port)
        context: dict[str, object] = {"function": spec.ref, "instance": self.instance}
        try:
            process = await self._tracker.spawn(spec.argv, env=env)
        except OSError as exc:
            self.last_failure = _start_failure(spec.argv[0], exc)
            # The PATH searched is a detail of the provider's machine, so it
            # is logged here and left out of the caller's error.
            self._restart_warnings.warning(
                "function process failed to start: %s",
                exc,
                ctx={**context, "command": spec.argv[0], "path": env["PATH"]},
            )
            return None

        output_readers = [
            asyncio.create_task(
                processes.read_lines(stream, on_line=self._output_handler(name))
            )
            for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
        ]
        context.update(pid=process.pid, port=port)
        gave_up = False
        try:
            if await self._wait_until_responding(process):
                self._set_responding(True)
                logger.info("function process responding", extra={"ctx": context})
                await process.wait()
            else:
                gave_up = process.returncode is None
        finally:
            if self._responding:
                self._set_responding(False)
            exit_code = await self._tracker.terminate(
                process, grace_s=self._stop_grace_s
            )
            await _finish_readers(output_readers)

        if gave_up:
            self.last_failure = (
                f"its process did not answer HTTP {_listen_place(spec)} within "
                f"{self._start_timeout_s:g} s and was stopped"
            )
            logger.warning(
                "function process not responding, stopped it",
                extra={"ctx": {**context, "timeout_s": self._start_timeout_s}},
            )
        else:
            self.last_failure = f"its process {processes.describe_exit(exit_code)}"
        return exit_code

    def _output_handler(self, stream_name: str) -> Callable[[str], None]:
        """Return the callback that stores one output line of `stream_name`."""
        context = {
            "function": self.spec.ref,
            "instance": self.instance,
            "stream": stream_name,
        }

        def store(text: str) -> None:
            self._log.append(self.instance, text)
            logger.debug("function output: %s", text, extra={"ctx": context})

        return store

    async def _wait_until_responding(self, process: asyncio.subprocess.Process) -> bool:
        """Probe the process until it responds, exits, or the start timeout ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        url = self.base_url + HEALTH_PATH
        while process.returncode is None and loop.time() < deadline:
            try:
                async with self._session.get(url, timeout=probe_timeout) as response:
                    await response.read()
                return True
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(PROBE_INTERVAL_S)
        return False


class HttpFunction:
    """The replicas of one http-mode function, and the proxy that balances them."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        session: aiohttp.ClientSession,
        tracker: processes.ProcessTracker,
        start_timeout_s: float,
        stop_grace_s: float,
        log: FunctionLog,
    ) -> None:
        self.spec = spec
        self._session = session
        self._tracker = tracker
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._log = log
        self._replicas: list[HttpReplica] = []
        self._stopped = False
        self._changed = asyncio.Event()
        self._turn = 0

    @property
    def replicas(self) -> int:
        """The number of replicas that run or are starting."""
        return len(self._replicas)

    @property
    def available_replicas(self) -> int:
        """The number of replicas whose process responds to HTTP now."""
        return sum(replica.available for replica in self._replicas)

    def replica_urls(self) -> tuple[str, ...]:
        """Return the base URLs of the replicas whose process responds now."""
        return tuple(
            replica.base_url.rstrip("/")
            for replica in self._replicas
            if replica.available
        )

    def start(self, replicas: int) -> None:
        """Start `replicas` processes, each kept running until scaled down."""
        self._add_replicas(replicas)

    async def scale(self, replicas: int) -> None:
        """Start or stop replicas until `replicas` run. A stop waits for the exit."""
        if replicas >= len(self._replicas):
            self._add_replicas(replicas - len(self._replicas))
            return
        leaving = self._replicas[replicas:]
        del self._replicas[replicas:]
        self._notify_change()
        await asyncio.gather(*(replica.stop() for replica in leaving))

    async def stop(self) -> None:
        """Terminate every replica and fail the requests that wait for one."""
        self._stopped = True
        leaving, self._replicas = self._replicas, []
        self._notify_change()
        await asyncio.gather(*(replica.stop() for replica in leaving))

    def _add_replicas(self, count: int) -> None:
        for _ in range(count):
            replica = HttpReplica(
                self.spec,
                len(self._replicas),
                session=self._session,
                tracker=self._tracker,
                start_timeout_s=self._start_timeout_s,
                stop_grace_s=self._stop_grace_s,
                log=self._log,
                on_change=self._notify_change,
            )
            self._replicas.append(replica)
            replica.start()

    def _notify_change(self) -> None:
        """Wake the requests that wait for a replica, so they look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def forward(
        self, invocation: Invocation
    ) -> AsyncIterator[InvocationResponse]:
        """Proxy `invocation` to a replica. The response streams inside the block."""
        replica, response = await self._send(invocation)
        try:
            yield InvocationResponse(
                status=response.status,
                headers=end_to_end_headers(
                    [
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in response.raw_headers
                    ]
                ),
                stream=self._read_body(response),
            )
        finally:
            response.release()
            replica.in_flight -= 1

    async def _send(
        self, invocation: Invocation
    ) -> tuple[HttpReplica, aiohttp.ClientResponse]:
        """Send the request to a replica, trying again once on a refused connection.

        The returned replica counts the request as in flight; the caller ends that.
        """
        # NB: a refused connection means the request never reached the
        # process, so sending it again cannot run the function twice. aiohttp
        # reads no chunk of a streamed body before it connects, so the
        # stream is still whole for the second attempt.
        headers = upstream_headers(invocation)
        for attempt in (1, 2):
            replica = await self._wait_for_replica()
            replica.in_flight += 1
            try:
                response = await self._session.request(
                    invocation.method,
                    _upstream_url(replica.base_url, invocation),
                    headers=headers,
                    data=upstream_body(invocation),
                    allow_redirects=False,
                    skip_auto_headers=_SKIP_AUTO_HEADERS,
                    timeout=aiohttp.ClientTimeout(total=self.spec.exec_timeout_s),
                )
                return replica, response
            except TimeoutError as exc:
                replica.in_flight -= 1
                raise self._exec_timeout_error() from exc
            except aiohttp.ClientConnectorError as exc:
                replica.in_flight -= 1
                if attempt == 2:
                    logger.warning(
                        "function refused the connection twice: %s",
                        exc,
                        extra={
                            "ctx": {
                                "function": self.spec.ref,
                                "instance": replica.instance,
                                "call_id": invocation.call_id,
                            }
                        },
                    )
                    raise FunctionUnavailable(
                        f"Function {self.spec.ref} refused the connection. Its "
                        f"process must keep listening {_listen_place(self.spec)}. "
                        f"{self._read_output_hint()}"
                    ) from exc
                # Give the supervisor time to notice an exited process, so the
                # second attempt goes to another replica or waits for the restart.
                await asyncio.sleep(REFUSED_RETRY_DELAY_S)
            except aiohttp.ClientError as exc:
                replica.in_flight -= 1
                raise FunctionFailed(upstream_failure_message(invocation, exc)) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _exec_timeout_error(self) -> FunctionTimeout:
        exec_timeout_s = self.spec.exec_timeout_s
        if exec_timeout_s is None:
            # Not expected, because a request without an exec timeout has no
            # timeout at all.
            return FunctionTimeout(f"Function {self.spec.ref} did not respond in time.")
        return FunctionTimeout(exec_timeout_message(self.spec.ref, exec_timeout_s))

    def _pick_replica(self) -> HttpReplica | None:
        """Return the responding replica with the fewest requests in flight."""
        responding = [replica for replica in self._replicas if replica.available]
        if not responding:
            return None
        fewest = min(replica.in_flight for replica in responding)
        least_busy = [replica for replica in responding if replica.in_flight == fewest]
        self._turn += 1
        return least_busy[self._turn % len(least_busy)]

    async def _wait_for_replica(self) -> HttpReplica:
        """Return a responding replica, waiting while a replica's process starts.

        Raise FunctionUnavailable when no process responds within the start
        timeout, or at once when every replica's process has exited and waits
        for its restart.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        while True:
            changed = self._changed
            replica = self._pick_replica()
            if replica is not None:
                return replica
            if self._stopped:
                raise FunctionUnavailable(
                    f"Function {self.spec.ref} was updated or deleted while the "
                    "request waited for it to start. Send the request again."
                )
            if not self._replicas:
                raise FunctionUnavailable(
                    f"Function {self.spec.ref} was scaled to zero while the request "
                    "waited for it to start. Send the request again."
                )
            if all(replica.waiting_to_restart for replica in self._replicas):
                raise self._down_error()
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise FunctionUnavailable(
                    f"Function {self.spec.ref} is not responding after "
                    f"{self._start_timeout_s:g} s because "
                    f"{self._replicas[0].last_failure}. {self._read_output_hint()}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await changed.wait()

    def _down_error(self) -> FunctionUnavailable:
        """Return the error for a function whose every process waits to restart."""
        soonest = min(self._replicas, key=lambda replica: replica.restart_in_s())
        restart_in_s = soonest.restart_in_s()
        return FunctionUnavailable(
            f"Function {self.spec.ref} is not responding: {soonest.last_failure}. "
            f"It restarts in {restart_in_s:.1f} s. {self._read_output_hint()}",
            retry_after_s=restart_in_s,
        )

    def _read_output_hint(self) -> str:
        name = self.spec.name
        return (
            f"Read its output with GET /system/logs?name={name} "
            f"('faashub logs {name}')."
        )

    async def _read_body(
        self, response: aiohttp.ClientResponse
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise FunctionTimeout(
                f"Function {self.spec.ref} did not finish its response within its "
                f"exec timeout of {self.spec.exec_timeout_s:g} s."
            ) from exc
        except aiohttp.ClientError as exc:
            raise FunctionFailed(
                f"Function {self.spec.ref} broke off its response: {exc}."
            ) from exc


def _upstream_url(base_url: str, invocation: Invocation) -> yarl.URL:
    """Return the replica's URL for `invocation`, with the caller's path and query.

    The URL is marked as already encoded, so yarl neither resolves dot
    segments nor changes a percent-escape such as `%2F`, `%3F` or `%26`.
    """
    target = invocation.raw_path
    if invocation.query:
        target += "?" + invocation.query
    return yarl.URL(base_url + target, encoded=True)


def _listen_place(spec: FunctionSpec) -> str:
    """Name where the function's server must listen, for messages."""
    return "at its upstream_url" if spec.upstream_url else "on the port in $PORT"


def _start_failure(command: str, exc: OSError) -> str:
    """Describe why a command did not start, without the provider's PATH."""
    if isinstance(exc, FileNotFoundError):
        return f"its command {command!r} was not found"
    if isinstance(exc, PermissionError):
        return f"its command {command!r} is not executable"
    return f"its command {command!r} cannot start ({exc.strerror or exc})"


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    """Wait briefly for the output readers to reach end of file, then cancel them."""
    # NB: a process that left the group (setsid) can keep a pipe open after
    # the group is killed; its output is then no longer logged.
    _, pending = await asyncio.wait(readers, timeout=1.0)
    for reader in pending:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
