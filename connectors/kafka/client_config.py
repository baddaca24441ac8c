"""Connection options shared by the consumer and the producer.

`client_options(settings)` returns the aiokafka keyword arguments for the
bootstrap servers, SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS (a CA,
and a client certificate and key for mutual TLS). Files are read here, once,
so a missing or unreadable file fails at start with its path in the message.
The password is passed to aiokafka and never logged.
"""

import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from faashub import errors
from faashub.connector_settings import KafkaConnectorSettings, broker_list


def client_options(settings: KafkaConnectorSettings) -> dict[str, Any]:
    """Return the aiokafka arguments that connect to the configured brokers."""
    options: dict[str, Any] = {"bootstrap_servers": broker_list(settings.brokers)}
    uses_sasl = bool(settings.sasl_mechanism)
    if settings.uses_tls:
        options["ssl_context"] = tls_context(settings)
    options["security_protocol"] = {
        (False, False): "PLAINTEXT",
        (True, False): "SSL",
        (False, True): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }[(settings.uses_tls, uses_sasl)]
    if uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = sasl_password(settings)
    return options


def sasl_password(settings: KafkaConnectorSettings) -> str:
    """Return the SASL password from the setting or from its file."""
    if settings.sasl_password_file is None:
        return settings.sasl_password.get_secret_value()
    path = settings.sasl_password_file
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.SettingsError(
            f"Cannot read the SASL password file {path}: {_reason(exc)}. "
            "Check --sasl-password-file."
        ) from exc


def tls_context(settings: KafkaConnectorSettings) -> ssl.SSLContext:
    """Return the TLS context: the system CAs or --tls-ca-file, and a client cert."""
    for flag, path in (
        ("--tls-ca-file", settings.tls_ca_file),
        ("--tls-cert-file", settings.tls_cert_file),
        ("--tls-key-file", settings.tls_key_file),
    ):
        if path is not None and not path.is_file():
            raise errors.SettingsError(
                f"The file {path} given by {flag} does not exist."
            )
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=_text(settings.tls_ca_file),
            certfile=_text(settings.tls_cert_file),
            keyfile=_text(settings.tls_key_file),
        )
    except (ssl.SSLError, OSError) as exc:
        raise errors.SettingsError(
            f"Cannot load the TLS files (CA {settings.tls_ca_file}, certificate "
            f"{settings.tls_cert_file}, key {settings.tls_key_file}): "
            f"{_reason(exc)}. Check that each is a PEM file and that the key "
            "matches the certificate."
        ) from exc
    return context


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
