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
# Characters of an invalid value that an error message shows, so that a huge
# value never reaches a response or a log line whole.
SHOWN_CHARS = 80


class FunctionRef(NamedTuple):
    """A function's name and namespace."""

    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.name}.{self.namespace}"


def excerpt(value: str) -> str:
    """Return `value`, or its first SHOWN_CHARS characters and "..." if longer."""
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."


def validate_label(value: str, *, what: str = "function name") -> str:
    """Return `value` if it is a DNS-1123 label, else raise InvalidFunctionName."""
    if len(value) > DNS1123_MAX_LENGTH or not DNS1123_LABEL.match(value):
        raise errors.InvalidFunctionName(
            f"Invalid {what} {excerpt(value)!r}: use at most {DNS1123_MAX_LENGTH} "
            "lowercase letters, digits and '-', starting and ending with a letter "
            "or digit."
        )
    return value


# Kubernetes rules for label and annotation keys ("qualified names"): an
# optional DNS-1123 subdomain prefix of at most 253 characters and a slash,
# then a name of at most 63 alphanumerics, '-', '_' and '.', starting and
# ending with an alphanumeric. Label values follow the name rule, or are empty.
DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUALIFIED_NAME_MAX_LENGTH = 63
# Kubernetes's limit on the size of all annotations of one object, keys included.
ANNOTATIONS_MAX_BYTES = 256 * 1024


def validate_qualified_name(key: str, *, what: str, function: str = "") -> str:
    """Return `key` if it is a Kubernetes qualified name.

    Raises InvalidFunctionName naming the key, its `function` if given, and
    the rule it breaks.
    """
    prefix, slash, name = key.rpartition("/")
    problem = ""
    if slash and (
        len(prefix) > DNS1123_SUBDOMAIN_MAX_LENGTH
        or not DNS1123_SUBDOMAIN.match(prefix)
    ):
        problem = (
            f"the prefix before '/' must be a DNS subdomain of at most "
            f"{DNS1123_SUBDOMAIN_MAX_LENGTH} lowercase characters"
        )
    elif len(name) > QUALIFIED_NAME_MAX_LENGTH or not QUALIFIED_NAME.match(name):
        problem = (
            f"the name must have at most {QUALIFIED_NAME_MAX_LENGTH} letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    if problem:
        owner = f" of function {function!r}" if function else ""
        raise errors.InvalidFunctionName(
            f"Invalid {what} {excerpt(key)!r}{owner}: {problem}."
        )
    return key


def validate_metadata(
    labels: dict[str, str], annotations: dict[str, str], *, function: str
) -> None:
    """Check label and annotation keys, label values and the annotations' size.

    Raises InvalidFunctionName naming the first value that Kubernetes would
    reject, so nothing is stored that a Kubernetes provider could not deploy.
    """
    for key, value in labels.items():
        validate_qualified_name(key, what="label key", function=function)
        if value and (
            len(value) > QUALIFIED_NAME_MAX_LENGTH or not QUALIFIED_NAME.match(value)
        ):
            raise errors.InvalidFunctionName(
                f"Invalid value {excerpt(value)!r} of label {key!r} of function "
                f"{function!r}: use at most {QUALIFIED_NAME_MAX_LENGTH} letters, "
                "digits, '-', '_' and '.', starting and ending with a letter or digit."
            )
    size = 0
    for key, value in annotations.items():
        validate_qualified_name(key, what="annotation key", function=function)
        size += len(key.encode()) + len(value.encode())
    if size > ANNOTATIONS_MAX_BYTES:
        raise errors.InvalidFunctionName(
            f"The annotations of function {function!r} have {size} bytes, above "
            f"the Kubernetes limit of {ANNOTATIONS_MAX_BYTES} bytes."
        )


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
