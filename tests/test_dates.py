"""Time expressions as ranges (convmem.dates)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from convmem.dates import in_ranges, time_ranges


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


REF = ts(2023, 10, 20, 12)  # a Friday


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("What did I do on 8 May, 2023?", ts(2023, 5, 8, 15), ts(2023, 5, 20)),
        ("What painting did she show on October 13, 2023?", ts(2023, 10, 13), ts(2023, 10, 1)),
        ("What happened in July 2023?", ts(2023, 7, 15), ts(2023, 9, 1)),
        ("What did we talk about last May?", ts(2023, 5, 10), ts(2022, 5, 10)),
        ("what did I say in May", ts(2023, 5, 10), ts(2023, 8, 10)),
        ("the trip two weeks ago", ts(2023, 10, 6), ts(2023, 9, 1)),
        ("3 days ago", ts(2023, 10, 17), ts(2023, 10, 10)),
        ("what did I do last weekend", ts(2023, 10, 14), ts(2023, 10, 1)),
        ("yesterday", ts(2023, 10, 19, 9), ts(2023, 10, 10)),
        ("How many times in 2022?", ts(2022, 6, 1), ts(2023, 6, 1)),
        ("last year", ts(2022, 3, 1), ts(2023, 3, 1)),
        ("last month", ts(2023, 9, 15), ts(2023, 7, 15)),
    ],
)
def test_expressions(text: str, inside: float, outside: float) -> None:
    ranges = time_ranges(text, reference=REF)
    assert ranges, text
    assert in_ranges(inside, ranges)
    assert not in_ranges(outside, ranges)


def test_no_time_named() -> None:
    assert time_ranges("What is my sister called? It may be Anna.", reference=REF) == []
    assert time_ranges("I have 30 cats", reference=REF) == []
    assert time_ranges("Meet at 10:30 pm", reference=REF) == []


def test_month_before_reference_month_rolls_back_a_year() -> None:
    (rng,) = time_ranges("last November", reference=REF)
    assert in_ranges(ts(2022, 11, 15), [rng])
