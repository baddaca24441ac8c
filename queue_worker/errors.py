"""Errors that stay inside the queue-worker.

They split by what the worker does next with the message in hand::

    FaashubError
    └── WorkerError
        ├── TemporaryError       something outside the call failed: deliver
        │   │                    the call again later, without counting an
        │   │                    attempt
        │   ├── GatewayUnavailable   a function lookup failed
        │   └── NatsUnavailable      a status, dead-letter or body operation
        │       │                    failed
        │       └── StatusRefused    the status stream rejected a write with
        │                            an error, such as a full bucket
        └── BodyNotFound         the stored body a call refers to is gone, so
                                 the call cannot run: dead-letter it

Errors of NATS and aiohttp are translated into these at the module that
calls them, with ``raise ... from``.
"""

from faashub.errors import FaashubError


class WorkerError(FaashubError):
    """Base class of the queue-worker's own errors."""


class TemporaryError(WorkerError):
    """A failure outside the call; the call is delivered again later."""


class GatewayUnavailable(TemporaryError):
    """A function lookup got no response from the gateway, or neither 200 nor 404."""


class NatsUnavailable(TemporaryError):
    """A JetStream operation other than fetching failed."""


class BodyNotFound(WorkerError):
    """The object store contains no body under the name a call refers to."""


class StatusRefused(NatsUnavailable):
    """A status write that the stream rejected, so a retry soon would fail too."""
