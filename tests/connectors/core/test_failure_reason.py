"""The failure reason of an invocation names who returned its error status."""

import pytest
from multidict import CIMultiDict

from connectors.core.invoker import FAILURE_TEXT_MAX_BYTES, failure_reason
from faashub.names import FunctionRef

FUNCTION = FunctionRef("kt", "openfaas-fn")
EXEC_TIMEOUT_TEXT = (
    b"Function kt.openfaas-fn did not respond within its exec timeout of 2 s."
)


@pytest.mark.parametrize(
    ("headers", "content", "to_replica", "expected"),
    [
        pytest.param(
            {"X-OpenFaaS-Internal": "proxy"},
            EXEC_TIMEOUT_TEXT + b"\n",
            False,
            "The provider returned HTTP 504 for kt.openfaas-fn: "
            + EXEC_TIMEOUT_TEXT.decode(),
            id="provider-through-gateway",
        ),
        pytest.param(
            {"x-openfaas-internal": "gateway"},
            b"",
            False,
            "The gateway returned HTTP 504 for kt.openfaas-fn.",
            id="gateway-no-text",
        ),
        pytest.param(
            {"X-OpenFaaS-Internal": "proxy"},
            EXEC_TIMEOUT_TEXT,
            True,
            "The provider returned HTTP 504 for kt.openfaas-fn: "
            + EXEC_TIMEOUT_TEXT.decode(),
            id="provider-on-replica",
        ),
        pytest.param(
            {}, b"boom", True, "kt.openfaas-fn returned HTTP 504.", id="replica-own"
        ),
        pytest.param(
            {},
            b"boom",
            False,
            "The call of kt.openfaas-fn through the gateway returned HTTP 504.",
            id="unmarked-through-gateway",
        ),
    ],
)
def test_reason_names_source(
    headers: dict[str, str], content: bytes, to_replica: bool, expected: str
) -> None:
    reason = failure_reason(
        FUNCTION, 504, _case_insensitive(headers), content, to_replica=to_replica
    )

    assert reason == expected


def test_reason_cuts_long_text() -> None:
    content = b"x" * (FAILURE_TEXT_MAX_BYTES * 3)

    reason = failure_reason(
        FUNCTION,
        503,
        _case_insensitive({"X-OpenFaaS-Internal": "gateway"}),
        content,
        to_replica=False,
    )

    assert reason.startswith("The gateway returned HTTP 503 for kt.openfaas-fn: x")
    assert len(reason) < FAILURE_TEXT_MAX_BYTES + 80


def _case_insensitive(headers: dict[str, str]) -> CIMultiDict[str]:
    # aiohttp's response headers are a case-insensitive multidict.
    return CIMultiDict(headers)
