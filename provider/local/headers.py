"""HTTP header helpers shared by the classic and http-mode runners.

Header names arrive lowercase from the ASGI server. Functions behind OpenFaaS
see them in Go's canonical spelling (`X-Call-Id`), both as CGI variables in
classic mode and on the wire in http mode, so the local backend spells them
the same way.
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
