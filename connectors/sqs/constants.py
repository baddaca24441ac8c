"""Header names, attribute names and limits of the SQS connector.

The limits named as SQS limits are SQS service quotas, which the connector
must stay within; the tests' moto server enforces them too.
"""

from typing import Final

# The connector's short name: the metrics label, and `X-Connector:
# sqs-connector` on every invocation.
CONNECTOR_NAME: Final = "sqs"

# Headers sent to the function.
HEADER_PREFIX: Final = "X-SQS-"
MESSAGE_ID: Final = "X-SQS-Message-ID"
QUEUE_URL: Final = "X-SQS-Queue-URL"
RECEIVE_COUNT: Final = "X-SQS-Receive-Count"
SENT_TIMESTAMP: Final = "X-SQS-Sent-Timestamp"  # milliseconds since the Unix epoch
MESSAGE_GROUP_ID: Final = "X-SQS-Message-Group-ID"  # FIFO queues only
# One header per message attribute: `X-SQS-Attr-<Name>`. A binary attribute,
# or a string that HTTP cannot carry as it is, is sent as base64 and marked
# by a companion header `X-SQS-Attr-<Name>-Enc: b64`.
ATTRIBUTE_PREFIX: Final = "X-SQS-Attr-"
ENCODING_SUFFIX: Final = "-Enc"
BASE64: Final = "b64"

# Message attributes that the connector adds to a copy in the dead-letter
# queue, besides as many of the original attributes as fit.
DLQ_FUNCTION: Final = "faashub-function"
DLQ_STATUS: Final = "faashub-status"
DLQ_ERROR: Final = "faashub-error"
DLQ_ATTEMPTS: Final = "faashub-attempts"
DLQ_SOURCE_QUEUE: Final = "faashub-source-queue"
DLQ_SOURCE_MESSAGE_ID: Final = "faashub-source-message-id"
# Present when original attributes were left out because of the limit below.
DLQ_ATTRIBUTES_OMITTED: Final = "faashub-attributes-omitted"
# SQS accepts at most 10 message attributes per message.
MAX_MESSAGE_ATTRIBUTES: Final = 10
# SQS limits a message, body and attributes together, to 256 KiB. The error
# text is cut to this many characters, so it adds little to the copy.
DLQ_ERROR_MAX_CHARS: Final = 1000

# Most entries one DeleteMessageBatch or ChangeMessageVisibilityBatch takes.
MAX_BATCH_ENTRIES: Final = 10
# Seconds a delete waits for others to share its DeleteMessageBatch call.
DELETE_LINGER_S: Final = 0.02
# Attempts of one batch call whose request failed (network, throttling)
# before its messages are left to come back after their visibility timeout.
SETTLE_ATTEMPTS: Final = 3

# A message whose visibility ends within this share of the visibility
# timeout gets it extended by a whole timeout again.
EXTEND_WHEN_REMAINING: Final = 0.5
# The extension loop checks this often, as a share of the visibility timeout,
# and at least every EXTEND_CHECK_MAX_S seconds.
EXTEND_CHECK_SHARE: Final = 0.25
EXTEND_CHECK_MAX_S: Final = 5.0

# The settings that name the queues, as the hint of a "the queue does not
# exist" error gives them: the hub's option, then its environment variable.
SOURCE_QUEUES_SETTING: Final = "--sqs-queues (FAASHUB_SQS_QUEUES)"
DEAD_LETTER_QUEUE_SETTING: Final = "--dead-letter-queue (FAASHUB_DEAD_LETTER_QUEUE)"

# Seconds between attempts to reach a queue that failed (not found, access
# denied, network), doubling up to the maximum.
QUEUE_RETRY_MIN_S: Final = 1.0
QUEUE_RETRY_MAX_S: Final = 30.0

# Messages whose functions the connector remembers (which succeeded and which
# failed for good) while the message is still in the queue. Older entries are
# forgotten first, and a forgotten message is delivered to every function
# again.
MAX_REMEMBERED_MESSAGES: Final = 10000
