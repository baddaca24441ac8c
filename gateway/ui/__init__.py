"""The gateway's web console at `/ui`: pages, static files and their JSON routes.

`gateway.ui.console` serves the pages, `gateway.ui.pages` renders them,
`gateway.ui.invoke` sends the console's invocations through the gateway in
process, and `gateway.ui.guard` contains the checks against forged requests.
"""
