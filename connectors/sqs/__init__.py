"""The SQS connector: messages on SQS queues invoke the subscribed functions.

The connector long-polls the configured queues and delivers every message,
at least once, to each function whose `topic` annotation names the queue.
A message is deleted only once its outcome is final. A failed invocation is
retried by hiding the message for a growing backoff, and a message that
fails for good goes to a dead-letter queue.

The modules, in the order a message meets them:

* `source`: polling, settling, visibility extension and stop;
* `dispatch`: the in-flight bound and FIFO group order;
* `messages`: the function's headers;
* `delivery`: which functions still need the message;
* `settle`: batched deletes and visibility changes;
* `dead_letters`: the configured dead-letter queue.

`queues` contains the SQS client and the error translation, and `server`
the process. The shared half of
every connector is in `connectors.core`.
"""
