"""Secrets of the local backend: the stored values and the files functions read.

Layout under the state folder, where every folder has mode 0700::

    secrets/values/<secret>                              mode 0600: the value
    secrets/functions/<function>.<namespace>/<secret>    mode 0400: a copy

A function that names secrets reads them from its own folder, whose path it
gets in OPENFAAS_SECRETS_DIR. The path stays the same across updates and
restarts, and the folder contains exactly the secrets the function names. Every
write goes to a temporary file in the target folder, which is fsynced and
renamed over the old file, so a reader sees the old value or the new one and
never a part of either.

The permissions keep other users of the machine out. Function processes run
as the provider's user, so they are not kept from each other's secrets: the
local provider does not isolate functions.

This module never logs a value. It raises StorageError when the disk fails.
Which secrets exist and which functions use them is the backend's bookkeeping.
"""

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from faashub import names
from faashub.names import FunctionRef
from provider.backend import StorageError

logger = logging.getLogger(__name__)

SECRETS_FOLDER: Final = "secrets"
VALUES_FOLDER: Final = "values"
FUNCTIONS_FOLDER: Final = "functions"
FOLDER_MODE: Final = 0o700
VALUE_FILE_MODE: Final = 0o600
FUNCTION_FILE_MODE: Final = 0o400
TEMP_PREFIX: Final = "."
TEMP_SUFFIX: Final = ".tmp"


class SecretStore:
    """The secret values and the per-function secret folders on disk."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.absolute() / SECRETS_FOLDER
        self.values_folder = self.root / VALUES_FOLDER
        self.functions_folder = self.root / FUNCTIONS_FOLDER

    def prepare(self) -> None:
        """Create the folders with owner-only modes and remove crashed writes.

        Raise StorageError when a folder cannot be created or listed.
        """
        try:
            self._ensure_folders()
            for temp_path in self.root.glob(f"**/{TEMP_PREFIX}*{TEMP_SUFFIX}"):
                temp_path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"Cannot use the secrets folder {self.root}: {exc}. Check that the "
                "state folder is writable, or pass another --state-dir.",
                summary="Cannot use the secrets folder.",
            ) from exc

    def names(self) -> list[str]:
        """Return the names of the stored secrets, sorted."""
        try:
            entries = list(self.values_folder.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(
                f"Cannot list the secrets in {self.values_folder}: {exc}.",
                summary="Cannot list the secrets.",
            ) from exc
        return sorted(
            entry.name for entry in entries if not entry.name.startswith(TEMP_PREFIX)
        )

    def exists(self, name: str) -> bool:
        """Return whether a secret of that name is stored."""
        return self._value_path(name).is_file()

    def read(self, name: str) -> bytes:
        """Return a stored secret's value, or raise StorageError if it is unreadable."""
        path = self._value_path(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(
                f"Cannot read secret {name!r} from {path}: {exc}.",
                summary=f"Cannot read secret {name!r}.",
            ) from exc

    def write(self, name: str, value: bytes) -> None:
        """Store a secret's value atomically, readable by the owner only."""
        path = self._value_path(name)
        try:
            self._ensure_folders()
            _write_atomic(path, value, mode=VALUE_FILE_MODE)
        except OSError as exc:
            raise StorageError(
                f"Cannot store secret {name!r} in {path}: {exc}.",
                summary=f"Cannot store secret {name!r}.",
            ) from exc

    def delete(self, name: str) -> None:
        """Remove a stored secret, or raise StorageError on failure."""
        path = self._value_path(name)
        try:
            path.unlink(missing_ok=True)
            _fsync_folder(path.parent)
        except OSError as exc:
            raise StorageError(
                f"Cannot delete secret {name!r} at {path}: {exc}.",
                summary=f"Cannot delete secret {name!r}.",
            ) from exc

    def function_folder(self, ref: FunctionRef) -> Path:
        """Return the folder whose path a function gets in OPENFAAS_SECRETS_DIR."""
        return self.functions_folder / f"{ref.name}.{ref.namespace}"

    def write_function_folder(self, ref: FunctionRef, secrets: Iterable[str]) -> None:
        """Make the function's folder hold a copy of exactly `secrets`.

        A function that names no secret gets no folder. Raise StorageError when
        a value cannot be read or a file written.
        """
        folder = self.function_folder(ref)
        values = {name: self.read(name) for name in secrets}
        if not values:
            self.remove_function_folder(ref)
            return
        try:
            self._ensure_folders()
            _ensure_private_folder(folder)
            for name, value in values.items():
                _write_atomic(folder / name, value, mode=FUNCTION_FILE_MODE)
            for stale in folder.iterdir():
                if stale.name not in values:
                    stale.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"Cannot write the secret files of function {ref} in {folder}: {exc}.",
                summary=f"Cannot write the secret files of function {ref}.",
            ) from exc

    def write_function_secret(self, ref: FunctionRef, name: str, value: bytes) -> None:
        """Replace one secret's file in a function's folder."""
        path = self.function_folder(ref) / names.validate_label(name, what="secret")
        try:
            _ensure_private_folder(path.parent)
            _write_atomic(path, value, mode=FUNCTION_FILE_MODE)
        except OSError as exc:
            raise StorageError(
                f"Cannot update secret {name!r} of function {ref} in {path}: {exc}.",
                summary=f"Cannot update secret {name!r} of function {ref}.",
            ) from exc

    def remove_function_folder(self, ref: FunctionRef) -> None:
        """Delete a function's secret folder, if it has one."""
        folder = self.function_folder(ref)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(
                f"Cannot delete the secret files of function {ref} in {folder}: {exc}.",
                summary=f"Cannot delete the secret files of function {ref}.",
            ) from exc

    def _ensure_folders(self) -> None:
        for folder in (self.root, self.values_folder, self.functions_folder):
            _ensure_private_folder(folder)

    def _value_path(self, name: str) -> Path:
        # NB: a DNS-1123 label has no "/" or "..", so the path stays inside.
        return self.values_folder / names.validate_label(name, what="secret name")


def _ensure_private_folder(folder: Path) -> None:
    """Create `folder` if needed and set its mode to 0700, whatever the umask."""
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(folder, FOLDER_MODE)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` through a fsynced temporary file and a rename."""
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX
    )
    temp_path: Path | None = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fchmod(temp_file.fileno(), mode)
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
        temp_path = None
        _fsync_folder(path.parent)
    finally:
        if temp_path is not None:
            with contextlib.suppress(OSError):
                temp_path.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
