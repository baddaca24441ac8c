"""Errors raised inside the gateway and mapped to HTTP statuses by its handlers.

    faashub.errors.FaashubError
    └── GatewayError
        ├── InvalidRequest       a request the caller must fix: 400
        ├── FunctionNotFound     the provider does not know the function: 404
        ├── CallNotFound         no async call or dead letter with that id: 404
        ├── CallConflict         the call is in a state that forbids the action: 409
        ├── PayloadTooLarge      body above max_body_bytes, or headers above the
        │                        NATS max_payload: 413
        ├── ProviderUnavailable  the provider is unreachable or failed: 502
        │   └── ProviderTokenRejected  the provider returned 401 to the
        │                              gateway's provider token: 502
        └── QueueUnavailable     NATS or a stream or bucket cannot serve: 503

The handlers put the message of each error in the response body, so messages
are written for the HTTP caller.
"""

from faashub.errors import FaashubError


class GatewayError(FaashubError):
    """Base class of the gateway's own errors."""


class InvalidRequest(GatewayError):
    """A header, parameter or body the caller sent has a value that cannot be used."""


class FunctionNotFound(GatewayError):
    """The provider does not know the function that a call is for."""


class CallNotFound(GatewayError):
    """No async call, or no dead letter, has the requested id."""


class CallConflict(GatewayError):
    """The call's state does not allow the request, e.g. cancelling a finished call."""

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state


class QueueUnavailable(GatewayError):
    """The async queue cannot store or read calls right now; a retry may succeed."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown
        """True when a publish timed out: the call may or may not be stored."""


class PayloadTooLarge(GatewayError):
    """A call is larger than the gateway or NATS accepts."""

    def __init__(self, message: str, *, limit_bytes: int) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes


class ProviderUnavailable(GatewayError):
    """The faas-provider could not be reached or returned an error status."""


class ProviderTokenRejected(ProviderUnavailable):
    """The provider returned 401 because the gateway sent a wrong token or none.

    The message names the gateway's `provider_token_file` setting. The
    `gateway.provider_token` module has already logged the rejection, so
    handlers log it at DEBUG only.
    """
