"""SQS connector: messages/s from a prefilled queue to a no-op function.

Both sides drain the same number of 1 KiB messages from a queue on the same
moto SQS server (`moto_server`, in memory) and invoke the same no-op
function process:

* `baseline`: this module run as `python -m bench.benchmarks.sqs_connector`,
  a raw aioboto3 loop that receives up to 10 messages, POSTs each body to
  the function directly, all at once, and deletes the batch, then repeats.
  There is no retry, no visibility extension and no topic map: it is the
  least work that drains a queue into a function;
* `faashub`: `faashub connector sqs` with its defaults (64 messages in
  flight, batches of 10), reading the function's `topic` annotation from the
  gateway and invoking it through the gateway and the provider, as it does
  in production.

Each run fills a new queue first, then starts the drainer and polls the
queue's message counts every POLL_INTERVAL_S until it is empty or the time
limit passes. The rate is the messages drained divided by the time from the
last poll that found the queue untouched to the poll that found it empty.
That leaves out the drainer's start-up, all but one poll interval at most.

moto handles every SQS call in Python. In a full run of this benchmark on a
2-core machine, moto used about 16 ms of CPU per message and either drainer
less than 1 ms, so the SQS server limits both sides and the drain-rate ratio
says little. The drainer's CPU per message shows the connector's own cost
beside the raw loop's.
"""

import argparse
import asyncio
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import stack
from bench.errors import BenchmarkError
from bench.harness import (
    FAASHUB,
    Benchmark,
    Context,
    Measure,
    Metric,
    Sample,
    Target,
)
from bench.processes import (
    LOOPBACK,
    CpuMeter,
    Servers,
    cpu_per_call_us,
    free_port,
)

BODY_BYTES = 1024
BATCH_SIZE = 10
POLL_INTERVAL_S = 0.1
REGION = "us-east-1"
# Credentials that only the local moto server receives.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
TOPIC_ANNOTATION = "topic"


@dataclass(frozen=True, slots=True)
class _Scale:
    messages: int
    time_limit_s: float


# moto's work per ReceiveMessage call grows with the queue's length: a plain
# boto3 receive-and-delete loop drained 300 messages in 2.8 s and 1000 in
# 34 s (moto_server 5.2.5, 2-core machine). So the full run stays at a
# few hundred messages per queue.
FULL = _Scale(messages=500, time_limit_s=120)
SMOKE = _Scale(messages=60, time_limit_s=60)


class SqsConnectorBenchmark(Benchmark):
    name = "sqs-connector"
    title = "messages from a prefilled SQS queue (moto) to a no-op function"
    default_runs = 3
    metrics = (
        Metric("messages_per_s", "drain rate", "messages/s"),
        Metric("drain_s", "first to last message", "s"),
        Metric("completed", "messages drained", "count", compare=False),
        Metric("cpu_us_drainer", "CPU per message, drainer", "us"),
        Metric("cpu_us_moto", "CPU per message, moto server", "us"),
        Metric("cpu_us_total", "CPU per message, drainer and moto", "us"),
    )
    targets = (
        Target(
            "drain rate at least 0.8 of the raw loop",
            "messages_per_s",
            "ratio_at_least",
            0.8,
        ),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            messages=scale.messages,
            time_limit_s=scale.time_limit_s,
            body_bytes=BODY_BYTES,
            batch_size=BATCH_SIZE,
        )
        servers = context.servers
        moto = _start_moto(servers)
        hub = stack.start_hub(servers, work_dir=context.work_dir, also_ready=(moto,))
        gateway = hub.gateway
        function_url = stack.deploy_noop_function(gateway.url)

        def measure(side: str, run: int) -> Sample:
            queue_url = _filled_queue(moto.url, count=scale.messages)
            queue_name = queue_url.rsplit("/", 1)[-1]
            if side == FAASHUB:
                _subscribe(gateway.url, function_url, queue_name)
                drainer = _start_connector(
                    servers, moto_url=moto.url, gateway_url=gateway.url, queue=queue_url
                )
            else:
                drainer = _start_raw_loop(
                    servers,
                    moto_url=moto.url,
                    queue=queue_url,
                    function_url=function_url,
                    scale=scale,
                )
            try:
                sample = _wait_until_drained(
                    servers,
                    drainer,
                    moto=moto,
                    queue_url=queue_url,
                    expected=scale.messages,
                    time_limit_s=scale.time_limit_s,
                )
            finally:
                servers.stop(drainer.process)
            if sample["completed"] < scale.messages:
                context.notes.append(
                    f"run {run + 1} {side}: {sample['completed']:.0f} of "
                    f"{scale.messages} messages drained within "
                    f"{scale.time_limit_s:g} s; the rate covers those only."
                )
            return sample

        return measure


def _start_moto(servers: Servers) -> stack.Component:
    beside_python = Path(sys.executable).with_name("moto_server")
    command = (
        str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    )
    if command is None:
        raise BenchmarkError(
            "moto_server not found: install the test extra (moto[server]) in the "
            "project's virtualenv."
        )
    port = free_port()
    process = servers.start("moto", [command, "-H", LOOPBACK, "-p", str(port)])
    return stack.Component("moto", process, f"http://{LOOPBACK}:{port}", port)


def _sqs_client(moto_url: str) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def _filled_queue(moto_url: str, *, count: int) -> str:
    """Create a new queue with `count` messages of BODY_BYTES; return its URL."""
    client = _sqs_client(moto_url)
    name = f"bench-{uuid.uuid4().hex[:12]}"
    url: str = client.create_queue(QueueName=name)["QueueUrl"]
    body = "x" * BODY_BYTES
    for start in range(0, count, BATCH_SIZE):
        entries = [
            {"Id": str(index), "MessageBody": body}
            for index in range(min(BATCH_SIZE, count - start))
        ]
        response = client.send_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise BenchmarkError(
                f"Sending messages to queue {name} failed: "
                f"{response['Failed'][:1]}; see the moto log."
            )
    return url


def _remaining(client: Any, queue_url: str) -> int:
    attributes = client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
        ],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _subscribe(gateway_url: str, function_url: str, queue_name: str) -> None:
    """Give the no-op function the run's queue as its `topic` annotation."""
    deployment = stack.function_deployment(
        stack.NOOP_FUNCTION,
        script=stack.NOOP_FUNCTION_SCRIPT,
        image="bench/noop",
        function_url=function_url,
        annotations={TOPIC_ANNOTATION: queue_name},
    )
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        response = client.put(f"{gateway_url}/system/functions", json=deployment)
    if response.status_code not in (200, 202):
        raise BenchmarkError(
            f"Updating the no-op function's topic annotation failed with status "
            f"{response.status_code}: {response.text.strip()}"
        )


def _start_connector(
    servers: Servers, *, moto_url: str, gateway_url: str, queue: str
) -> stack.Component:
    return stack.start_connector(
        servers,
        "sqs",
        name="sqs-connector",
        gateway_url=gateway_url,
        options=(
            "--sqs-queues",
            queue,
            "--endpoint-url",
            moto_url,
            "--region",
            REGION,
            "--log-level",
            "WARNING",
        ),
        env=FAKE_CREDENTIALS,
    )


def _start_raw_loop(
    servers: Servers, *, moto_url: str, queue: str, function_url: str, scale: _Scale
) -> stack.Component:
    return stack.start_module(
        servers,
        "raw-sqs-loop",
        "bench.benchmarks.sqs_connector",
        "--endpoint-url",
        moto_url,
        "--queue-url",
        queue,
        "--function-url",
        f"{function_url}/",
        "--count",
        str(scale.messages),
        "--time-limit-s",
        str(scale.time_limit_s),
        env=FAKE_CREDENTIALS,
    )


def _wait_until_drained(
    servers: Servers,
    drainer: stack.Component,
    *,
    moto: stack.Component,
    queue_url: str,
    expected: int,
    time_limit_s: float,
) -> Sample:
    """Poll the queue until it is empty, the drainer exits or time runs out."""
    client = _sqs_client(moto.url)
    deadline = time.monotonic() + time_limit_s

    meter = CpuMeter({"drainer": drainer.process.pid, "moto": moto.process.pid})
    # The drain starts after the last poll that found the queue untouched; a
    # fast drainer may empty a small queue before the next poll.
    untouched_s = time.monotonic()
    meter.start()
    remaining = expected
    while True:
        remaining = _remaining(client, queue_url)
        now_s = time.monotonic()
        if remaining == expected:
            untouched_s = now_s
            meter.start()
        if remaining == 0 or drainer.process.poll() is not None or now_s > deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    end_s = time.monotonic()
    cpu_used = meter.stop()

    drained = expected - remaining
    if drained < 2:
        raise BenchmarkError(
            f"{drainer.name} took {drained} of {expected} messages within "
            f"{time_limit_s:g} s, too few for a rate; see its log in "
            f"{servers.log_path(drainer.name)}."
        )
    drain_s = end_s - untouched_s
    return {
        "messages_per_s": drained / drain_s,
        "drain_s": drain_s,
        "completed": drained,
        **{
            key: value
            for key, value in cpu_per_call_us(cpu_used, drained).items()
            if key in ("cpu_us_drainer", "cpu_us_moto", "cpu_us_total")
        },
    }


# The raw baseline loop, run as its own process -------------------------------


async def raw_loop(
    *,
    endpoint_url: str,
    queue_url: str,
    function_url: str,
    count: int,
    time_limit_s: float,
) -> dict[str, float]:
    """Receive, POST and delete until `count` messages are deleted or time ends."""
    import aioboto3
    import aiohttp

    deleted = 0
    deadline = time.monotonic() + time_limit_s
    session = aioboto3.Session()
    async with (
        session.client("sqs", endpoint_url=endpoint_url, region_name=REGION) as sqs,
        aiohttp.ClientSession() as http,
    ):

        async def post(body: str) -> None:
            async with http.post(function_url, data=body.encode()) as response:
                await response.read()

        while deleted < count and time.monotonic() < deadline:
            response = await sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=BATCH_SIZE, WaitTimeSeconds=1
            )
            messages = response.get("Messages", [])
            if not messages:
                continue
            await asyncio.gather(*(post(message["Body"]) for message in messages))
            result = await sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(messages)
                ],
            )
            deleted += len(result.get("Successful", []))
    return {"deleted": deleted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmarks.sqs_connector",
        description="The baseline of the sqs-connector benchmark: a raw "
        "receive, POST, delete loop.",
    )
    parser.add_argument("--endpoint-url", required=True, help="SQS endpoint.")
    parser.add_argument("--queue-url", required=True, help="Queue to drain.")
    parser.add_argument("--function-url", required=True, help="URL to POST to.")
    parser.add_argument("--count", type=int, required=True, help="Messages to drain.")
    parser.add_argument(
        "--time-limit-s", type=float, default=240.0, help="Seconds to stop after."
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        raw_loop(
            endpoint_url=args.endpoint_url,
            queue_url=args.queue_url,
            function_url=args.function_url,
            count=args.count,
            time_limit_s=args.time_limit_s,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


BENCHMARK = SqsConnectorBenchmark()

if __name__ == "__main__":
    sys.exit(main())
