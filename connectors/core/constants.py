"""Header names, metric names and limits that every connector shares.

Header names follow the OpenFaaS connector-sdk, so functions written for
OpenFaaS connectors read the same headers here. Source-specific headers (the
`X-Kafka-*` family, for example) live in the connector's own constants.
"""

from typing import Final

# Headers sent with every invocation, as the OpenFaaS connector-sdk sends them.
TOPIC: Final = "X-Topic"
CONNECTOR: Final = "X-Connector"
CONTENT_TYPE: Final = "Content-Type"

# Separator of the topics in a function's `topic` annotation.
TOPIC_DELIMITER: Final = ","

# Prefix of every metric a connector exports; each has a `connector` label.
METRIC_PREFIX: Final = "faashub_connector_"

# Seconds one `/system/...` request of the topic map builder may take.
SYSTEM_REQUEST_TIMEOUT_S: Final = 10.0

# Wait before the next attempt to build the first topic map once START_GRACE_S
# has passed, doubling from the minimum up to the rebuild interval. Later
# refreshes follow the interval.
FIRST_MAP_RETRY_MIN_S: Final = 0.5
# Seconds after start during which an unreachable gateway, before the first
# topic map, is logged at DEBUG only: it is most likely still starting.
START_GRACE_S: Final = 10.0
# Wait between attempts to build the first topic map within START_GRACE_S.
FIRST_MAP_START_RETRY_S: Final = 0.1

# Seconds between two WARNING lines about the same ongoing outage; repeats in
# between go to DEBUG.
WARNING_INTERVAL_S: Final = 30.0
# Characters of an outage's reason kept in its log line. A dependency's error
# text can be a whole HTML error page, which the line gives in one line, cut
# to this length.
OUTAGE_REASON_MAX_CHARS: Final = 300

# `function invoked` INFO lines written per second at most; further successes
# in the same second are counted into one summary line. At thousands of
# records a second, one line per success took about 11 % of the Kafka
# connector's CPU (py-spy, 2-core VM, the kafka-connector benchmark).
RESULT_LINES_PER_S: Final = 20
