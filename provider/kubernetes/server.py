"""The `faashub provider kubernetes` process: the provider API over the cluster.

`run` binds the listener and serves the API until SIGTERM or SIGINT, with
the server of `provider.http_server` (uvicorn, no access log, log streams
ended first on shutdown). The API's lifespan starts the backend, which
connects to the cluster, and stops it, which ends the watch. Functions keep
running on the cluster when the provider stops.
"""

import logging

from faashub import credentials
from faashub.settings import KubernetesProviderSettings
from provider import api
from provider.backend import ProviderStartError
from provider.http_server import bind_listener, build_server
from provider.kubernetes.backend import KubernetesBackend

logger = logging.getLogger(__name__)


def create_app(settings: KubernetesProviderSettings) -> api.ProviderApp:
    """Return the provider's ASGI application over a new Kubernetes backend.

    Raises CredentialsError when auth_token_file is set but cannot be read.
    """
    token = None
    if settings.auth_token_file is not None:
        token = credentials.read_token_file(
            settings.auth_token_file, setting="auth_token_file"
        )
    return api.create_app(
        KubernetesBackend(settings),
        auth_token=token,
        max_system_body_bytes=settings.max_system_body_bytes,
    )


def run(settings: KubernetesProviderSettings) -> None:
    """Serve the Kubernetes provider until SIGTERM or SIGINT.

    Raise ProviderStartError when the listener cannot be bound, the cluster
    configuration cannot be loaded or the first list of functions fails.
    """
    app = create_app(settings)
    listener = bind_listener(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    logger.info(
        "kubernetes provider listening", extra={"ctx": {"address": f"{host}:{port}"}}
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
                f"The Kubernetes provider failed to start: {app.start_error}"
            ) from app.start_error
        raise
    finally:
        listener.close()
