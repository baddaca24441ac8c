"""Annotation names, header names and limits of the cron connector.

`topic: cron-function` and `schedule` are the OpenFaaS cron-connector's
annotations. The others are faashub's own and share the `com.faashub.cron.`
prefix.
"""

from typing import Final

# The connector's short name: the metrics label, and `X-Connector:
# cron-connector` on every invocation.
CONNECTOR_NAME: Final = "cron"

# The topic that a scheduled function subscribes to, and the X-Topic value of
# every invocation.
TOPIC: Final = "cron-function"

# Function annotations.
ANNOTATION_SCHEDULE: Final = "schedule"
ANNOTATION_TIMEZONE: Final = "com.faashub.cron.timezone"  # IANA zone, default UTC
ANNOTATION_BODY: Final = "com.faashub.cron.body"  # request body, default empty
ANNOTATION_MISSED_RUNS: Final = "com.faashub.cron.missed-runs"  # skip or once
ANNOTATION_OVERLAP: Final = "com.faashub.cron.overlap"  # forbid or allow

# Header with the tick's scheduled instant, UTC, RFC 3339 with milliseconds
# (2024-03-31T01:00:00.000Z), so that a late run can tell which tick it serves.
SCHEDULED_AT: Final = "X-Cron-Scheduled-At"

# Separator of several schedules in one `schedule` annotation.
SCHEDULE_DELIMITER: Final = ";"

# Prefix of a schedule entry that names its time zone (`CRON_TZ=Europe/Berlin
# 0 9 * * *`). `TZ=` is accepted as well.
ZONE_PREFIXES: Final = ("CRON_TZ=", "TZ=")

# The shortest `@every` interval, in seconds.
MIN_EVERY_S: Final = 1.0

# The longest `@every` interval: 100 years of 365 days, written `876000h`.
# Ticks are multiples of the interval since 1970, and a longer interval soon
# has no tick before the year 9999, the last one that Python's datetime holds.
MAX_EVERY_S: Final = 100 * 365 * 86400.0
MAX_EVERY_TEXT: Final = "876000h"

# Years searched for the next matching instant of a cron expression. A valid
# expression matches within 8 years (29 February skips at most one leap year,
# as in 2100), so finding none in this span means it never matches.
SEARCH_YEARS: Final = 9
