"""Checks that `faashub deploy` runs on every function before it deploys any.

A stack deploy sends one request per function, so a function that the gateway
or the provider rejects half-way would leave the earlier ones deployed. These
checks find what the CLI can find without a server: the function and
namespace names and the label and annotation keys and values (the gateway's
Kubernetes rules, from `faashub.names`), the `exec_timeout` variable, the
`com.openfaas.scale.min` label, for cron functions the schedule, and the
fields that the provider's `FunctionDeployment` model checks (resource
quantities and keys, `readOnlyRootFilesystem`, repeated secrets).
`faashub deploy` then asks the gateway whether the secrets exist, and the
provider still checks what depends on it, such as a function's command.
"""

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from faashub import constants, errors, names
from faashub.async_annotations import check_async_annotations

LABEL_SCALE_MIN = "com.openfaas.scale.min"
# The cron connector's annotation, named here so that the CLI can check it
# without importing the connector.
ANNOTATION_SCHEDULE = "schedule"
# Model faults reported per function, as many as the provider reports.
MAX_MODEL_PROBLEMS = 5


def deployment_problems(deployment: Mapping[str, Any]) -> list[str]:
    """Return one message per invalid field of a FunctionDeployment body.

    An empty list means the CLI found nothing wrong.
    """
    service = str(deployment.get("service", ""))
    problems: list[str] = []
    _check(problems, partial(names.validate_label, service))
    namespace = str(deployment.get("namespace") or "")
    if namespace:
        _check(problems, partial(names.validate_label, namespace, what="namespace"))
    labels: dict[str, str] = dict(deployment.get("labels") or {})
    annotations: dict[str, str] = dict(deployment.get("annotations") or {})
    problems.extend(_metadata_problems(service, labels, annotations))
    env_vars: dict[str, str] = dict(deployment.get("envVars") or {})
    problems.extend(_exec_timeout_problems(service, env_vars))
    problems.extend(_scale_min_problems(service, labels))
    problems.extend(_schedule_problems(service, annotations))
    problems.extend(_async_annotation_problems(service, annotations))
    problems.extend(_model_problems(deployment))
    return problems


def _model_problems(deployment: Mapping[str, Any]) -> list[str]:
    """Check the body as the provider's FunctionDeployment model does."""
    # Imported here, so the other user commands do not load the provider
    # package and its models.
    from pydantic import ValidationError

    from provider.types import FunctionDeployment, validation_problems

    try:
        FunctionDeployment.model_validate(deployment)
    except ValidationError as exc:
        # The message lists each function's problems under its name.
        return [
            f"{problem}."
            for problem in validation_problems(exc, limit=MAX_MODEL_PROBLEMS)
        ]
    return []


def deployment_warnings(deployment: Mapping[str, Any]) -> list[str]:
    """Return one message per setting that is valid but likely not what was meant."""
    annotations: dict[str, str] = dict(deployment.get("annotations") or {})
    if ANNOTATION_SCHEDULE not in annotations:
        return []
    # Imported here, as in _schedule_problems.
    from connectors.core.topic_map import parse_topic_annotation
    from connectors.cron import constants as cron_constants

    topic = annotations.get(constants.ANNOTATION_TOPIC, "")
    if cron_constants.TOPIC in parse_topic_annotation(topic):
        return []
    service = str(deployment.get("service", ""))
    return [
        f"Function {service!r} has a {ANNOTATION_SCHEDULE!r} annotation, but its "
        f"{constants.ANNOTATION_TOPIC!r} annotation does not list "
        f"{cron_constants.TOPIC!r}, so the cron connector never runs it. Add "
        f"--annotation {constants.ANNOTATION_TOPIC}={cron_constants.TOPIC} if it "
        "should run on its schedule."
    ]


def _async_annotation_problems(service: str, annotations: dict[str, str]) -> list[str]:
    """Check the retry, concurrency and queue annotations as the provider does."""
    try:
        check_async_annotations(service, annotations)
    except ValueError as exc:
        return [str(exc)]
    return []


def _check(problems: list[str], validate: Callable[[], object]) -> None:
    """Run `validate` and add its InvalidFunctionName message to `problems`."""
    try:
        validate()
    except errors.InvalidFunctionName as exc:
        problems.append(str(exc))


def _metadata_problems(
    service: str, labels: dict[str, str], annotations: dict[str, str]
) -> list[str]:
    # `validate_metadata` stops at the first bad key, so each key is checked
    # on its own to name every one. The size limit is for all annotations.
    problems: list[str] = []
    for key, value in labels.items():
        _check(
            problems,
            partial(names.validate_metadata, {key: value}, {}, function=service),
        )
    for key, value in annotations.items():
        _check(
            problems,
            partial(names.validate_metadata, {}, {key: value}, function=service),
        )
    if not problems:
        _check(
            problems,
            partial(names.validate_metadata, {}, annotations, function=service),
        )
    return problems


def _exec_timeout_problems(service: str, env_vars: dict[str, str]) -> list[str]:
    # The local provider's parser follows the OpenFaaS watchdogs: whole
    # seconds, or a Go duration such as 1m30s. It is imported here, so the
    # other user commands do not load the provider package.
    from provider.local.definition import parse_duration_s

    value = env_vars.get(constants.ENV_EXEC_TIMEOUT)
    if value is None:
        return []
    try:
        if not value.isascii():
            raise ValueError(value)
        parse_duration_s(value)
    except ValueError:
        return [
            f"Function {service!r} has {constants.ENV_EXEC_TIMEOUT}={value!r}, "
            "which is not a valid timeout. Use whole seconds (30), a duration "
            "such as 30s, 1m30s or 500ms, or 0 for no timeout."
        ]
    return []


def _scale_min_problems(service: str, labels: dict[str, str]) -> list[str]:
    value = labels.get(LABEL_SCALE_MIN)
    if value is None or value == "":
        return []
    text = value.strip()
    if text.isascii() and text.isdigit():
        return []
    return [
        f"Function {service!r} has label {LABEL_SCALE_MIN}={value!r}, which is "
        "not a whole number of replicas. Use 0 or more, written in digits."
    ]


def _schedule_problems(service: str, annotations: dict[str, str]) -> list[str]:
    topic = annotations.get(constants.ANNOTATION_TOPIC)
    if topic is None:
        return []
    # Imported here, so only a deploy with a topic annotation loads the cron
    # connector's parsers (and APScheduler). The gateway checks with the same
    # parsers at deploy.
    from connectors.core.topic_map import parse_topic_annotation
    from connectors.cron import constants as cron_constants
    from connectors.cron.errors import InvalidSchedule
    from connectors.cron.schedule import parse_schedule

    if cron_constants.TOPIC not in parse_topic_annotation(topic):
        return []
    try:
        parse_schedule(annotations)
    except InvalidSchedule as exc:
        return [f"Invalid cron schedule for function {service!r}: {exc}"]
    return []
