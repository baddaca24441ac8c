"""HTTP mode: one long-running server process per function, as of-watchdog's mode=http.

`HttpFunction` starts the function's command once, in its own process group,
with `PORT` set to the port it must listen on at 127.0.0.1 (or to the port of
its `upstream_url`). It counts the process as responding once any HTTP
response, whatever the status, comes back from GET `/_/health`, the path the
OpenFaaS watchdog reserves for health checks. Requests are proxied to the
process with aiohttp and the response is streamed back unchanged.

A process that exits, or does not respond within the start timeout, is
restarted after a delay that starts at 0.5 s and doubles up to 10 s. The
delay falls back to 0.5 s once a process has run for a minute. While no
process responds, a request waits up to the start timeout and then fails with
FunctionUnavailable. `stop` terminates the process group, SIGTERM first and
SIGKILL after a grace period.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from multidict import CIMultiDict

from faashub import constants
from provider.backend import (
    FunctionFailed,
    FunctionTimeout,
    FunctionUnavailable,
    Invocation,
    InvocationResponse,
)
from provider.local import processes
from provider.local.definition import FunctionSpec
from provider.local.headers import canonical_header_name, end_to_end_headers

logger = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
HEALTH_PATH: Final = "/_/health"
FIRST_RESTART_DELAY_S: Final = 0.5
MAX_RESTART_DELAY_S: Final = 10.0
# A process that ran this long counts as healthy: its next restart waits only
# FIRST_RESTART_DELAY_S again.
STABLE_RUN_S: Final = 60.0
PROBE_INTERVAL_S: Final = 0.05
PROBE_TIMEOUT_S: Final = 1.0
STOP_GRACE_S: Final = 2.0
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


class HttpFunction:
    """The server process of one http-mode function, and the proxy to it."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        session: aiohttp.ClientSession,
        start_timeout_s: float,
    ) -> None:
        self.spec = spec
        self._session = session
        self._start_timeout_s = start_timeout_s
        self._responding = asyncio.Event()
        self._stopped = asyncio.Event()
        self._base_url = ""
        self._last_failure = "it has not started yet"
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """Whether the function's process responds to HTTP now."""
        return self._responding.is_set()

    def start(self) -> None:
        """Start the process and keep it running until `stop`."""
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"http-function-{self.spec.ref}"
        )

    async def stop(self) -> None:
        """Terminate the process group and stop restarting it."""
        if self._supervisor is None:
            return
        self._stopped.set()
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor
        self._supervisor = None
        logger.info(
            "function process stopped", extra={"ctx": {"function": self.spec.ref}}
        )

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay_s = FIRST_RESTART_DELAY_S
        while True:
            started_at = loop.time()
            exit_code = await self._run_once()
            if loop.time() - started_at >= STABLE_RUN_S:
                delay_s = FIRST_RESTART_DELAY_S
            logger.warning(
                "function process stopped, restarting",
                extra={
                    "ctx": {
                        "function": self.spec.ref,
                        "exit_code": exit_code,
                        "restart_in_s": delay_s,
                    }
                },
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, MAX_RESTART_DELAY_S)

    async def _run_once(self) -> int | None:
        """Run one process until it exits and return its exit code.

        Return None when the process could not be started.
        """
        spec = self.spec
        if spec.upstream_url:
            port, self._base_url = spec.upstream_port, spec.upstream_url
        else:
            port = pick_free_port()
            self._base_url = f"http://{LOOPBACK}:{port}"
        env = spec.process_env()
        env["PORT"] = str(port)
        try:
            process = await processes.spawn(spec.argv, env=env)
        except OSError as exc:
            self._last_failure = f"its command {spec.argv[0]!r} cannot start: {exc}"
            logger.error(
                "function process failed to start: %s",
                exc,
                extra={"ctx": {"function": spec.ref, "command": spec.argv[0]}},
            )
            return None

        output_readers = [
            asyncio.create_task(
                processes.log_output(stream, function=spec.ref, stream_name=name)
            )
            for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
        ]
        context = {"function": spec.ref, "pid": process.pid, "port": port}
        gave_up = False
        try:
            if await self._wait_until_responding(process):
                self._responding.set()
                logger.info("function process responding", extra={"ctx": context})
                await process.wait()
            else:
                gave_up = process.returncode is None
        finally:
            self._responding.clear()
            exit_code = await processes.terminate_group(process, grace_s=STOP_GRACE_S)
            await _finish_readers(output_readers)

        if gave_up:
            self._last_failure = (
                f"its process did not respond on port {port} within "
                f"{self._start_timeout_s:g} s"
            )
            logger.warning(
                "function process not responding, stopped it",
                extra={"ctx": {**context, "timeout_s": self._start_timeout_s}},
            )
        else:
            self._last_failure = f"its process exited with code {exit_code}"
        return exit_code

    async def _wait_until_responding(self, process: asyncio.subprocess.Process) -> bool:
        """Probe the process until it responds, exits, or the start timeout ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        url = self._base_url + HEALTH_PATH
        while process.returncode is None and loop.time() < deadline:
            try:
                async with self._session.get(url, timeout=probe_timeout) as response:
                    await response.read()
                return True
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(PROBE_INTERVAL_S)
        return False

    @contextlib.asynccontextmanager
    async def forward(
        self, invocation: Invocation
    ) -> AsyncIterator[InvocationResponse]:
        """Proxy `invocation` to the process; the response streams inside the block."""
        response = await self._send(invocation)
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

    async def _send(self, invocation: Invocation) -> aiohttp.ClientResponse:
        """Send the request, retrying once when the process refused the connection."""
        # NB: a refused connection means the request never reached the
        # process, so sending it again cannot run the function twice.
        for attempt in (1, 2):
            await self._wait_until_available()
            try:
                return await self._session.request(
                    invocation.method,
                    self._upstream_url(invocation),
                    headers=_upstream_headers(invocation),
                    data=invocation.body,
                    allow_redirects=False,
                    skip_auto_headers=_SKIP_AUTO_HEADERS,
                    timeout=aiohttp.ClientTimeout(total=self.spec.exec_timeout_s),
                )
            except TimeoutError as exc:
                raise FunctionTimeout(
                    f"Function {self.spec.ref} did not respond within its exec "
                    f"timeout of {self.spec.exec_timeout_s:g} s. Raise exec_timeout "
                    "in its envVars if it needs longer."
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                if attempt == 2:
                    raise FunctionUnavailable(
                        f"Function {self.spec.ref} refused the connection: {exc}."
                    ) from exc
                # Give the supervisor time to notice an exited process, so the
                # second attempt waits for its replacement.
                await asyncio.sleep(REFUSED_RETRY_DELAY_S)
            except aiohttp.ClientError as exc:
                raise FunctionFailed(
                    f"Function {self.spec.ref} failed to respond: {exc}."
                ) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _wait_until_available(self) -> None:
        """Return once the process responds; raise FunctionUnavailable otherwise."""
        if self._responding.is_set():
            return
        waiters = {
            asyncio.ensure_future(self._responding.wait()),
            asyncio.ensure_future(self._stopped.wait()),
        }
        await asyncio.wait(
            waiters, timeout=self._start_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        if self._responding.is_set():
            return
        if self._stopped.is_set():
            raise FunctionUnavailable(
                f"Function {self.spec.ref} was updated or deleted while the request "
                "waited for it to start. Send the request again."
            )
        raise FunctionUnavailable(
            f"Function {self.spec.ref} is not responding after "
            f"{self._start_timeout_s:g} s because {self._last_failure}. Its "
            "output is in the provider log."
        )

    def _upstream_url(self, invocation: Invocation) -> str:
        url = self._base_url + invocation.raw_path
        if invocation.query:
            url += "?" + invocation.query
        return url

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


def _upstream_headers(invocation: Invocation) -> CIMultiDict[str]:
    """Return the caller's headers for the upstream request, minus per-hop ones."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in end_to_end_headers(invocation.headers):
        # aiohttp writes Host and Content-Length for the bytes it sends.
        if name not in ("host", "content-length", "expect"):
            headers.add(canonical_header_name(name), value)
    original_host = dict(invocation.headers).get("host", "")
    if original_host and constants.FORWARDED_HOST not in headers:
        headers[constants.FORWARDED_HOST] = original_host
    if invocation.client_host and constants.FORWARDED_FOR not in headers:
        headers[constants.FORWARDED_FOR] = invocation.client_host
    return headers


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    """Wait briefly for the output readers to reach end of file, then cancel them."""
    # NB: a process that left the group (setsid) can keep a pipe open after
    # the group is killed; its output is then no longer logged.
    _, pending = await asyncio.wait(readers, timeout=1.0)
    for reader in pending:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
