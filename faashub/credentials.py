"""Gateway credentials: where components and the CLI find them, and how they look.

The gateway protects `/system/*` with HTTP basic auth as the OpenFaaS gateway
does: the user and password are the files `basic-auth-user` and
`basic-auth-password` in a secret mount folder, or come from settings. The
queue-worker, the connectors and the CLI send the same credentials.

`faashub up` generates credentials on its first start into
`<state dir>/credentials/` (a folder only the owner can read) and passes that
folder to its components. The CLI picks credentials for a gateway URL from,
in order: the FAASHUB_GATEWAY_USER and FAASHUB_GATEWAY_PASSWORD variables,
the store that `faashub login` writes, then the credentials of the hub on
this machine whose gateway URL matches.

`faashub up` also generates a provider token (`provider-token` in the same
folder), which the local provider requires as `Authorization: Bearer TOKEN`
and the gateway sends, so that other users of the machine cannot reach the
provider's unauthenticated port directly.

This module never logs a password and keeps it out of `repr`. It does not
check credentials; `gateway.auth` does that.
"""

import base64
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from faashub import errors

logger = logging.getLogger(__name__)

USER_FILE = "basic-auth-user"
PASSWORD_FILE = "basic-auth-password"
HUB_CREDENTIALS_DIR = "credentials"
# The gateway URL of the hub that wrote the credentials beside it.
HUB_GATEWAY_FILE = "gateway-url"
# The bearer token that the gateway sends to the provider of the hub.
PROVIDER_TOKEN_FILE = "provider-token"
# The token that the hub's embedded NATS server requires of every client.
NATS_TOKEN_FILE = "nats-token"
DEFAULT_USER = "admin"
LOGIN_STORE_NAME = "auth.json"

ENV_USER = "FAASHUB_GATEWAY_USER"
ENV_PASSWORD = "FAASHUB_GATEWAY_PASSWORD"
ENV_STATE_DIR = "FAASHUB_STATE_DIR"
ENV_LOGIN_STORE = "FAASHUB_AUTH_FILE"


class CredentialsError(errors.SettingsError):
    """Credentials are missing, incomplete or unreadable."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password for HTTP basic auth."""

    user: str
    password: str = field(repr=False)

    def authorization(self) -> str:
        """Return the value of an `Authorization: Basic ...` header."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Basic {token}"


def read_secret_mount(folder: Path) -> Credentials:
    """Read `basic-auth-user` and `basic-auth-password` from `folder`.

    A trailing newline is removed from each, as `kubectl create secret
    --from-file` and `echo` leave one. Raises CredentialsError when a file is
    missing or empty.
    """
    values: list[str] = []
    for name in (USER_FILE, PASSWORD_FILE):
        path = folder / name
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(
                f"Cannot read {path} ({exc.__class__.__name__}). The secret mount "
                f"folder must contain the files {USER_FILE} and {PASSWORD_FILE}."
            ) from exc
        if not value:
            raise CredentialsError(f"The credentials file {path} is empty.")
        values.append(value)
    return Credentials(values[0], values[1])


def configured_credentials(
    *, secret_mount_path: str, user: str, password: str, setting_prefix: str
) -> Credentials | None:
    """Return credentials from a secret mount folder, or from a user and password.

    The folder wins when both are set. Returns None when nothing is set and
    raises CredentialsError when only one of user and password is.
    `setting_prefix` names the settings in messages, such as "auth" or
    "gateway".
    """
    if secret_mount_path:
        return read_secret_mount(Path(secret_mount_path).expanduser())
    if not user and not password:
        return None
    if not user or not password:
        missing = "user" if not user else "password"
        raise CredentialsError(
            f"The {setting_prefix}_{missing} setting is empty while the other half "
            f"of the credentials is set. Set both --{setting_prefix}-user and "
            f"--{setting_prefix}-password, or --{setting_prefix}-secret-mount-path."
        )
    return Credentials(user, password)


def gateway_authorization(*, secret_mount_path: str, user: str, password: str) -> str:
    """Return the Authorization header a gateway client sends, or "" for none.

    The arguments are the gateway_secret_mount_path, gateway_user and
    gateway_password settings of the queue-worker and the connectors.
    """
    found = configured_credentials(
        secret_mount_path=secret_mount_path,
        user=user,
        password=password,
        setting_prefix="gateway",
    )
    return found.authorization() if found else ""


class InvocationCredentials:
    """Gateway credentials for invocations, sent only once the gateway requires them.

    A gateway that does not check credentials on `/function/` (OpenFaaS CE,
    or faashub without auth_invoke) would pass them on to the function. So
    invocations go without them until the gateway rejects one with 401, and
    carry them from then on.
    """

    def __init__(self, authorization: str) -> None:
        self._authorization = authorization
        self._required = False

    @property
    def header(self) -> str:
        """Return the Authorization value to send with an invocation, or ""."""
        return self._authorization if self._required else ""

    def require_after(self, status: int, *, context: Mapping[str, object]) -> bool:
        """Return True when `status` is the first 401, so the invocation is repeated.

        From then on `header` returns the credentials. `context` names the
        invocation in the log line.
        """
        if status != 401 or not self._authorization or self._required:
            return False
        self._required = True
        logger.info(
            "gateway requires credentials for invocations; sending them from now on",
            extra={"ctx": dict(context)},
        )
        return True


def hub_credentials_dir(state_dir: Path) -> Path:
    """Return the folder where `faashub up` keeps its generated credentials."""
    return state_dir / HUB_CREDENTIALS_DIR


def ensure_hub_credentials(state_dir: Path) -> Credentials:
    """Return the hub's credentials, generating them on the first start.

    The folder is made owner-only (0700) and each file 0600, also when they
    exist already, so a copied state folder does not stay readable by others.
    """
    folder = hub_credentials_dir(state_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    user_path = folder / USER_FILE
    password_path = folder / PASSWORD_FILE
    if not user_path.exists() or not password_path.exists():
        _write_private(user_path, DEFAULT_USER)
        _write_private(password_path, secrets.token_urlsafe(32))
    for path in (user_path, password_path):
        path.chmod(0o600)
    try:
        return read_secret_mount(folder)
    except CredentialsError as exc:
        raise CredentialsError(
            f"{exc} Delete {user_path} and {password_path}, and 'faashub up' "
            "generates new credentials, or write the user name and the password "
            "into them."
        ) from exc


def ensure_provider_token(state_dir: Path) -> Path:
    """Return the path of the hub's provider token, generating it on the first start.

    The file gets mode 0600 in the owner-only credentials folder, also when
    it exists already.
    """
    return _ensure_token(state_dir, PROVIDER_TOKEN_FILE)


def ensure_nats_token(state_dir: Path) -> Path:
    """Return the path of the embedded NATS server's token, as ensure_provider_token."""
    return _ensure_token(state_dir, NATS_TOKEN_FILE)


def read_nats_token(path: Path | None) -> str | None:
    """Return the token of the `nats_token_file` setting, or None when it is unset."""
    if path is None:
        return None
    return read_token_file(path, setting="nats_token_file")


def _ensure_token(state_dir: Path, name: str) -> Path:
    folder = hub_credentials_dir(state_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / name
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    path.chmod(0o600)
    return path


def read_token_file(path: Path, *, setting: str) -> str:
    """Return the one token in the file at `path`, without its trailing newline.

    `setting` names the setting or flag that gave the path, for messages.
    Raises CredentialsError when the file cannot be read or is empty.
    """
    try:
        token = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(
            f"Cannot read the token file {path} ({exc.__class__.__name__}). "
            f"Check --{setting.replace('_', '-')}."
        ) from exc
    if not token:
        raise CredentialsError(
            f"The token file {path} is empty. Put the token in it, or unset "
            f"--{setting.replace('_', '-')}."
        )
    return token


def record_hub_gateway(state_dir: Path, gateway_url: str) -> None:
    """Write the gateway URL that the hub's credentials belong to."""
    _write_private(hub_credentials_dir(state_dir) / HUB_GATEWAY_FILE, gateway_url)


def default_login_store(environ: Mapping[str, str]) -> Path:
    """Return `$FAASHUB_AUTH_FILE`, or `$XDG_CONFIG_HOME/faashub/auth.json`."""
    if environ.get(ENV_LOGIN_STORE):
        return Path(environ[ENV_LOGIN_STORE]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "faashub" / LOGIN_STORE_NAME


def save_login(store: Path, gateway_url: str, credentials: Credentials) -> None:
    """Store `credentials` for `gateway_url` in the owner-only login store."""
    entries = _read_login_store(store)
    entries[_gateway_key(gateway_url)] = {
        "user": credentials.user,
        "password": credentials.password,
    }
    store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(store, json.dumps({"auths": entries}, indent=2) + "\n")


def remove_login(store: Path, gateway_url: str) -> bool:
    """Remove the stored credentials of `gateway_url`; return whether there were any."""
    entries = _read_login_store(store)
    if entries.pop(_gateway_key(gateway_url), None) is None:
        return False
    _write_private(store, json.dumps({"auths": entries}, indent=2) + "\n")
    return True


def load_login(store: Path, gateway_url: str) -> Credentials | None:
    """Return the credentials stored for `gateway_url`, or None."""
    entry = _read_login_store(store).get(_gateway_key(gateway_url))
    if entry is None:
        return None
    return Credentials(entry["user"], entry["password"])


@dataclass(frozen=True, slots=True)
class FoundCredentials:
    """Credentials the CLI found, with where it found them.

    `source` is "variables", "login store" or "state folder", and `location`
    is the login store's file or the state folder, or None for variables.
    """

    credentials: Credentials
    source: Literal["variables", "login store", "state folder"]
    location: Path | None = None


def find_cli_credentials(
    gateway_url: str, environ: Mapping[str, str], *, default_state_dir: Path
) -> FoundCredentials | None:
    """Pick the credentials the CLI sends to `gateway_url`, or None.

    The order is: the FAASHUB_GATEWAY_USER and FAASHUB_GATEWAY_PASSWORD
    variables, the login store, then the hub in `$FAASHUB_STATE_DIR` (or
    `default_state_dir`) when it recorded this gateway URL.
    """
    from_env = configured_credentials(
        secret_mount_path="",
        user=environ.get(ENV_USER, ""),
        password=environ.get(ENV_PASSWORD, ""),
        setting_prefix="gateway",
    )
    if from_env is not None:
        return FoundCredentials(from_env, "variables")
    store = default_login_store(environ)
    stored = load_login(store, gateway_url)
    if stored is not None:
        return FoundCredentials(stored, "login store", store)
    state_dir = Path(environ.get(ENV_STATE_DIR) or default_state_dir).expanduser()
    from_hub = _hub_credentials_for(state_dir, gateway_url)
    if from_hub is not None:
        return FoundCredentials(from_hub, "state folder", state_dir)
    return None


def _hub_credentials_for(state_dir: Path, gateway_url: str) -> Credentials | None:
    folder = hub_credentials_dir(state_dir)
    try:
        recorded = (folder / HUB_GATEWAY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if _gateway_key(recorded) != _gateway_key(gateway_url):
        return None
    try:
        return read_secret_mount(folder)
    except CredentialsError:
        return None


def _gateway_key(gateway_url: str) -> str:
    key = gateway_url.strip().rstrip("/")
    # 127.0.0.1 and localhost reach the same hub.
    return key.replace("://localhost", "://127.0.0.1")


def _read_login_store(store: Path) -> dict[str, dict[str, str]]:
    try:
        text = store.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(
            f"Cannot read the login store {store} ({exc.strerror})."
        ) from exc
    try:
        document = json.loads(text)
        auths = document["auths"]
        return {
            str(url): {"user": str(entry["user"]), "password": str(entry["password"])}
            for url, entry in auths.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CredentialsError(
            f"The login store {store} is not valid: expected a JSON object "
            '{"auths": {GATEWAY_URL: {"user": ..., "password": ...}}}. Remove '
            "it and run 'faashub login' again."
        ) from exc


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only from the start."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
