"""HTTP header helpers of the provider backends that forward invocations.

Header names arrive lowercase from the ASGI server. Functions behind OpenFaaS
see them in Go's canonical spelling (`X-Call-Id`), so the backends spell
them that way. The local backend passes them as CGI variables in classic
mode and on the wire in http mode. The Kubernetes backend sends them to the
function's Service.
"""

from faashub import constants


def canonical_header_name(name: str) -> str:
    """Spell a header name as Go does: `x-call-id` becomes `X-Call-Id`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def end_to_end_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including those that `Connection` names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in constants.HOP_BY_HOP and name.lower() not in named
    ]
