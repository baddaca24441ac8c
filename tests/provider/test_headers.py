"""The request headers that both HTTP backends send to a function with aiohttp."""

import pytest

from faashub.names import FunctionRef
from provider.backend import InvalidRequest, Invocation
from provider.headers import upstream_headers


def invocation_with_header(raw_value: bytes) -> Invocation:
    """Return an invocation whose header value arrived as the API decodes it."""
    return Invocation(
        function=FunctionRef("echo", "openfaas-fn"),
        method="POST",
        path="/",
        raw_path="/",
        query="",
        headers=[("x-greeting", raw_value.decode("latin-1"))],
        body=b"",
    )


@pytest.mark.parametrize(
    "raw_value",
    [b"plain ascii", "grüße ✓".encode(), "😀".encode()],
)
def test_upstream_header_keeps_bytes(raw_value: bytes) -> None:
    headers = upstream_headers(invocation_with_header(raw_value))

    # aiohttp 3.14 encodes header values as UTF-8.
    assert headers["X-Greeting"].encode("utf-8") == raw_value


@pytest.mark.parametrize("raw_value", [b"gr\xfc\xdfe", b"\xc3", b"\xed\xa0\x80"])
def test_upstream_header_rejects_invalid_utf8(raw_value: bytes) -> None:
    with pytest.raises(InvalidRequest, match="X-Greeting is not valid UTF-8"):
        upstream_headers(invocation_with_header(raw_value))
