"""The faas-provider component: the API that deploys and invokes functions.

The gateway forwards `/system/*` and `/function/*` requests here. `api` serves
the faas-provider HTTP API over any object that implements
`backend.ProviderBackend`, with `logs_api` streaming `/system/logs`. `local`
is the backend that runs functions as processes on this machine. The provider
does not queue calls, retry them or post callbacks: the gateway and the
queue-worker own those.
"""
