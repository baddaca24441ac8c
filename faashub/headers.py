"""The spelling of HTTP header names that faashub passes on to functions.

ASGI servers and aiohttp hand header names over in lowercase. Functions
behind OpenFaaS see them in Go's canonical spelling (`X-Call-Id`), and
classic functions read them as `Http_X_Call_Id` variables. So the gateway's
sync proxy, the connectors and the provider backends all spell them this
way when they pass headers on to a function.
"""


def canonical_header_name(name: str) -> str:
    """Spell a header name as Go does: `x-call-id` becomes `X-Call-Id`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
