"""HTTP load generators: wrk, and a small aiohttp client when wrk is missing.

Both send POST requests with a body of `body_bytes` bytes over a fixed number
of keep-alive connections for a fixed time. They report requests per second,
the latency at the 50th and 99th percentile, and the count of failed
requests (a status outside 2xx, or a socket error).

wrk is the load generator of record: it is written in C, so on a 2-core
machine it leaves more CPU to the servers under test than any Python client.
The aiohttp client exists so that the smoke mode also runs on a machine
without wrk. Its numbers are lower and not comparable with wrk's, so the
harness names the generator in every record.
"""

import asyncio
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiohttp

from bench.errors import BenchmarkError

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
WRK_TIMEOUT_S = 5
# Upper bound on the requests one aiohttp run sends, whatever its duration,
# so that its latency list stays small.
AIOHTTP_MAX_REQUESTS = 1_000_000

LoadChoice = Literal["auto", "wrk", "aiohttp"]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Throughput, latency and failures of one load run."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    """Responses outside 2xx plus socket errors and timeouts."""


class LoadGenerator(Protocol):
    """Sends POST load to one URL for a fixed time."""

    @property
    def name(self) -> str:
        """The generator and its version, as records and reports show it."""
        ...

    def run(
        self,
        url: str,
        *,
        connections: int,
        duration_s: float,
        body_bytes: int,
        callback_url: str = "",
    ) -> LoadResult: ...


class WrkLoad:
    """Load from wrk, with `wrk_post.lua` building the requests."""

    def __init__(self, binary: str) -> None:
        self._binary = binary
        self.name = f"wrk {_wrk_version(binary)}"

    def run(
        self,
        url: str,
        *,
        connections: int,
        duration_s: float,
        body_bytes: int,
        callback_url: str = "",
    ) -> LoadResult:
        duration = max(1, round(duration_s))
        argv = [
            self._binary,
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            f"{WRK_TIMEOUT_S}s",
            "-s",
            str(WRK_SCRIPT),
            url,
        ]
        env = {
            **os.environ,
            "BENCH_BODY_BYTES": str(body_bytes),
            "BENCH_CALLBACK_URL": callback_url,
        }
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                timeout=duration + 30,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchmarkError(
                f"wrk did not finish a {duration} s run against {url} within "
                f"{duration + 30} s."
            ) from exc
        if completed.returncode != 0:
            raise BenchmarkError(
                f"wrk failed against {url} with exit code {completed.returncode}: "
                f"{completed.stderr.strip() or completed.stdout.strip()}"
            )
        return parse_wrk_output(completed.stdout, url=url)


_DURATION_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk_output(output: str, *, url: str) -> LoadResult:
    """Read the totals and the latency distribution from wrk's report."""
    totals = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    percentiles = dict(
        re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s|m))$", output, re.M)
    )
    if totals is None or rate is None or set(percentiles) != {"50", "99"}:
        raise BenchmarkError(
            f"Cannot read wrk's report for {url}; wrk printed:\n{output.strip()}"
        )
    failed = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        failed += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        failed += sum(int(count) for count in socket_errors.groups())
    duration_ms = float(totals.group(2)) * _DURATION_UNITS_MS[totals.group(3)]
    return LoadResult(
        requests=int(totals.group(1)),
        duration_s=duration_ms / 1000,
        requests_per_s=float(rate.group(1)),
        p50_ms=_duration_ms(percentiles["50"]),
        p99_ms=_duration_ms(percentiles["99"]),
        failed=failed,
    )


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise BenchmarkError(f"Cannot read the duration {text!r} in wrk's report.")
    return float(match.group(1)) * _DURATION_UNITS_MS[match.group(2)]


def _wrk_version(binary: str) -> str:
    # wrk prints its version banner for -v and exits with status 1.
    completed = subprocess.run(
        [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    match = re.search(r"wrk\s+(\S+)", completed.stdout + completed.stderr)
    return match.group(1) if match else "(unknown version)"


class AiohttpLoad:
    """Load from aiohttp tasks in this process: the fallback when wrk is missing."""

    name = f"aiohttp {aiohttp.__version__} (fallback load generator)"

    def run(
        self,
        url: str,
        *,
        connections: int,
        duration_s: float,
        body_bytes: int,
        callback_url: str = "",
    ) -> LoadResult:
        return asyncio.run(
            _drive(
                url,
                connections=connections,
                duration_s=duration_s,
                body=b"x" * body_bytes,
                callback_url=callback_url,
            )
        )


async def _drive(
    url: str, *, connections: int, duration_s: float, body: bytes, callback_url: str
) -> LoadResult:
    """Keep `connections` requests in flight until the time or the count runs out."""
    headers = {"Content-Type": "application/octet-stream"}
    if callback_url:
        headers["X-Callback-Url"] = callback_url
    latencies_s: list[float] = []
    failed = 0
    started = time.perf_counter()
    deadline = started + duration_s

    async def keep_sending(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while (
            time.perf_counter() < deadline and len(latencies_s) < AIOHTTP_MAX_REQUESTS
        ):
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies_s.append(time.perf_counter() - sent)
            if not ok:
                failed += 1

    timeout = aiohttp.ClientTimeout(total=WRK_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(keep_sending(session) for _ in range(connections)))
    elapsed_s = time.perf_counter() - started
    if not latencies_s:
        raise BenchmarkError(f"The aiohttp load generator sent no request to {url}.")
    latencies_s.sort()
    return LoadResult(
        requests=len(latencies_s),
        duration_s=elapsed_s,
        requests_per_s=len(latencies_s) / elapsed_s,
        p50_ms=percentile(latencies_s, 50) * 1000,
        p99_ms=percentile(latencies_s, 99) * 1000,
        failed=failed,
    )


def percentile(sorted_values: list[float], rank: float) -> float:
    """Return the nearest-rank percentile `rank` (0-100) of ascending values."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    index = max(math.ceil(rank / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[index]


def choose_load_generator(choice: LoadChoice, *, smoke: bool) -> LoadGenerator:
    """Return the load generator for `choice`, or raise BenchmarkError.

    `auto` picks wrk when it is on PATH. Without wrk, the smoke mode falls
    back to aiohttp and a full run stops, because its numbers would not be
    comparable with earlier records.
    """
    wrk = shutil.which("wrk")
    if choice == "aiohttp":
        return AiohttpLoad()
    if wrk is not None:
        return WrkLoad(wrk)
    if choice == "auto" and smoke:
        return AiohttpLoad()
    raise BenchmarkError(
        "wrk is not on PATH. Install it (apt-get install wrk), run with --smoke, "
        "or pass --load aiohttp to measure with the slower aiohttp client."
    )
