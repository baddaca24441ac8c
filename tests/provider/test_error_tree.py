"""The error tree drawn in provider.backend's docstring, checked against the code.

Each class in the tree must exist, subclass the class it is drawn under, and
get the status code drawn beside it from the provider API.
"""

import re

import pytest

import provider.backend
from provider import api
from provider.backend import InvocationFailed, StorageError
from provider.kubernetes.backend import ApiServerUnavailable
from provider.kubernetes.pod_logs import InstanceNotFound

# Errors that provider.backend does not define, by name.
ELSEWHERE = {
    "ApiServerUnavailable": ApiServerUnavailable,
    "InstanceNotFound": InstanceNotFound,
}
# A tree line: the drawing, a class name, and a status code unless the error
# has none (the process exits, or only the subclasses have one).
TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<status>\d{3})?")


def drawn_tree() -> list[tuple[str, str | None, int | None]]:
    """Return (class name, parent name, status) for each class in the drawing."""
    docstring = provider.backend.__doc__ or ""
    drawing = docstring.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    entries: list[tuple[str, str | None, int | None]] = []
    parents: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        match = TREE_LINE.match(line.strip("\n")[4:])
        if match is None:
            continue
        depth = len(match["indent"])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        parent = parents[-1][1] if parents else None
        status = int(match["status"]) if match["status"] else None
        entries.append((match["name"], parent, status))
        parents.append((depth, match["name"]))
    return entries


def error_class(name: str) -> type[Exception]:
    found = ELSEWHERE.get(name) or getattr(provider.backend, name, None)
    assert isinstance(found, type), f"{name} is drawn but not defined"
    assert issubclass(found, Exception)
    return found


def instance_of(error_type: type[Exception]) -> Exception:
    if issubclass(error_type, StorageError):
        return error_type("message", summary="summary")
    return error_type("message")


def test_tree_lists_every_error() -> None:
    drawn = {name for name, _, _ in drawn_tree()}

    defined = {
        name
        for name, value in vars(provider.backend).items()
        if isinstance(value, type) and issubclass(value, provider.backend.ProviderError)
    }

    assert defined | set(ELSEWHERE) == drawn


@pytest.mark.parametrize(
    ("name", "parent", "status"),
    [pytest.param(*entry, id=entry[0]) for entry in drawn_tree()],
)
def test_tree_matches_code(name: str, parent: str | None, status: int | None) -> None:
    error_type = error_class(name)
    if parent is not None:
        assert issubclass(error_type, error_class(parent))
    if status is None:
        return
    if issubclass(error_type, InvocationFailed):
        assert error_type.status_code == status
    else:
        assert api._status_of(instance_of(error_type)) == status
