"""The data path: forward one invocation to a function's Service with aiohttp.

The function's address comes from the `function_address_template` setting,
by default `http://{name}.{namespace}.svc.cluster.local:8080`, the cluster
DNS name of its Service, so kube-proxy picks a ready pod. Tests set a
template such as `http://127.0.0.1:9000/{namespace}/{name}` to reach local
servers. The caller's path and query are appended byte for byte. The request
body streams to the function as the caller sends it, and the response
streams back unchanged except for hop-by-hop headers.

Failures become the errors the API tags with `X-OpenFaaS-Internal`: a
connection that cannot be made is FunctionUnavailable (503), a response
that does not come within `timeout_s` is FunctionTimeout (504), any other
transport error is FunctionFailed (500). Whether a replica is ready is the
backend's concern; this module does not look at the cluster.
"""

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import yarl

from faashub import http_sessions
from faashub.names import FunctionRef
from provider.backend import (
    FunctionFailed,
    FunctionTimeout,
    FunctionUnavailable,
    Invocation,
    InvocationResponse,
    ProviderStartError,
)
from provider.headers import (
    end_to_end_headers,
    upstream_body,
    upstream_failure_message,
    upstream_headers,
)

logger = logging.getLogger(__name__)

# Headers that aiohttp adds to a request unless skip_auto_headers lists them.
# A proxy sends only the caller's.
_SKIP_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def check_address_template(template: str) -> None:
    """Raise ProviderStartError unless `template` formats into an http(s) URL."""
    try:
        url = yarl.URL(template.format(name="example", namespace="openfaas-fn"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ProviderStartError(
            f"Invalid function_address_template {template!r}: {exc}. Use only the "
            "placeholders {name} and {namespace}, as in "
            "http://{name}.{namespace}.svc.cluster.local:8080."
        ) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ProviderStartError(
            f"Invalid function_address_template {template!r}: it must give an "
            "http:// or https:// URL with a host."
        )


class FunctionProxy:
    """An aiohttp session that forwards invocations to function Services."""

    def __init__(self, *, address_template: str, timeout_s: float) -> None:
        check_address_template(address_template)
        self._address_template = address_template.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Open the HTTP client session; call it inside the event loop."""
        # NB: no connection limit, because each call in flight holds one
        # connection for as long as the function runs.
        self._session = http_sessions.new_session(
            limit=0,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def base_url(self, ref: FunctionRef) -> str:
        """Return the function's base URL from the address template."""
        return self._address_template.format(name=ref.name, namespace=ref.namespace)

    @contextlib.asynccontextmanager
    async def forward(
        self, invocation: Invocation
    ) -> AsyncIterator[InvocationResponse]:
        """Send `invocation` to its function; the response streams inside the block."""
        assert self._session is not None, "start() was not called"
        ref = invocation.function
        target = invocation.raw_path
        if invocation.query:
            target += "?" + invocation.query
        # Marked as encoded, so yarl neither resolves dot segments nor changes
        # a percent-escape of the caller's path.
        url = yarl.URL(self.base_url(ref) + target, encoded=True)
        headers = upstream_headers(invocation)
        try:
            response = await self._session.request(
                invocation.method,
                url,
                headers=headers,
                data=upstream_body(invocation),
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                timeout=self._timeout,
            )
        except TimeoutError as exc:
            raise FunctionTimeout(
                f"Function {ref} did not respond within {self._timeout_s:g} s, the "
                "provider's upstream_timeout_s."
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise FunctionUnavailable(
                f"Cannot reach the service of function {ref}: {exc}. Check that "
                "its pods are ready with kubectl."
            ) from exc
        except aiohttp.ClientError as exc:
            raise FunctionFailed(upstream_failure_message(invocation, exc)) from exc
        try:
            yield InvocationResponse(
                status=response.status,
                headers=end_to_end_headers(
                    [
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in response.raw_headers
                    ]
                ),
                stream=_read_body(ref, response),
            )
        finally:
            response.release()


async def _read_body(
    ref: FunctionRef, response: aiohttp.ClientResponse
) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError as exc:
        raise FunctionTimeout(
            f"Function {ref} did not finish its response in time."
        ) from exc
    except aiohttp.ClientError as exc:
        raise FunctionFailed(f"Function {ref} broke off its response: {exc}.") from exc
