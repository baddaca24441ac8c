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


def non_utf8_value_message(name: str, component: str) -> str:
    """Return the 400 message for a header value whose bytes are not UTF-8.

    aiohttp writes header text as UTF-8, so such a value cannot reach a
    function unchanged. The message names the header but not its value,
    because a header can carry a credential.
    """
    return (
        f"The value of header {canonical_header_name(name)} is not valid UTF-8. "
        f"The {component} forwards a non-ASCII header value to a function only as "
        "UTF-8. Send it as UTF-8, or encode it as ASCII (percent-encoding or "
        "base64)."
    )


def is_utf8(value: bytes) -> bool:
    """Tell whether `value` is valid UTF-8 (ASCII included)."""
    if value.isascii():
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def wire_text(value: str) -> str:
    """Return the text that makes aiohttp send `value`'s original bytes.

    The gateway decodes header bytes as latin-1, one character a byte, while
    aiohttp encodes header text as UTF-8. Re-reading the latin-1 bytes as
    UTF-8 gives back the caller's exact bytes whenever they are valid UTF-8,
    which covers every non-ASCII value that current HTTP clients send.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        # NOTE: aiohttp can only write header text as UTF-8, so a value whose
        # bytes are not UTF-8 reaches the function UTF-8 encoded. The gateway
        # rejects such values, so only calls stored by older gateways get here.
        return value
