"""Header names and limits of the Kafka connector.

Headers to the function follow the OpenFaaS Pro Kafka connector:
`X-Kafka-Partition`, `X-Kafka-Offset`, `X-Kafka-Key` (with
`X-Kafka-Key-Enc: b64` for a key that is not text) and one
`X-Kafka-<Name>` per record header. `X-Kafka-Timestamp` is faashub's own.
"""

from typing import Final

# The connector's short name: the metrics label, and `X-Connector:
# kafka-connector` on every invocation.
CONNECTOR_NAME: Final = "kafka"

# Topic names that Kafka accepts: 1 to MAX_TOPIC_NAME_CHARS ASCII letters,
# digits, '.', '_' and '-', except "." and "..". A broker rejects other names
# with INVALID_TOPIC_EXCEPTION (error 17), so no such topic can exist.
MAX_TOPIC_NAME_CHARS: Final = 249

# Headers sent to the function.
HEADER_PREFIX: Final = "X-Kafka-"
PARTITION: Final = "X-Kafka-Partition"
OFFSET: Final = "X-Kafka-Offset"
KEY: Final = "X-Kafka-Key"
KEY_ENCODING: Final = "X-Kafka-Key-Enc"
TIMESTAMP: Final = "X-Kafka-Timestamp"  # milliseconds since the Unix epoch
# Suffix of the companion header that marks a base64-encoded header value,
# as X-Kafka-Key-Enc does for the key: `X-Kafka-<Name>-Enc: b64`.
ENCODING_SUFFIX: Final = "-Enc"
BASE64: Final = "b64"
# A record header whose name is taken by one of the headers above is sent
# under this prefix instead, so the record's metadata cannot be forged.
RENAMED_HEADER_PREFIX: Final = "X-Kafka-Header-"

# Headers that a dead-letter record carries beside the original record's own.
DLQ_FUNCTION: Final = "faashub-function"
DLQ_STATUS: Final = "faashub-status"
DLQ_ERROR: Final = "faashub-error"
DLQ_ATTEMPTS: Final = "faashub-attempts"
DLQ_CALL_ID: Final = "faashub-call-id"
DLQ_SOURCE_TOPIC: Final = "faashub-source-topic"
DLQ_SOURCE_PARTITION: Final = "faashub-source-partition"
DLQ_SOURCE_OFFSET: Final = "faashub-source-offset"
DLQ_SOURCE_TIMESTAMP: Final = "faashub-source-timestamp"
DLQ_VALUE_OMITTED: Final = "faashub-value-omitted"

# Headers of a reply record: the call's ids and where the request came from.
REPLY_CALL_ID: Final = "X-Call-Id"
REPLY_FUNCTION: Final = "X-Function-Name"
REPLY_STATUS: Final = "X-Function-Status"
REPLY_CONTENT_TYPE: Final = "Content-Type"
REPLY_SOURCE_TOPIC: Final = "X-Topic"
REPLY_SOURCE_PARTITION: Final = "X-Kafka-Partition"
REPLY_SOURCE_OFFSET: Final = "X-Kafka-Offset"

# Most records one getmany() returns. aiokafka's default is 500.
FETCH_MAX_RECORDS: Final = 500
# How long an idle getmany() waits for records, in milliseconds. It returns
# as soon as records arrive, so this only sets how often an idle loop wakes.
FETCH_TIMEOUT_MS: Final = 200
# A partition is left out of fetches once this many of its records are not
# final, until half of them are. The buffered records take about this many
# records times the partitions of memory. The in-flight window is
# max_inflight, not this.
PARTITION_BUFFER_RECORDS: Final = 1000
# While every partition's buffer is full, the fetch loop waits this long at
# most for one to drain before it checks again.
STALL_WAIT_S: Final = 1.0
# While every buffer stays full, the loop still polls the consumer this
# often, well within aiokafka's max_poll_interval_ms of 300 s, after which
# the group would drop this member.
STALLED_POLL_INTERVAL_S: Final = 30.0

# Seconds between attempts to connect when no broker responds at start.
CONNECT_RETRY_MIN_S: Final = 1.0
CONNECT_RETRY_MAX_S: Final = 15.0
# Seconds between attempts to write one dead letter or reply that failed.
PUBLISH_RETRY_MIN_S: Final = 0.5
PUBLISH_RETRY_MAX_S: Final = 10.0
# Timeout of a producer request, and of its wait for topic metadata.
PRODUCER_REQUEST_TIMEOUT_MS: Final = 15000
# Largest dead-letter or reply record the producer sends, in bytes. The
# broker's own limit (message.max.bytes, about 1 MiB by default on Apache
# Kafka) usually applies first.
PRODUCER_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024

# Prefix of the internal topics that a pattern never matches.
INTERNAL_TOPIC_PREFIX: Final = "__"
