"""convmem.turns: a turn counts its tokens once per counter object, and never mixes counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from convmem.history import History


class _Counting:
    """A counter that charges ``per`` tokens a message and records how often it was asked."""

    name = "counting"

    def __init__(self, per: int) -> None:
        self.per = per
        self.calls = 0

    def count_text(self, text: str) -> int:
        return len(text)

    def count_message(self, message: Mapping[str, Any]) -> int:
        self.calls += 1
        return self.per

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        return 0


def _turn() -> Any:
    h = History()
    h.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    return h.turns[0]


def test_alternating_counters_each_count_once() -> None:
    turn = _turn()
    a, b = _Counting(1), _Counting(10)
    for _ in range(5):
        assert turn.tokens(a) == 2 and turn.tokens(b) == 20
        assert turn.tokens(a, send_reasoning=True) == 2
    assert a.calls == 4 and b.calls == 2  # two messages, counted once per (counter, flag)


def test_the_cache_is_bounded_and_recounts_what_it_dropped() -> None:
    turn = _turn()
    counters = [_Counting(i + 1) for i in range(5)]
    for c in counters:
        assert turn.tokens(c) == 2 * c.per
    assert [c.calls for c in counters] == [2] * 5
    # Four entries are kept: the newest four answer from the cache, the oldest is recounted.
    for c in counters[1:]:
        assert turn.tokens(c) == 2 * c.per
    assert [c.calls for c in counters] == [2] * 5
    assert turn.tokens(counters[0]) == 2
    assert counters[0].calls == 4
