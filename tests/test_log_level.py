"""`--log-level` and FAASHUB_LOG_LEVEL take level names in any case."""

import pytest

from faashub import settings
from faashub.cli import options
from faashub.cli.main import build_parser
from faashub.connector_settings import (
    CronConnectorSettings,
    KafkaConnectorSettings,
    SqsConnectorSettings,
)

# Every command that takes --log-level, and the settings class it loads.
COMMANDS = [
    pytest.param(["up"], settings.HubSettings, id="up"),
    pytest.param(["gateway"], settings.GatewaySettings, id="gateway"),
    pytest.param(["queue-worker"], settings.WorkerSettings, id="queue-worker"),
    pytest.param(
        ["provider", "local"], settings.LocalProviderSettings, id="provider-local"
    ),
    pytest.param(
        ["provider", "kubernetes"],
        settings.KubernetesProviderSettings,
        id="provider-kubernetes",
    ),
    pytest.param(["connector", "kafka"], KafkaConnectorSettings, id="kafka"),
    pytest.param(["connector", "sqs"], SqsConnectorSettings, id="sqs"),
    pytest.param(["connector", "cron"], CronConnectorSettings, id="cron"),
]


@pytest.mark.parametrize(("command", "settings_class"), COMMANDS)
@pytest.mark.parametrize("level_name", ["debug", "Warning", "ERROR"])
def test_log_level_flag_any_case(
    command: list[str], settings_class: type[settings.CommonSettings], level_name: str
) -> None:
    args = build_parser(user_commands=False).parse_args(
        [*command, "--log-level", level_name]
    )

    loaded = options.load_settings(settings_class, args)

    assert loaded.log_level == level_name.upper()


@pytest.mark.parametrize("level_name", ["info", "Error"])
def test_log_level_variable_any_case(
    level_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAASHUB_LOG_LEVEL", level_name)

    assert settings.GatewaySettings().log_level == level_name.upper()


def test_unknown_log_level_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser(user_commands=False)

    with pytest.raises(SystemExit):
        parser.parse_args(["gateway", "--log-level", "verbose"])

    assert "invalid choice" in capsys.readouterr().err
