"""Errors of the cron connector.

    CronError
     └── InvalidSchedule   a function's schedule annotations cannot be used

An `InvalidSchedule` affects only the function whose annotations caused it:
the connector logs it, counts it and keeps scheduling the other functions.
"""


class CronError(Exception):
    """The root of the cron connector's errors."""


class InvalidSchedule(CronError, ValueError):
    """A schedule, time zone or cron annotation value that cannot be used.

    The message names the offending value and what a valid one looks like.
    """
