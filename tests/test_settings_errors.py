"""Settings errors name the setting and never show a secret value."""

import argparse

import pytest
from pydantic_settings import BaseSettings

from faashub import errors
from faashub.cli import options
from faashub.connector_settings import CronConnectorSettings
from faashub.settings import GatewaySettings, LocalProviderSettings

SECRET = "settings-secret-7f3a"


def settings_error(settings_class: type[BaseSettings], *flags: str) -> str:
    """Return the SettingsError message of loading `settings_class` from `flags`."""
    parser = argparse.ArgumentParser()
    options.add_settings_arguments(parser, settings_class)
    args = parser.parse_args(list(flags))
    with pytest.raises(errors.SettingsError) as raised:
        options.load_settings(settings_class, args)
    return str(raised.value)


def load(*flags: str) -> str:
    return settings_error(CronConnectorSettings, "--gateway-password", SECRET, *flags)


def test_model_error_hides_every_value() -> None:
    message = load("--retry-min-wait-s", "10", "--retry-max-wait-s", "1")

    assert "retry_max_wait_s (1) is below retry_min_wait_s (10)" in message
    assert "raise --retry-max-wait-s / FAASHUB_RETRY_MAX_WAIT_S" in message
    assert SECRET not in message


def test_field_error_shows_its_value() -> None:
    message = load("--health-port", "99999")

    assert "--health-port / FAASHUB_HEALTH_PORT" in message
    assert "(got 99999)" in message
    assert SECRET not in message


def test_log_file_size_below_minimum_named() -> None:
    message = settings_error(LocalProviderSettings, "--log-max-file-bytes", "10")

    assert "--log-max-file-bytes / FAASHUB_LOG_MAX_FILE_BYTES" in message
    assert "10 is below the minimum of 131072 bytes" in message
    assert "(got 10)" in message


def test_status_ttl_below_window_rejected() -> None:
    message = settings_error(
        GatewaySettings, "--status-ttl-s", "20", "--duplicate-window-s", "120"
    )

    assert "status_ttl_s (20) is below duplicate_window_s (120)" in message
    assert "raise --status-ttl-s / FAASHUB_STATUS_TTL_S" in message
    assert "lower --duplicate-window-s / FAASHUB_DUPLICATE_WINDOW_S" in message
