"""Tests for the one synthetic-chat generator (convmem.bench.synth)."""

from __future__ import annotations

import random
import re

import pytest

from convmem.bench import probe
from convmem.bench.synth import make_history, message_text, pick_topic, summary_text
from convmem.errors import UsageError


def test_history_is_deterministic_alternating_and_20_to_60_words() -> None:
    a = make_history(400, seed=3)
    assert a == make_history(400, seed=3)
    assert a != make_history(400, seed=4)
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(a))
    counts = [len(m["content"].split()) for m in a]
    assert min(counts) >= 20 and max(counts) <= 60
    assert len(set(counts)) > 30  # spread over the range, not one length
    assert len({m["content"] for m in a}) == len(a)
    assert all(m["content"].endswith((".", "?", "!")) for m in a)


@pytest.mark.parametrize("bad", [0, 1, 101, -2, True, 2.0])
def test_history_rejects_odd_tiny_or_non_int_sizes(bad: object) -> None:
    with pytest.raises(UsageError):
        make_history(bad)  # type: ignore[arg-type]


def test_filler_leaves_no_keyword_a_planted_fact_could_use() -> None:
    # The probe set relies on it: an answer's keywords occur only in its evidence turn.
    text = " ".join(m["content"] for m in make_history(2_000, seed=1))
    text += " " + summary_text(5)
    words = set(re.findall(r"[A-Za-z]+", text))
    assert not re.search(r"\d", text)
    assert words.isdisjoint(probe._MONTHS)
    assert words.isdisjoint(probe._NAMES)
    assert words.isdisjoint(probe._CITIES)


def test_message_text_puts_the_insert_where_asked() -> None:
    rng = random.Random(0)
    topic = pick_topic(rng)
    fact = "My sister's name is Ingrid."
    first = message_text(rng, "assistant", topic, insert=fact, first=True)
    assert first.startswith(fact)
    later = message_text(rng, "user", topic, insert=fact)
    assert fact in later
    sentences = re.split(r"(?<=[.?!]) ", later)
    assert sentences.index(fact) <= 1
    assert 20 <= len(later.split()) <= 60 + len(fact.split())


def test_summary_text_is_fourteen_deterministic_lines() -> None:
    lines = summary_text(7).splitlines()
    assert len(lines) == 14 and all(line.startswith("- ") for line in lines)
    assert summary_text(7) == "\n".join(lines)
    assert summary_text(8) != summary_text(7)
