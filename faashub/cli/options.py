"""Command-line flags generated from the settings classes.

Every field of a settings class becomes a `--field-name` flag whose help text
gives the description, the environment variable and the default. A flag that
is not given leaves the value to the environment variable or the default.
"""

import argparse
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import pydantic_core
from pydantic import BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from faashub import errors
from faashub.settings import ENV_PREFIX, DefaultRule, setting_name

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_class: type[BaseSettings]
) -> None:
    """Add one flag per field of `settings_class` to `parser`."""
    group = parser.add_argument_group(
        "settings", f"Each flag can also be set by its {ENV_PREFIX}* variable."
    )
    for field_name, info in settings_class.model_fields.items():
        flag = "--" + field_name.replace("_", "-")
        env_name = ENV_PREFIX + field_name.upper()
        default = _default_text(info)
        # argparse formats help with %, so a literal percent sign must be doubled.
        help_text = f"{info.description} (env {env_name}{default})".replace("%", "%%")
        annotation = info.annotation
        if annotation is bool:
            group.add_argument(
                flag,
                dest=field_name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        choices = _literal_choices(annotation)
        group.add_argument(
            flag,
            dest=field_name,
            default=argparse.SUPPRESS,
            choices=choices,
            type=_argument_type(annotation, info.metadata),
            help=help_text,
        )


def load_settings(
    settings_class: type[SettingsT], args: argparse.Namespace
) -> SettingsT:
    """Build settings from the flags in `args`, the environment and the defaults."""
    given = {
        name: getattr(args, name)
        for name in settings_class.model_fields
        if hasattr(args, name)
    }
    try:
        return settings_class(**given)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            _describe_problem(settings_class, problem)
            for problem in exc.errors(include_url=False)
        )
        raise errors.SettingsError(f"Invalid settings: {problems}.") from exc


def _describe_problem(
    settings_class: type[BaseSettings], problem: pydantic_core.ErrorDetails
) -> str:
    """Describe one settings error, with the value given unless it may be secret.

    An error of the whole model (empty location) has every setting as its
    input, passwords included, and a SecretStr field's value is a secret, so
    neither value is shown.
    """
    location = problem["loc"]
    field = settings_class.model_fields.get(str(location[0])) if location else None
    if not location:
        return problem["msg"]
    text = f"{_setting_name(location)}: {problem['msg']}"
    if field is None or _is_secret(field.annotation):
        return text
    return f"{text} (got {problem.get('input')!r})"


def _default_text(info: FieldInfo) -> str:
    """Return ", default ..." for a flag's help, or "" to leave the default out.

    A computed default shows the value it gives now and its DefaultRule. A
    secret shows only an empty default, and never a SecretStr repr.
    """
    if info.default_factory is not None:
        rules = [item.rule for item in info.metadata if isinstance(item, DefaultRule)]
        if not rules:
            return ""
        current = info.get_default(call_default_factory=True)
        return f", default {current}, which is {rules[0]}"
    if _is_secret(info.annotation):
        default = info.default
        if isinstance(default, pydantic.SecretStr):
            default = default.get_secret_value()
        return ", default ''" if not default else ""
    return f", default {info.default!r}"


def _is_secret(annotation: Any) -> bool:
    if annotation is pydantic.SecretStr:
        return True
    return pydantic.SecretStr in typing.get_args(annotation)


def _setting_name(location: tuple[int | str, ...]) -> str:
    return setting_name(str(location[0]))


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(choice) for choice in typing.get_args(annotation)]
    return None


def _argument_type(annotation: Any, metadata: list[Any]) -> Any:
    if annotation in (int, float, Path):
        return annotation
    # A before-validator of a choice field, such as the one that upper-cases
    # log levels, must run before argparse checks the choices.
    before = [item.func for item in metadata if isinstance(item, BeforeValidator)]
    if before and _literal_choices(annotation) is not None:
        [normalize] = before
        return normalize
    if isinstance(annotation, types.UnionType):
        return str
    return str
