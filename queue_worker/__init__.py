"""The queue-worker: runs the async calls that the gateway queued in JetStream.

The gateway stores each `/async-function/` request as a message on the calls
stream. A worker pulls the message from the queue's durable consumer
(`worker`) and replays the request through the gateway's `/function/` route
(`invoke`). It then posts the function's response to the caller's
`X-Callback-Url` (`callback`) and acknowledges the message. `server` wraps
the worker into a process with a `/healthz` listener and signal handling.
"""
