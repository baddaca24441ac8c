"""The gateway: the OpenFaaS REST API in front of a faas-provider.

It proxies sync calls (`/function/...`) to the provider, stores async calls
(`/async-function/...`) in JetStream for the queue-worker, and forwards the
management API (`/system/...`). It runs no functions itself.
"""
