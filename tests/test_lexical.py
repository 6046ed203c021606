"""The keyword index (SQLite FTS5): isolation, persistence, hostile queries."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from convmem import UsageError
from convmem.lexical import LexicalIndex, LexicalUnit, query_terms


def test_query_terms_drop_stopwords_and_repeats() -> None:
    assert query_terms("What is my dog's NAME, my dog?") == ["dog", "name"]
    assert query_terms("the a of") == []
    assert query_terms("code 4821 and 7") == ["code", "4821", "7"]


def test_isolation_across_1000_conversations() -> None:
    index = LexicalIndex()
    units = []
    for c in range(1_000):
        cid = f"user-{c}"
        units += [
            LexicalUnit(cid, 0, 0, f"My locker code is {10_000 + c}, garage secret", 0.0),
            LexicalUnit(cid, 0, 1, "Noted, the garage and the locker.", 0.0),
            LexicalUnit(cid, 1, 0, "I like hiking in the mountains", 0.0),
        ]
    index.add(units)
    assert index.count() == 3_000
    for c in range(0, 1_000, 7):
        cid = f"user-{c}"
        hits = index.search(cid, "what is my locker code?", k=50)
        assert {(h.turn_id, h.part) for h in hits} == {(0, 0), (0, 1)}
        # Another conversation's unique code is never found from here.
        assert index.search(cid, str(10_000 + (c + 1) % 1_000)) == []
        assert index.search(cid, str(10_000 + c))[0].turn_id == 0
    # Ids that differ only in punctuation are different conversations.
    index.add([LexicalUnit("a-1", 0, 0, "zebra", 0.0), LexicalUnit("a 1", 0, 0, "zebu", 0.0)])
    assert [h.turn_id for h in index.search("a-1", "zebra zebu")] == [0]
    assert index.search("a-1", "zebu") == []
    index.delete_conversation("user-3")
    assert index.count("user-3") == 0 and index.count("user-4") == 3


def test_bm25_ranks_the_more_specific_unit_first_and_stems() -> None:
    index = LexicalIndex()
    index.add(
        [
            LexicalUnit("c", 0, 0, "We went camping in the mountains with the kids", 0.0),
            LexicalUnit("c", 1, 0, "The kids painted a sunset", 0.0),
            LexicalUnit("c", 2, 0, "Work was busy", 0.0),
        ]
    )
    hits = index.search("c", "When did they camp in the mountains?")
    assert hits[0].turn_id == 0 and hits[0].score > 0
    assert 2 not in {h.turn_id for h in hits}
    # Re-adding a unit replaces it.
    index.add([LexicalUnit("c", 2, 0, "Camping again next week", 0.0)])
    assert {h.turn_id for h in index.search("c", "camping")} == {0, 2}
    assert index.count("c") == 3


@pytest.mark.parametrize(
    "query",
    ['" OR 1=1 --', "NEAR(a b)", "conv : x", "*", "AND OR NOT", 'a"b', "^start", "col:val", ""],
)
def test_hostile_queries_are_words_not_syntax(query: str) -> None:
    index = LexicalIndex()
    index.add([LexicalUnit("c", 0, 0, "start val b", 0.0)])
    index.search("c", query)  # never an FTS5 syntax error


def test_persistence_and_schema_check(tmp_path: Path) -> None:
    path = tmp_path / "lex.sqlite3"
    index = LexicalIndex(path)
    index.add([LexicalUnit("c", 4, 1, "The wifi password is hunter2", time.time())])
    index.close()
    with pytest.raises(UsageError, match="closed"):
        index.search("c", "wifi")
    again = LexicalIndex(path)
    assert [(h.turn_id, h.part) for h in again.search("c", "wifi password")] == [(4, 1)]
    assert again.keys("c") == {(4, 1)}
    again.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE convmem_lexical_meta SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match="schema version 99"):
        LexicalIndex(path)


def test_common_terms_are_measured_per_conversation() -> None:
    index = LexicalIndex()
    index.add([LexicalUnit("c", i, 0, f"Caroline: topic{i} words", 0.0) for i in range(20)])
    index.add([LexicalUnit("d", i, 0, f"Dana: caroline{i}", 0.0) for i in range(20)])
    assert index.common_terms("c", ["caroline", "topic3"], 0.2) == {"caroline"}
    assert index.common_terms("d", ["caroline", "dana"], 0.2) == {"dana"}


def test_term_counts_per_conversation() -> None:
    index = LexicalIndex()
    index.add([LexicalUnit("c", i, 0, f"garage code {i % 4} and train", 0.0) for i in range(40)])
    index.add([LexicalUnit("d", i, 0, "garage garage", 0.0) for i in range(7)])
    size, counts = index.term_counts("c", ["garage", "train", "zebra"])
    assert size == 40 and counts == {"garage": 40, "train": 40, "zebra": 0}
    assert index.term_counts("d", ["garage"]) == (7, {"garage": 7})


def test_unit_count_follows_this_process_and_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import convmem.lexical as lexical_mod

    path = tmp_path / "kw.db"
    mine, other = LexicalIndex(path), LexicalIndex(path)
    mine.add([LexicalUnit("c", i, 0, "alpha", 0.0) for i in range(20)])
    assert mine.term_counts("c", ["alpha"]) == (20, {"alpha": 20})
    mine.add([LexicalUnit("c", i, 0, "alpha", 0.0) for i in range(20, 25)])  # counted here
    assert mine.term_counts("c", ["alpha"])[0] == 25
    mine.add([LexicalUnit("c", 3, 0, "alpha again", 0.0)])  # a replacement adds no unit
    assert mine.term_counts("c", ["alpha"])[0] == 25
    other.add([LexicalUnit("c", i, 0, "beta", 0.0) for i in range(100, 102)])
    assert mine.term_counts("c", ["alpha"])[0] == 25  # not counted again yet
    monkeypatch.setattr(lexical_mod, "SIZE_RECOUNT_SECONDS", 0.0)
    assert mine.term_counts("c", ["alpha"])[0] == 27  # counted again: the other's units too
    mine.delete_conversation("c")
    assert mine.term_counts("c", ["alpha"]) == (0, {"alpha": 0})
    mine.close()
    other.close()
