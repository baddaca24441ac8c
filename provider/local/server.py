"""The `faashub provider local` process: the provider API over the local backend.

`run` binds the listener, serves the API with the server of
`provider.http_server` and blocks until SIGTERM or SIGINT. Then the server
stops as that module describes, and the API's lifespan stops the backend,
which terminates every function process.
`create_app` builds the same application for tests that serve it themselves.
"""

import logging

from faashub import credentials
from faashub.settings import LocalProviderSettings
from provider import api
from provider.backend import ProviderStartError
from provider.http_server import ProviderServer, bind_listener, build_server
from provider.local.backend import LocalBackend

__all__ = ["ProviderServer", "bind_listener", "build_server", "create_app", "run"]

logger = logging.getLogger(__name__)


def create_app(settings: LocalProviderSettings) -> api.ProviderApp:
    """Return the provider's ASGI application over a new local backend.

    Raises CredentialsError when auth_token_file is set but cannot be read.
    """
    token = None
    if settings.auth_token_file is not None:
        token = credentials.read_token_file(
            settings.auth_token_file, setting="auth_token_file"
        )
    return api.create_app(
        LocalBackend(settings),
        auth_token=token,
        max_system_body_bytes=settings.max_system_body_bytes,
    )


def run(settings: LocalProviderSettings) -> None:
    """Serve the local provider until SIGTERM or SIGINT, then stop its functions.

    Raise ProviderStartError when the listener cannot be bound or the stored
    functions cannot be loaded.
    """
    app = create_app(settings)
    listener = bind_listener(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    logger.info(
        "local provider listening", extra={"ctx": {"address": f"{host}:{port}"}}
    )
    server = build_server(app, tune_gc_after_start=True)
    try:
        server.run(sockets=[listener])
    except SystemExit:
        # uvicorn exits this way when the lifespan startup failed.
        if isinstance(app.start_error, ProviderStartError):
            raise app.start_error from None
        if app.start_error is not None:
            raise ProviderStartError(
                f"The local provider failed to start: {app.start_error}"
            ) from app.start_error
        raise
    finally:
        listener.close()
