"""Entry point of the `faashub` command.

Component commands (`up`, `gateway`, `queue-worker`, `provider local`) run a
long-lived process; user commands (`deploy`, `invoke`, `list`, `describe`,
`remove`) talk to a running gateway. Components are imported only when their
command runs, so `faashub --help` and the user commands start fast, and the
user commands (with httpx and YAML) are left out of a component's process,
which keeps each long-lived component a few MiB smaller.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from faashub import __version__, errors, logs, settings, tracing
from faashub.cli import options
from faashub.connector_settings import (
    CronConnectorSettings,
    KafkaConnectorSettings,
    SqsConnectorSettings,
)


def _run_gateway(args: argparse.Namespace) -> int:
    from gateway import server

    gateway_settings = options.load_settings(settings.GatewaySettings, args)
    logs.configure(
        level=gateway_settings.log_level, log_format=gateway_settings.log_format
    )
    _run_traced(lambda: server.run(gateway_settings), service_name="faashub-gateway")
    return 0


def _run_queue_worker(args: argparse.Namespace) -> int:
    from queue_worker import server

    worker_settings = options.load_settings(settings.WorkerSettings, args)
    logs.configure(
        level=worker_settings.log_level, log_format=worker_settings.log_format
    )
    _run_traced(
        lambda: server.run(worker_settings), service_name="faashub-queue-worker"
    )
    return 0


def _run_local_provider(args: argparse.Namespace) -> int:
    from provider.local import server

    provider_settings = options.load_settings(settings.LocalProviderSettings, args)
    logs.configure(
        level=provider_settings.log_level, log_format=provider_settings.log_format
    )
    server.run(provider_settings)
    return 0


def _run_kubernetes_provider(args: argparse.Namespace) -> int:
    from provider.kubernetes import server

    provider_settings = options.load_settings(settings.KubernetesProviderSettings, args)
    logs.configure(
        level=provider_settings.log_level, log_format=provider_settings.log_format
    )
    server.run(provider_settings)
    return 0


def _run_kafka_connector(args: argparse.Namespace) -> int:
    from connectors.kafka import server

    connector_settings = options.load_settings(KafkaConnectorSettings, args)
    logs.configure(
        level=connector_settings.log_level, log_format=connector_settings.log_format
    )
    _run_traced(
        lambda: server.run(connector_settings), service_name="faashub-connector-kafka"
    )
    return 0


def _run_sqs_connector(args: argparse.Namespace) -> int:
    from connectors.sqs import server

    connector_settings = options.load_settings(SqsConnectorSettings, args)
    logs.configure(
        level=connector_settings.log_level, log_format=connector_settings.log_format
    )
    _run_traced(
        lambda: server.run(connector_settings), service_name="faashub-connector-sqs"
    )
    return 0


def _run_cron_connector(args: argparse.Namespace) -> int:
    from connectors.cron import server

    connector_settings = options.load_settings(CronConnectorSettings, args)
    logs.configure(
        level=connector_settings.log_level, log_format=connector_settings.log_format
    )
    _run_traced(
        lambda: server.run(connector_settings), service_name="faashub-connector-cron"
    )
    return 0


def _run_traced(run: Callable[[], None], *, service_name: str) -> None:
    """Run a component with trace export, when the OTEL_* variables ask for it.

    The spans still queued are exported after the component stops.
    """
    tracing.setup(default_service_name=service_name)
    try:
        run()
    finally:
        tracing.shutdown()


def _run_hub(args: argparse.Namespace) -> int:
    from faashub.cli import hub

    hub_settings = options.load_settings(settings.HubSettings, args)
    logs.configure(level=hub_settings.log_level, log_format=hub_settings.log_format)
    return hub.run(hub_settings)


# Commands that start a long-lived component process.
COMPONENT_COMMANDS = frozenset(
    {"up", "gateway", "queue-worker", "provider", "connector"}
)


def build_parser(*, user_commands: bool = True) -> argparse.ArgumentParser:
    """Return the command-line parser; without `user_commands`, components only."""
    parser = argparse.ArgumentParser(
        prog="faashub",
        description="Event connectors and durable async invocation for serverless "
        "functions, compatible with the OpenFaaS API.",
    )
    parser.add_argument("--version", action="version", version=f"faashub {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def component(
        name: str,
        help_text: str,
        settings_class: type[settings.CommonSettings],
        handler: Callable[[argparse.Namespace], int],
        parent: "argparse._SubParsersAction[argparse.ArgumentParser]" = commands,
    ) -> None:
        command = parent.add_parser(name, help=help_text, description=help_text)
        options.add_settings_arguments(command, settings_class)
        command.set_defaults(handler=handler)

    component(
        "up",
        "Start the whole hub on this machine: embedded NATS, local provider, "
        "gateway and queue-worker.",
        settings.HubSettings,
        _run_hub,
    )
    component(
        "gateway",
        "Run the gateway alone (OpenFaaS REST API).",
        settings.GatewaySettings,
        _run_gateway,
    )
    component(
        "queue-worker",
        "Run one queue-worker alone.",
        settings.WorkerSettings,
        _run_queue_worker,
    )
    provider = commands.add_parser(
        "provider", help="Run a faas-provider backend alone."
    )
    backends = provider.add_subparsers(dest="backend", metavar="BACKEND", required=True)
    component(
        "local",
        "Run the local provider, which runs functions as processes on this machine.",
        settings.LocalProviderSettings,
        _run_local_provider,
        backends,
    )
    component(
        "kubernetes",
        "Run the Kubernetes provider, which runs functions as Deployments on a "
        "cluster, configured in-cluster or from a kubeconfig.",
        settings.KubernetesProviderSettings,
        _run_kubernetes_provider,
        backends,
    )
    connector = commands.add_parser("connector", help="Run an event connector alone.")
    connectors = connector.add_subparsers(
        dest="connector", metavar="CONNECTOR", required=True
    )
    component(
        "kafka",
        "Run the Kafka connector: records on Kafka topics invoke the functions "
        "whose topic annotation names them.",
        KafkaConnectorSettings,
        _run_kafka_connector,
        connectors,
    )
    component(
        "sqs",
        "Run the SQS connector: messages on SQS queues invoke the functions "
        "whose topic annotation names the queue.",
        SqsConnectorSettings,
        _run_sqs_connector,
        connectors,
    )
    component(
        "cron",
        "Run the cron connector: functions with topic cron-function run at the "
        "times of their schedule annotation.",
        CronConnectorSettings,
        _run_cron_connector,
        connectors,
    )
    if user_commands:
        from faashub.cli import dlq_commands, login, provider_commands
        from faashub.cli import user_commands as user_command_module

        user_command_module.add_commands(commands)
        provider_commands.add_commands(commands)
        dlq_commands.add_commands(commands)
        login.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `faashub` command and return its exit status.

    When the reader of stdout goes away (`faashub dlq show ID | head`), the
    command stops with status 1 and no traceback, as the Python manual's
    note on SIGPIPE in the `signal` module recommends.
    """
    try:
        try:
            return _run(argv)
        finally:
            # Flushed here, so that a closed pipe raises inside this block
            # and not at interpreter exit. A SystemExit of --help passes too.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that
        # the unwritten rest is dropped without a second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _run(argv: Sequence[str] | None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    starts_component = bool(arguments) and arguments[0] in COMPONENT_COMMANDS
    parser = build_parser(user_commands=not starts_component)
    args = parser.parse_args(arguments)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except errors.FaashubError as exc:
        print(f"faashub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
