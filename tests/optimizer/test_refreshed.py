"""What /metrics reads from the store at most once a minute: read once while fresh, again
once stale, nothing served while the database cannot answer, retried on the next scrape."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from optimizer.api.state import Refreshed


def test_read_once_while_fresh_and_retried_after_a_database_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("optimizer.api.state.time.monotonic", lambda: now[0])
    answers: list[object] = [1, OperationalError("SELECT", {}, Exception("down")), 3]

    def read() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, int)
        return answer

    value = Refreshed(read, seconds=60)
    assert value.get() == 1
    now[0] += 59
    assert value.get() == 1  # fresh: not read again
    now[0] += 2
    assert value.get() is None  # stale, and the database is down: nothing served
    assert value.get() == 3  # the next call reads again
    assert answers == []
