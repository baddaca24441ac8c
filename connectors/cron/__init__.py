"""The cron connector: functions annotated with a schedule run on time.

A function subscribes with `topic: cron-function` and a `schedule`
annotation, as with the OpenFaaS cron-connector.

* `expression` parses cron expressions with cron(8) meaning;
* `schedule` turns a function's annotations into fire times in its zone;
* `scheduler` runs the timers on an injected clock;
* `nats_state` lets replicas claim ticks, so that one of them fires each,
  and keeps the last fired tick for catch-up runs after a restart;
* `source` connects them to the shared connector core.

`server.run(settings)` is the process.
"""
