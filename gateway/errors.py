"""Errors raised inside the gateway and mapped to HTTP statuses by its handlers.

    faashub.errors.FaashubError
    └── GatewayError
        ├── FunctionNotFound     the provider does not know the function: 404
        ├── PayloadTooLarge      body plus headers exceed NATS max_payload: 413
        ├── ProviderUnavailable  the provider is unreachable or failed: 502
        └── QueueUnavailable     NATS or the calls stream cannot store a call: 503

The handlers put the message of each error in the response body, so messages
are written for the HTTP caller.
"""

from faashub.errors import FaashubError


class GatewayError(FaashubError):
    """Base class of the gateway's own errors."""


class FunctionNotFound(GatewayError):
    """The provider does not know the function that a call is for."""


class QueueUnavailable(GatewayError):
    """The async queue cannot store a call right now; a retry may succeed."""


class PayloadTooLarge(GatewayError):
    """A call is larger than one NATS message may be."""

    def __init__(self, message: str, *, limit_bytes: int) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes


class ProviderUnavailable(GatewayError):
    """The faas-provider could not be reached or returned an error status."""
