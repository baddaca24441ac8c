"""How errors quote invalid function names, namespaces and label keys and values."""

from collections.abc import Callable

import pytest

from faashub import errors, names


def test_short_invalid_name_is_quoted_whole() -> None:
    with pytest.raises(errors.InvalidFunctionName) as raised:
        names.validate_label("Bad_Name")

    assert "Invalid function name 'Bad_Name': use at most 63" in str(raised.value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        pytest.param(
            lambda value: names.validate_label(value, what="namespace"),
            "n" * 300,
            id="namespace",
        ),
        pytest.param(
            lambda value: names.validate_qualified_name(
                value, what="label key", function="fn"
            ),
            "k" * 300,
            id="label-key",
        ),
        pytest.param(
            lambda value: names.validate_metadata({"team": value}, {}, function="fn"),
            "v" * 300,
            id="label-value",
        ),
    ],
)
def test_long_invalid_value_is_cut(check: Callable[[str], object], value: str) -> None:
    with pytest.raises(errors.InvalidFunctionName) as raised:
        check(value)

    message = str(raised.value)
    assert f"'{value[: names.SHOWN_CHARS]}...'" in message
    assert value[: names.SHOWN_CHARS + 1] not in message


def test_excerpt_keeps_values_at_the_limit() -> None:
    at_limit = "a" * names.SHOWN_CHARS

    assert names.excerpt(at_limit) == at_limit
    assert names.excerpt(at_limit + "b") == at_limit + "..."
