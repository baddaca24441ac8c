"""Send an exact number of async calls to the gateway, then print what happened.

Run by the backlog benchmark as a process of its own, so that the benchmark
can sample memory while the calls go in:

    python -m bench.accept_load --url URL --count N [--concurrency C] \\
        [--body-bytes B] [--callback-url URL] [--time-limit-s S]

`--concurrency` tasks share one aiohttp session and POST a body of
`--body-bytes` to `--url` until `--count` requests were sent or the time
limit passed. A 202 response counts as accepted; any other status, or a
request that fails, counts as failed and is not sent again. wrk sends for a
fixed time, not a fixed count, which is why the backlog does not use it.
The process prints one JSON line: sent, accepted, failed, elapsed_s and the
first error seen, if any.
"""

import argparse
import asyncio
import json
import sys
import time

import aiohttp
import uvloop

REQUEST_TIMEOUT_S = 30.0


async def send_calls(
    *,
    url: str,
    count: int,
    concurrency: int,
    body: bytes,
    callback_url: str,
    time_limit_s: float,
) -> dict[str, int | float | str]:
    """POST `count` calls to `url` with `concurrency` in flight; return the counts."""
    headers = {"Content-Type": "application/octet-stream"}
    if callback_url:
        headers["X-Callback-Url"] = callback_url
    sent = accepted = failed = 0
    first_error = ""
    started = time.monotonic()
    deadline = started + time_limit_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def keep_sending(session: aiohttp.ClientSession) -> None:
        nonlocal sent, accepted, failed, first_error
        while sent < count and time.monotonic() < deadline:
            sent += 1
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 202:
                        accepted += 1
                        continue
                    problem = f"status {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            failed += 1
            first_error = first_error or problem

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(keep_sending(session) for _ in range(concurrency)))
    return {
        "sent": sent,
        "accepted": accepted,
        "failed": failed,
        "elapsed_s": time.monotonic() - started,
        "first_error": first_error,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="The async-function URL.")
    parser.add_argument("--count", type=int, required=True, help="Calls to send.")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="Requests in flight (default 64)."
    )
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=1024,
        help="Body size in bytes (default 1024).",
    )
    parser.add_argument(
        "--callback-url",
        default="",
        help="X-Callback-Url of every call (default none).",
    )
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=3600.0,
        help="Stop sending after this many seconds (default 3600).",
    )
    args = parser.parse_args()
    result = uvloop.run(
        send_calls(
            url=args.url,
            count=args.count,
            concurrency=args.concurrency,
            body=b"x" * args.body_bytes,
            callback_url=args.callback_url,
            time_limit_s=args.time_limit_s,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
