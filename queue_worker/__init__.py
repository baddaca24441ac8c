"""The queue-worker: runs the async calls that the gateway queued in JetStream.

The gateway stores each `/async-function/` request as a message on the calls
stream. A worker pulls the messages of its queue from the queue's durable
consumer (`worker`) and takes each to its end (`handling`). It looks the
function up through the gateway (`functions`, `policy`), claims the call in
its status record (`status`), and replays the request through the gateway's
`/function/` route (`invoke`). A failed attempt goes back to JetStream with
a backoff delay (`backoff`). A call that cannot complete becomes a dead
letter (`dead_letters`). The final result goes to the caller's
`X-Callback-Url` (`callback`, signed by `faashub.callback_request`). `server`
wraps the worker into a process with a health and metrics listener
(`metrics`) and signal handling.
"""
