"""Calls to the Kubernetes API, off the event loop, with one error type.

The official `kubernetes` client is synchronous (urllib3), so `KubeApi.call`
runs each call in a bounded thread pool and returns the response body as
plain JSON (dicts with the API's camelCase keys). Plain JSON skips the
client's model classes, which matters when the cache holds thousands of
Deployments. Every failure, an error status or a transport error, becomes
one `ApiError` carrying the status and the API's own message, and the
backend turns that into the provider error its caller expects.

`load_api_client` reads the cluster configuration: a kubeconfig file when
one is named, else the in-cluster service account, else the default
kubeconfig. Its clients make no retries, so each request waits at most one
connect timeout and one read timeout. This module does not decide what to
call or how to map errors to HTTP statuses.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION

from provider.backend import ProviderStartError

logger = logging.getLogger(__name__)

# Seconds to connect to the API server and to wait for one non-watch response.
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 30.0
# Seconds between two WARNING lines about the same kind of failed API request.
# While the API server is down every request fails alike, and the repeats in
# between are logged at DEBUG.
FAILURE_WARNING_INTERVAL_S: Final = 30.0
# urllib3 (2.x) retries a failed GET 3 times by default, so one request could
# wait 4 read timeouts. A failed request fails at once, and its caller decides
# whether to send it again.
API_RETRIES: Final = 0

JsonObject = dict[str, Any]


# The `reason` of an ApiError with status 0: the request got no response.
TIMED_OUT: Final = "Timeout"
UNREACHABLE: Final = "Unreachable"


class ApiError(Exception):
    """A failed Kubernetes API call: its HTTP status (0 for none) and message.

    Status 0 is a transport failure, and `reason` is then TIMED_OUT for a
    response that did not arrive within the read timeout, else UNREACHABLE.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


def load_api_client(*, kubeconfig: str, context: str) -> tuple[client.ApiClient, str]:
    """Return an API client for the configured cluster and where its settings came from.

    The second value names the source for error messages: the kubeconfig
    file or the in-cluster service account. Raise ProviderStartError when no
    configuration can be loaded.
    """
    configuration = _new_configuration()
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context or None,
                client_configuration=configuration,
            )
            source = f"kubeconfig {kubeconfig}"
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                source = "the in-cluster service account"
            except ConfigException:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    context=context or None, client_configuration=configuration
                )
                source = f"kubeconfig {KUBE_CONFIG_DEFAULT_LOCATION}"
    except (ConfigException, OSError) as exc:
        raise ProviderStartError(
            f"Cannot load the Kubernetes configuration: {exc}. Run the provider "
            "in a pod with a service account, or name a kubeconfig file with "
            "--kubeconfig (FAASHUB_KUBECONFIG)."
        ) from exc
    return client.ApiClient(configuration), source


def api_client_for_url(url: str) -> client.ApiClient:
    """Return an API client for the API server at `url`, with no credentials."""
    configuration = _new_configuration()
    configuration.host = url
    return client.ApiClient(configuration)


def server_url(api_client: client.ApiClient) -> str:
    """Return the URL of the API server that `api_client` sends requests to."""
    return str(api_client.configuration.host)


def _new_configuration() -> client.Configuration:
    configuration = client.Configuration()
    configuration.retries = API_RETRIES
    return configuration


class KubeApi:
    """The typed API groups of one client, and a thread pool to call them in."""

    def __init__(self, api_client: client.ApiClient, *, threads: int) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="kubernetes-api"
        )

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one API method in the thread pool and return its JSON body.

        Raise ApiError for an error status, a timeout or a transport failure.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.call_sync(method, *args, **kwargs)
        )

    def call_sync(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call one API method in this thread and return its JSON body."""
        kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        with translate_errors():
            response = method(*args, _preload_content=False, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
        return json.loads(data) if data else {}

    def open_stream(
        self, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> urllib3.BaseHTTPResponse:
        """Start a streamed call (a watch or a pod log) in this thread.

        The caller reads the returned response and releases it.
        """
        with translate_errors():
            response: urllib3.BaseHTTPResponse = method(
                *args, _preload_content=False, **kwargs
            )
        return response

    def close(self) -> None:
        """Stop the thread pool and close the client's connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn the client's exceptions raised inside the block into ApiError."""
    try:
        yield
    except ApiException as exc:
        raise _from_api_exception(exc) from exc
    except urllib3.exceptions.HTTPError as exc:
        # With retries off, MaxRetryError only wraps the one failure, whose
        # text (connection refused, read timed out) is the useful part.
        cause = (
            exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else None
        )
        failure = cause or exc
        reason = (
            TIMED_OUT
            if isinstance(failure, urllib3.exceptions.ReadTimeoutError)
            else UNREACHABLE
        )
        raise ApiError(0, reason, str(failure)) from exc


def _from_api_exception(exc: ApiException) -> ApiError:
    """Read the status and the API's message from the Status body, if any."""
    status = exc.status or 0
    reason = exc.reason or ""
    message = reason
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            message = body[:500]
        else:
            if isinstance(parsed, dict):
                message = str(parsed.get("message") or reason)
                reason = str(parsed.get("reason") or reason)
    return ApiError(status, reason, message)
