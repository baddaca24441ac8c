"""Errors of the connector core.

Every error that connector code raises on purpose derives from
`faashub.errors.FaashubError`. The connector family::

    FaashubError
    └── ConnectorError            base of the errors below
        ├── TopicMapError         the gateway's function list could not be read
        │   └── CredentialsRejected   the gateway answered 401 or 403
        └── SourceStartError      the source (broker, queue) cannot be used

Settings with a value that cannot be used raise the shared
`faashub.errors.SettingsError`, which the CLI prints without a traceback.
Third-party errors (HTTP, Kafka) are translated into these where they cross
into connector code, with ``raise ... from``.
"""

from faashub.errors import FaashubError


class ConnectorError(FaashubError):
    """Base class of the errors raised on purpose by connector code."""


class TopicMapError(ConnectorError):
    """The gateway could not be reached, or it returned an unusable function list."""


class CredentialsRejected(TopicMapError):
    """The gateway rejected the connector's credentials for its /system API."""


class SourceStartError(ConnectorError, RuntimeError):
    """A connector source cannot start, for a reason that retrying will not fix."""
