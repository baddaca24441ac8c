"""Errors shared by faashub components.

Every error that faashub code raises on purpose derives from `FaashubError`::

    FaashubError
    ├── InvalidFunctionName      a name that is not a DNS-1123 label
    ├── InvalidQueuedCall        a queue message the worker cannot read
    ├── SettingsError            a setting with a value that cannot be used
    └── HubStartError            `faashub up` could not start a component

Components keep their own exception modules for errors that stay inside them
and translate third-party errors at their boundary with ``raise ... from``.
"""


class FaashubError(Exception):
    """Base class of every error raised on purpose by faashub."""


class InvalidFunctionName(FaashubError, ValueError):
    """A function or namespace name that OpenFaaS would reject."""


class InvalidQueuedCall(FaashubError, ValueError):
    """A queue message that lacks a required header or has a bad value."""


class SettingsError(FaashubError, ValueError):
    """A setting whose value cannot be used."""


class HubStartError(FaashubError, RuntimeError):
    """A component of the hub did not start."""
