"""The query of `GET /system/async-calls`, parsed without a server."""

import pytest
from starlette.datastructures import QueryParams

from gateway import errors
from gateway.async_call_list import DEFAULT_LIMIT, MAX_LIMIT, parse_query


def test_limit_defaults() -> None:
    ref, limit = parse_query(QueryParams({"function": "echo"}))

    assert ref.name == "echo"
    assert limit == DEFAULT_LIMIT


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("0", id="zero"),
        pytest.param(str(MAX_LIMIT + 1), id="above-max"),
        pytest.param("\u00b2", id="superscript-digit"),
        pytest.param("\u0661", id="arabic-digit"),
        pytest.param("1_0", id="underscore"),
        pytest.param("9" * 5000, id="too-many-digits"),
    ],
)
def test_invalid_limit_named(limit: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="Invalid limit"):
        parse_query(QueryParams({"function": "echo", "limit": limit}))
