"""Deployed functions on disk, so that they survive a provider restart.

Each function is one JSON file, `<state_dir>/functions/<name>.<namespace>.json`,
holding its FunctionDeployment, the time of its first deploy and its replica
count, so a scale survives a restart. A write goes
to a temporary file in the same folder, is fsynced and then renamed over the
old file, so a crash leaves either the old or the new definition, never half
of one. A file that cannot be read is logged with its path and skipped, so
one bad file does not stop the provider from starting. The log line names
the fields at fault and the JSON error position, never the file's content,
because a function's envVars often hold tokens. A file is read with
`STORED_CONTEXT`, so a definition stored before a check was added still
loads.

The invocation count is not stored: it starts at zero with each provider
process.
"""

import contextlib
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ValidationError

from provider.backend import StorageError
from provider.types import STORED_CONTEXT, FunctionDeployment

logger = logging.getLogger(__name__)

FUNCTIONS_FOLDER: Final = "functions"
FILE_SUFFIX: Final = ".json"
TEMP_SUFFIX: Final = ".tmp"


class StoredFunction(BaseModel):
    """One deployed function as written to disk."""

    deployment: FunctionDeployment
    created_at: datetime
    replicas: int | None = None
    """The replicas to run. None means the deployment's count (scale.min, else 1)."""


class FunctionStore:
    """The folder of function files under the provider's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / FUNCTIONS_FOLDER

    def path_of(self, name: str, namespace: str) -> Path:
        """Return the file of the function `name` in `namespace`."""
        return self.folder / f"{name}.{namespace}{FILE_SUFFIX}"

    def load_all(self) -> list[tuple[Path, StoredFunction]]:
        """Read every function file, skipping (and logging) those that are invalid.

        Raise StorageError when the folder itself cannot be created or listed.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            paths = sorted(self.folder.glob("*" + FILE_SUFFIX))
            # Temporary files are left only by a save that crashed.
            for temp_path in self.folder.glob(".*" + TEMP_SUFFIX):
                temp_path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"Cannot use the function folder {self.folder}: {exc}. Check that "
                "the state folder is writable, or pass another --state-dir.",
                summary="Cannot use the function folder.",
            ) from exc
        loaded = []
        for path in paths:
            try:
                data = path.read_bytes()
                stored = StoredFunction.model_validate_json(
                    data, context=STORED_CONTEXT
                )
            except OSError as exc:
                logger.warning(
                    "skipped unreadable function file: %s",
                    exc.strerror or type(exc).__name__,
                    extra={"ctx": {"path": str(path)}},
                )
                continue
            except ValidationError as exc:
                logger.warning(
                    "skipped invalid function file: %s",
                    describe_validation_error(exc),
                    extra={"ctx": {"path": str(path)}},
                )
                continue
            loaded.append((path, stored))
        return loaded

    def save(self, stored: StoredFunction) -> None:
        """Write a function's file atomically; raise StorageError on failure."""
        deployment = stored.deployment
        path = self.path_of(deployment.service, deployment.namespace)
        data = stored.model_dump_json(indent=2).encode()
        temp_path: Path | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=self.folder,
                prefix=f".{path.name}.",
                suffix=TEMP_SUFFIX,
                delete=False,
            ) as temp_file:
                temp_path = Path(temp_file.name)
                temp_file.write(data)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_path, path)
            temp_path = None
            _fsync_folder(self.folder)
        except OSError as exc:
            raise StorageError(
                f"Cannot save function {deployment.service!r} to {path}: {exc}.",
                summary=f"Cannot save function {deployment.service!r}.",
            ) from exc
        finally:
            if temp_path is not None:
                with contextlib.suppress(OSError):
                    temp_path.unlink()

    def delete(self, name: str, namespace: str) -> None:
        """Remove a function's file; raise StorageError on failure."""
        path = self.path_of(name, namespace)
        try:
            path.unlink(missing_ok=True)
            _fsync_folder(self.folder)
        except OSError as exc:
            raise StorageError(
                f"Cannot delete function file {path}: {exc}.",
                summary=f"Cannot delete the file of function {name!r}.",
            ) from exc


def _fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def describe_validation_error(exc: ValidationError, *, max_errors: int = 3) -> str:
    """Describe `exc` by field and message only, without the input.

    `str(exc)` quotes the start and end of the input, which for a function
    file can be an envVars value, so it must not reach a log.
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:max_errors]:
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}" if location else error["msg"])
    if exc.error_count() > max_errors:
        problems.append(f"and {exc.error_count() - max_errors} more errors")
    return "; ".join(problems)
