"""Linux list syntax for CPU and GPU ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.ranges import format_cpu_list, parse_cpu_list


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("4,6,8", [4, 6, 8]), ("", []), ("7", [7])],
)
def test_parse(text: str, ids: list[int]) -> None:
    assert parse_cpu_list(text) == ids


@pytest.mark.parametrize("text", ["a-b", "3-1", "1-", "0-3;5"])
def test_bad_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="CPU"):
        parse_cpu_list(text)


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_format_then_parse_round_trips(ids: set[int]) -> None:
    assert parse_cpu_list(format_cpu_list(ids)) == sorted(ids)
