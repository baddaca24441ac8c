"""The `faashub provider local` process: the provider API over the local backend.

`run` binds the listener, serves the API with the server of
`provider.http_server` (through `provider.serving`) and blocks until SIGTERM
or SIGINT. Then the server stops as that module describes, and the API's
lifespan stops the backend, which terminates every function process.
`create_app` builds the same application for tests that serve it themselves.
"""

import logging

from faashub.settings import LocalProviderSettings
from provider import api, serving
from provider.http_server import ProviderServer, bind_listener, build_server
from provider.local.backend import LocalBackend

__all__ = ["ProviderServer", "bind_listener", "build_server", "create_app", "run"]

logger = logging.getLogger(__name__)


def create_app(settings: LocalProviderSettings) -> api.ProviderApp:
    """Return the provider's ASGI application over a new local backend.

    Raises CredentialsError when auth_token_file is set but cannot be read.
    """
    return serving.create_app(LocalBackend(settings), settings)


def run(settings: LocalProviderSettings) -> None:
    """Serve the local provider until SIGTERM or SIGINT, then stop its functions.

    Raise ProviderStartError when the listener cannot be bound or the stored
    functions cannot be loaded.
    """
    serving.serve(create_app(settings), settings, kind="local", log=logger)
