"""Turns the provider's 401 into a 502 that names the gateway's token setting.

The provider's `/system/` API returns 401 to a request without its bearer
token (the provider's `auth_token_file`). By then the gateway has accepted
the caller's own credentials, so passing the 401 on would send the caller to
`faashub login` for a fault in the gateway's configuration. That happens, for
example, during a token rotation in which only one of the gateway and the
provider has restarted. The gateway returns 502 instead, with a message that
names `provider_token_file`, and logs a WARNING at most once per
PROVIDER_TOKEN_WARNING_INTERVAL_S, never with the token.

The forwarded `/system/` routes (`gateway.system`), function lookups
(`gateway.function_lookup`) and the replica counts of `/metrics`
(`gateway.metrics`) use it. `/healthz` does not report it, because the
invocation routes still work: the provider's `/function/` route needs no
token, and the deployment's liveness probe would restart the gateway in a
loop while the provider is the side with the old token.
"""

import logging
import time
from collections.abc import Callable

from faashub.logs import LimitedWarning
from gateway import constants, errors

logger = logging.getLogger(__name__)

# The setting that contains the gateway's copy of the token, as the gateway's
# command line and environment name it.
_SETTING = (
    "provider_token_file setting (--provider-token-file, FAASHUB_PROVIDER_TOKEN_FILE)"
)


class ProviderTokenRejections:
    """The gateway's record of 401 responses from the provider, shared by its routes."""

    def __init__(
        self,
        provider_url: str,
        *,
        token_sent: bool,
        interval_s: float = constants.PROVIDER_TOKEN_WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider_url = provider_url.rstrip("/")
        self._token_sent = token_sent
        self._warnings = LimitedWarning(logger, interval_s=interval_s, clock=clock)

    def rejected(self, request_line: str) -> errors.ProviderTokenRejected:
        """Log a 401 from the provider and return the error for the caller.

        `request_line` is the method and path sent to the provider, such as
        `GET /system/functions`, without the query.
        """
        if self._token_sent:
            event = "provider rejected the gateway's provider token"
        else:
            event = "provider requires a token; provider_token_file is not set"
        self._warnings.warning(
            event,
            ctx={"provider_url": self._provider_url, "request": request_line},
        )
        return errors.ProviderTokenRejected(self._message(request_line))

    def _message(self, request_line: str) -> str:
        not_caller = (
            "The fault is in the gateway's configuration, not in the caller's "
            "credentials, so 'faashub login' does not help."
        )
        if not self._token_sent:
            return (
                f"The provider at {self._provider_url} requires a token and "
                f"returned HTTP 401 for {request_line}, but the gateway sends none "
                f"because its {_SETTING} is not set. {not_caller} Set it to a "
                "file that contains the provider's token (the provider's "
                "auth_token_file) and restart the gateway."
            )
        return (
            f"The provider at {self._provider_url} rejected the gateway's provider "
            f"token and returned HTTP 401 for {request_line}. {not_caller} The file "
            f"that the gateway's {_SETTING} names must contain the provider's "
            "token (the provider's auth_token_file). Fix the file and restart "
            "the gateway. After a token rotation, restart whichever of the "
            "gateway and the provider still has the old token."
        )
