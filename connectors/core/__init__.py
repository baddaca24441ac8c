"""The connector core: what every event connector shares.

A connector is a source (Kafka, SQS, cron) plus this core. The source
receives events and settles them; the core does the rest the same way for
every connector:

* `topic_map`: which functions subscribe to a topic, rebuilt from the
  gateway's function annotations, kept when the gateway is down;
* `invoker`: one aiohttp session, `X-Topic`/`X-Connector`/`Content-Type`
  headers, sync or async invocation, retries (`retry`, on tenacity's wait
  strategies);
* `connector`: `Connector.deliver(message)`, the concurrent fan-out to every
  subscriber, with one result line per invocation;
* `metrics`: the same Prometheus names for every connector;
* `health` and `runner`: `/healthz`, `/metrics`, signals and draining;
* `source`: the `ConnectorSource` protocol a new connector implements, with
  the steps to add one.
"""
