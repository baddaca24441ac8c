"""The `faashub provider kubernetes` process: the provider API over the cluster.

`run` binds the listener and serves the API until SIGTERM or SIGINT, with
the server of `provider.http_server` (uvicorn, no access log, log streams
ended first on shutdown) through `provider.serving`. The API's lifespan
starts the backend, which connects to the cluster, and stops it, which ends
the watch. Functions keep running on the cluster when the provider stops.
"""

import logging

from faashub.settings import KubernetesProviderSettings
from provider import api, serving
from provider.kubernetes.backend import KubernetesBackend

logger = logging.getLogger(__name__)


def create_app(settings: KubernetesProviderSettings) -> api.ProviderApp:
    """Return the provider's ASGI application over a new Kubernetes backend.

    Raises CredentialsError when auth_token_file is set but cannot be read.
    """
    return serving.create_app(KubernetesBackend(settings), settings)


def run(settings: KubernetesProviderSettings) -> None:
    """Serve the Kubernetes provider until SIGTERM or SIGINT.

    Raise ProviderStartError when the listener cannot be bound, the cluster
    configuration cannot be loaded or the first list of functions fails.
    """
    serving.serve(create_app(settings), settings, kind="Kubernetes", log=logger)
