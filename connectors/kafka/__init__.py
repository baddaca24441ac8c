"""The Kafka connector: records on Kafka topics invoke the subscribed functions.

A consumer group reads the topics that functions name in their `topic`
annotation (or an explicit list) and delivers every record, at least once,
to every subscribed function through the gateway. Failed records go to a
dead-letter topic; offsets are committed only for final outcomes.

Modules, in the order a record meets them: `source` (consumer, subscription,
commits, rebalances), `subscription` (which topics), `dispatch` (ordering
modes and the in-flight bound), `records` (the function's headers),
`offsets` (what may be committed) and `publisher` (dead letters and
replies). `client_config` builds the connection options, `dev_broker` the
bundled development broker and `server` the process. The shared half of
every connector is in `connectors.core`.
"""
