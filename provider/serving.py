"""The start-up steps that every provider process shares.

`create_app` builds the provider's ASGI application over a backend, with the
auth token read from the settings' auth_token_file. `serve` binds the
listener, serves the application with the server of `provider.http_server`
until SIGTERM or SIGINT, and turns a failed lifespan startup into
ProviderStartError. The backends' own start and stop steps live in
`provider.local` and `provider.kubernetes`.
"""

import logging
from pathlib import Path
from typing import Protocol

from faashub import credentials
from provider import api
from provider.backend import ProviderBackend, ProviderStartError
from provider.http_server import bind_listener, build_server

logger = logging.getLogger(__name__)


class ProviderProcessSettings(Protocol):
    """The settings fields that every provider process reads at start-up."""

    host: str
    port: int
    auth_token_file: Path | None
    max_system_body_bytes: int


def create_app(
    backend: ProviderBackend, settings: ProviderProcessSettings
) -> api.ProviderApp:
    """Return the provider's ASGI application over `backend`.

    Raise CredentialsError when auth_token_file is set but cannot be read.
    """
    token = None
    if settings.auth_token_file is not None:
        token = credentials.read_token_file(
            settings.auth_token_file, setting="auth_token_file"
        )
    return api.create_app(
        backend,
        auth_token=token,
        max_system_body_bytes=settings.max_system_body_bytes,
    )


def serve(
    app: api.ProviderApp,
    settings: ProviderProcessSettings,
    *,
    kind: str,
    log: logging.Logger = logger,
) -> None:
    """Serve `app` on the settings' host and port until SIGTERM or SIGINT.

    `kind` names the provider in the log and in errors ("local",
    "Kubernetes"). Raise ProviderStartError when the listener cannot be
    bound or the API's lifespan startup failed.
    """
    listener = bind_listener(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    log.info(
        "%s provider listening", kind, extra={"ctx": {"address": f"{host}:{port}"}}
    )
    server = build_server(app, tune_gc_after_start=True)
    quiet = _QuietStartFailure(app)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)
    try:
        server.run(sockets=[listener])
    except SystemExit:
        # uvicorn exits this way when the lifespan startup failed.
        if isinstance(app.start_error, ProviderStartError):
            raise app.start_error from None
        if app.start_error is not None:
            raise ProviderStartError(
                f"The {kind} provider failed to start: {app.start_error}"
            ) from app.start_error
        raise
    finally:
        uvicorn_log.removeFilter(quiet)
        listener.close()


class _QuietStartFailure(logging.Filter):
    """Drop uvicorn's traceback of a start that failed with ProviderStartError.

    Such an error already names what failed and the fix, and the caller logs
    it. uvicorn would log the lifespan's whole traceback first, which buries
    it. Other start failures keep their traceback.
    """

    def __init__(self, app: api.ProviderApp) -> None:
        super().__init__()
        self._app = app

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(self._app.start_error, ProviderStartError)
            and record.levelno >= logging.ERROR
            and record.getMessage().startswith("Traceback")
        )
