"""Function and namespace names as OpenFaaS spells them.

A caller may address a function as `NAME` or `NAME.NAMESPACE`; the name and
the namespace are split at the last dot, as the OpenFaaS gateway does. Both
parts must be DNS-1123 labels, because on Kubernetes they become object names.
"""

import re
from typing import NamedTuple

from faashub import errors
from faashub.constants import DEFAULT_NAMESPACE

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_MAX_LENGTH = 63


class FunctionRef(NamedTuple):
    """A function's name and namespace."""

    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.name}.{self.namespace}"


def validate_label(value: str, *, what: str = "function name") -> str:
    """Return `value` if it is a DNS-1123 label, else raise InvalidFunctionName."""
    if len(value) > DNS1123_MAX_LENGTH or not DNS1123_LABEL.match(value):
        raise errors.InvalidFunctionName(
            f"Invalid {what} {value!r}: use at most {DNS1123_MAX_LENGTH} lowercase "
            "letters, digits and '-', starting and ending with a letter or digit."
        )
    return value


def parse_function_ref(
    value: str, *, default_namespace: str = DEFAULT_NAMESPACE
) -> FunctionRef:
    """Split `NAME` or `NAME.NAMESPACE` and validate both parts."""
    name, dot, namespace = value.rpartition(".")
    if not dot:
        name, namespace = value, default_namespace
    validate_label(name)
    validate_label(namespace, what="namespace")
    return FunctionRef(name, namespace)
