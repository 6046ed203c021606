"""Tests for convmem.store: TurnStore over Chroma (seeded vectors; one test with the model)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convmem.errors import UsageError
from convmem.store import RecallHit, StoredTurn, TurnStore

chromadb = pytest.importorskip("chromadb")
pytestmark = pytest.mark.recall

DIM = 16


def unit(rng: random.Random, dim: int = DIM) -> list[float]:
    v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def turn(conversation_id: str, turn_id: int, text: str | None = None) -> StoredTurn:
    return StoredTurn(conversation_id, turn_id, text or f"{conversation_id} turn {turn_id}", 1e9)


@pytest.fixture
def store() -> Iterator[TurnStore]:
    with TurnStore() as s:
        yield s


def test_query_returns_best_first_with_cosine_scores(store: TurnStore) -> None:
    rng = random.Random(1)
    vectors = [unit(rng) for _ in range(30)]
    store.add([turn("c", i) for i in range(30)], vectors)
    query = unit(rng)
    hits = store.query("c", query, k=5)
    expected = sorted(range(30), key=lambda i: -cos(query, vectors[i]))[:5]
    assert [h.turn_id for h in hits] == expected
    for hit in hits:
        assert isinstance(hit, RecallHit)
        assert hit.conversation_id == "c"
        assert hit.text == f"c turn {hit.turn_id}"
        assert hit.created_at == 1e9
        assert hit.score == pytest.approx(cos(query, vectors[hit.turn_id]), abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_scores_are_cosine_for_unnormalised_vectors(store: TurnStore) -> None:
    store.add([turn("c", 0), turn("c", 1)], [[3.0, 0.0], [1.0, 1.0]])
    hits = store.query("c", [10.0, 0.0], k=2)
    assert [(h.turn_id, round(h.score, 4)) for h in hits] == [(0, 1.0), (1, 0.7071)]


def test_many_conversations_are_isolated(store: TurnStore) -> None:
    rng = random.Random(2)
    shared = unit(rng)
    conversations = [f"conv-{n:02d}" for n in range(20)]
    for n, cid in enumerate(conversations):
        turns = [turn(cid, i) for i in range(n % 5 + 3)]
        vectors = [unit(rng) for _ in turns]
        # Every conversation stores the same sentence with the same vector at a different id.
        turns.append(turn(cid, 100 + n, "I was born in Lyon"))
        vectors.append(shared)
        store.add(turns, vectors)
    assert store.count() == sum(n % 5 + 4 for n in range(20))
    for n, cid in enumerate(conversations):
        hits = store.query(cid, shared, k=50)
        assert {h.conversation_id for h in hits} == {cid}
        assert len(hits) == n % 5 + 4
        assert (hits[0].turn_id, hits[0].text) == (100 + n, "I was born in Lyon")
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert store.count(cid) == n % 5 + 4
        assert store.stored_turn_ids(cid) == {*range(n % 5 + 3), 100 + n}
    assert store.query("nobody", shared) == []
    assert store.stored_turn_ids("nobody") == set()


def test_exclude_turn_ids_still_fills_k(store: TurnStore) -> None:
    rng = random.Random(3)
    query = unit(rng)
    vectors = [unit(rng) for _ in range(20)]
    store.add([turn("c", i) for i in range(20)], vectors)
    store.add([turn("other", i) for i in range(20)], vectors)
    ranked = sorted(range(20), key=lambda i: -cos(query, vectors[i]))
    excluded = set(ranked[:4])
    hits = store.query("c", query, k=3, exclude_turn_ids=excluded)
    assert [h.turn_id for h in hits] == ranked[4:7]
    assert {h.conversation_id for h in hits} == {"c"}
    # A generator of ids works too, and excluding everything leaves nothing.
    assert store.query("c", query, k=3, exclude_turn_ids=(i for i in range(20))) == []
    # Excluding ids that are not stored changes nothing.
    assert [h.turn_id for h in store.query("c", query, k=3, exclude_turn_ids={999})] == ranked[:3]


def test_min_score_drops_weak_hits(store: TurnStore) -> None:
    store.add(
        [turn("c", 0), turn("c", 1), turn("c", 2)],
        [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]],
    )
    assert [h.turn_id for h in store.query("c", [1.0, 0.0, 0.0], min_score=0.5)] == [0, 1]
    assert [h.turn_id for h in store.query("c", [1.0, 0.0, 0.0], min_score=0.9)] == [0]
    assert len(store.query("c", [1.0, 0.0, 0.0], min_score=-1.0)) == 3
    with pytest.raises(UsageError, match="min_score"):
        store.query("c", [1.0, 0.0, 0.0], min_score=float("nan"))


def test_k_larger_than_stored_returns_all_without_warning(store: TurnStore) -> None:
    rng = random.Random(4)
    store.add([turn("c", i) for i in range(3)], [unit(rng) for _ in range(3)])
    store.add([turn("big", i) for i in range(40)], [unit(rng) for _ in range(40)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hits = store.query("c", unit(rng), k=100)
    assert sorted(h.turn_id for h in hits) == [0, 1, 2]


def test_upsert_is_idempotent_and_replaces(store: TurnStore) -> None:
    rng = random.Random(5)
    vectors = [unit(rng) for _ in range(5)]
    turns = [turn("c", i) for i in range(5)]
    store.add(turns, vectors)
    store.add(turns, vectors)
    assert store.count("c") == 5
    # Same id, new text and vector: replaced, not duplicated.
    store.add([StoredTurn("c", 2, "edited", 5.0)], [vectors[0]])
    assert store.count("c") == 5
    hits = store.query("c", vectors[0], k=2)
    assert {(h.turn_id, h.text) for h in hits} == {(0, "c turn 0"), (2, "edited")}
    # Duplicate ids in one batch: the last one wins.
    store.add([StoredTurn("c", 9, "first", 1.0), StoredTurn("c", 9, "last", 2.0)], vectors[:2])
    # Turn 1 holds the same vector (a tie), so ask for both and look at turn 9.
    hit = next(h for h in store.query("c", vectors[1], k=2) if h.turn_id == 9)
    assert (hit.turn_id, hit.text, hit.created_at) == (9, "last", 2.0)
    assert store.count("c") == 6


def test_add_in_chunks_past_the_client_batch_limit(store: TurnStore) -> None:
    rng = random.Random(6)
    store._max_batch = 7  # Chroma's real limit is thousands; the chunking logic is the same.
    store.add([turn("c", i) for i in range(30)], [unit(rng) for _ in range(30)])
    assert store.stored_turn_ids("c") == set(range(30))


def test_delete_conversation_only_touches_that_one(store: TurnStore) -> None:
    rng = random.Random(7)
    for cid in ("a", "b"):
        store.add([turn(cid, i) for i in range(4)], [unit(rng) for _ in range(4)])
    store.delete_conversation("a")
    store.delete_conversation("never-stored")
    assert store.count("a") == 0
    assert store.count("b") == 4
    assert store.count() == 4
    assert store.query("a", unit(rng)) == []


def test_conversation_ids_with_separators_do_not_collide(store: TurnStore) -> None:
    # ids are f"{conversation_id}:{turn_id}"; "a:1" turn 2 and "a" turn 12 must stay apart.
    store.add([turn("a:1", 2), turn("a", 12), turn("a", 1)], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert store.stored_turn_ids("a:1") == {2}
    assert store.stored_turn_ids("a") == {12, 1}


def test_default_stores_are_private() -> None:
    with TurnStore() as first, TurnStore() as second:
        first.add([turn("c", 0)], [[1.0, 0.0]])
        assert first.count() == 1
        assert second.count() == 0
    with pytest.raises(UsageError, match="closed"):
        first.count()
    first.close()  # idempotent


def test_persistent_store_survives_reopen(tmp_path: Path) -> None:
    rng = random.Random(8)
    vectors = [unit(rng) for _ in range(10)]
    with TurnStore(tmp_path / "db", collection="mem-1") as store:
        store.add([turn("c", i) for i in range(10)], vectors)
        before = store.query("c", vectors[3], k=4)
    with TurnStore(str(tmp_path / "db"), collection="mem-1") as store:
        assert store.count() == 10
        assert store.query("c", vectors[3], k=4) == before
    # A client passed in is used as is and left open by close().
    client = chromadb.PersistentClient(
        path=str(tmp_path / "db"), settings=chromadb.config.Settings(anonymized_telemetry=False)
    )
    with TurnStore(client, collection="mem-1") as store:
        assert store.stored_turn_ids("c") == set(range(10))
    assert client.get_collection("mem-1").count() == 10


def test_existing_non_cosine_collection_is_refused() -> None:
    with TurnStore() as store:
        store.client.create_collection(
            "l2-space", configuration={"hnsw": {"space": "l2"}}, embedding_function=None
        )
        with pytest.raises(UsageError, match="distance 'l2'"):
            TurnStore(store.client, collection="l2-space")


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "has space", "x" * 513, 7])
def test_bad_collection_name(name: Any) -> None:
    with pytest.raises(UsageError, match="invalid collection name"):
        TurnStore(collection=name)


def test_bad_client_type() -> None:
    with pytest.raises(UsageError, match="client must be None"):
        TurnStore(42)


def test_bad_inputs_raise_usage_errors(store: TurnStore) -> None:
    store.add([turn("c", 0)], [[1.0, 0.0, 0.0]])
    with pytest.raises(UsageError, match="1 turns but 2 embeddings"):
        store.add([turn("c", 1)], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(UsageError, match="dimension"):
        store.add([turn("c", 1)], [[1.0, 0.0]])
    with pytest.raises(UsageError, match="dimension"):
        store.query("c", [1.0, 0.0])
    with pytest.raises(UsageError, match="finite"):
        store.add([turn("c", 1)], [[float("nan"), 0.0, 0.0]])
    with pytest.raises(UsageError, match="turn_id"):
        store.add([StoredTurn("c", True, "x", 0.0)], [[1.0, 0.0, 0.0]])
    with pytest.raises(UsageError, match="conversation_id"):
        store.add([StoredTurn("", 1, "x", 0.0)], [[1.0, 0.0, 0.0]])
    with pytest.raises(UsageError, match="not StoredTurn"):
        store.add([("c", 1, "x", 0.0)], [[1.0, 0.0, 0.0]])  # type: ignore[list-item]
    for k in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="k must be"):
            store.query("c", [1.0, 0.0, 0.0], k=k)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="empty"):
        store.query("c", [])
    assert store.count() == 1
    store.add([], [])


def test_concurrent_adds_from_threads(store: TurnStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(10):
                store.add([turn(f"t{n}", i)], [unit(rng)])
                store.query(f"t{n}", unit(rng), k=3)
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 60
    assert all(store.count(f"t{n}") == 10 for n in range(6))


def test_shares_a_chroma_system_opened_with_default_settings() -> None:
    # Chroma refuses a second client for the same store with different settings; a user who
    # opened the in-memory store first (default settings, telemetry on) must not break us.
    script = (
        "import chromadb\n"
        "from convmem.store import TurnStore, StoredTurn\n"
        "user = chromadb.EphemeralClient()\n"
        "s = TurnStore()\n"
        "s.add([StoredTurn('c', 0, 'x', 0.0)], [[1.0, 0.0]])\n"
        "assert [h.turn_id for h in s.query('c', [1.0, 0.0])] == [0]\n"
        "assert s.client.get_settings().anonymized_telemetry is True\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_real_embeddings_recall_the_right_turn(embedder: Any) -> None:
    facts = {
        "alice": ["My sister lives in Lyon.", "I work as a nurse.", "I hate cilantro."],
        "bob": ["My sister lives in Lyon too.", "I drive a red bicycle.", "I play the cello."],
    }
    with TurnStore() as store:
        for cid, texts in facts.items():
            store.add([StoredTurn(cid, i, t, 0.0) for i, t in enumerate(texts)], embedder(texts))
        query = embedder(["Which city does my sister live in?"])[0]
        for cid in facts:
            hits = store.query(cid, query, k=3)
            assert [h.conversation_id for h in hits] == [cid] * 3
            assert hits[0].turn_id == 0
            assert hits[0].score > hits[1].score + 0.2
        food = store.query("alice", embedder(["what food do I dislike"])[0], k=1)
        assert food[0].text == "I hate cilantro."


def test_in_memory_index_agrees_with_chroma_and_follows_writes() -> None:
    rng = random.Random(11)
    with TurnStore(cache=True) as cached, TurnStore(cache=False) as plain:
        rows = [turn("c", i) for i in range(300)] + [turn("other", i) for i in range(50)]
        vectors = [unit(rng) for _ in rows]
        cached.add(rows, vectors)
        plain.add(rows, vectors)
        for _ in range(20):
            q = unit(rng)
            a = cached.query("c", q, k=8, exclude_turn_ids=[1, 2, 3])
            b = plain.query("c", q, k=8, exclude_turn_ids=[1, 2, 3])
            assert [h.turn_id for h in a] == [h.turn_id for h in b]
            assert all(abs(x.score - y.score) < 1e-4 for x, y in zip(a, b, strict=True))
            assert all(h.conversation_id == "c" and h.turn_id not in (1, 2, 3) for h in a)
        # Writes after the index was loaded are seen; a deleted conversation is forgotten.
        new = unit(rng)
        cached.add([turn("c", 999, "late")], [new])
        assert cached.query("c", new, k=1)[0].turn_id == 999
        assert cached.query("c", new, k=1, min_score=0.99)[0].text == "late"
        cached.delete_conversation("c")
        assert cached.query("c", new, k=3) == []
        assert cached.query("other", vectors[-1], k=1)[0].turn_id == 49


# --- both indexes, one writer process per embedded directory, a real Chroma server ----------


def test_both_indexes_persist(tmp_path: Path) -> None:
    rng = random.Random(9)
    vectors = [unit(rng) for _ in range(6)]
    units = [
        StoredTurn(
            "c", i // 2, f"message {i} about {'tulips' if i == 3 else 'weather'}", 1e9, i % 2
        )
        for i in range(6)
    ]
    with TurnStore(tmp_path / "db", collection="both") as store:
        store.add(units, vectors)
        assert store.lexical is not None and store.lexical.path is not None
    assert (tmp_path / "db" / "convmem_lexical_both.sqlite3").exists()
    with TurnStore(tmp_path / "db", collection="both") as store:
        assert store.lexical is not None and store.lexical.count("c") == 6  # nothing rebuilt
        hits = store.keyword_search("c", "tulips")
        assert [(h.turn_id, h.part) for h in hits] == [(1, 1)]
        assert store.query("c", vectors[3], k=1)[0].part == 1
        assert store.stored_keys("c") == {(i // 2, i % 2) for i in range(6)}


def test_keyword_index_is_rebuilt_from_the_vectors_when_lost(tmp_path: Path) -> None:
    rng = random.Random(10)
    with TurnStore(tmp_path / "db", collection="lost") as store:
        store.add([StoredTurn("c", 0, "the tulips bloomed", 1e9)], [unit(rng)])
    (tmp_path / "db" / "convmem_lexical_lost.sqlite3").unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / "db" / f"convmem_lexical_lost.sqlite3{extra}").unlink(missing_ok=True)
    with TurnStore(tmp_path / "db", collection="lost") as store:
        assert [h.turn_id for h in store.keyword_search("c", "tulips")] == [0]


def test_a_second_process_is_refused_on_an_embedded_directory(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from convmem.store import TurnStore\n"
        "from convmem.errors import UsageError\n"
        "try:\n"
        "    TurnStore(sys.argv[1])\n"
        "except UsageError as exc:\n"
        "    print('refused:', exc)\n"
        "else:\n"
        "    print('opened')\n"
    )
    root = Path(__file__).resolve().parents[1]

    def other() -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "db")],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with TurnStore(tmp_path / "db") as first, TurnStore(tmp_path / "db") as second:
        # One process may open the directory many times; another process may not.
        second.add([turn("c", 0)], [[1.0, 0.0]])
        assert first.count() == 1
        answer = other()
        assert answer.startswith("refused:") and "chroma run" in answer and "HttpClient" in answer
    assert other() == "opened"  # closed here: the lock is gone


def test_http_client_against_a_real_chroma_server(chroma_server: tuple[str, int]) -> None:
    host, port = chroma_server
    client = chromadb.HttpClient(host=host, port=port)
    rng = random.Random(11)
    v = [unit(rng) for _ in range(4)]
    one = TurnStore(client, collection="served")
    two = TurnStore(chromadb.HttpClient(host=host, port=port), collection="served")
    try:
        one.add([StoredTurn("c", 0, "the tulips bloomed", 1e9)], [v[0]])
        assert [h.turn_id for h in two.keyword_search("c", "tulips")] == [0]
        # A unit another client (process) stores later is seen by both indexes: no cache.
        two.add([StoredTurn("c", 1, "tulips again, and roses", 1e9)], [v[1]])
        assert {h.turn_id for h in one.keyword_search("c", "tulips")} == {0, 1}
        assert one.query("c", v[1], k=1)[0].turn_id == 1
        assert one.stored_keys("c") == {(0, 0), (1, 0)}
    finally:
        one.close()
        two.close()


def test_close_waits_for_a_store_under_way_in_another_thread() -> None:
    # A background store job still writing when the store is closed used to fail half-way
    # (vectors written, then "this LexicalIndex is closed"); close now waits for it.

    rng = random.Random(3)
    store = TurnStore(collection="closing")
    lexical = store.lexical
    assert lexical is not None
    slow_add = lexical.add
    entered = threading.Event()

    def add_slowly(units: Any) -> None:
        entered.set()
        time.sleep(0.3)
        slow_add(units)

    lexical.add = add_slowly  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def job() -> None:
        try:
            store.add([StoredTurn("c", 0, "tulips in May", 1e9)], [unit(rng)])
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=job)
    worker.start()
    assert entered.wait(10)
    store.close()  # returns once the add finished
    worker.join(10)
    assert errors == []
    with pytest.raises(UsageError, match="closed"):
        store.add([StoredTurn("c", 1, "later", 1e9)], [unit(rng)])


def test_keyword_terms_drop_common_words_then_cap_matches_rarest_first(store: TurnStore) -> None:
    def text(i: int) -> str:
        words = ["everyone"]
        words += ["common"] if i < 30 else []
        words += ["middling"] if i < 10 else []
        words += ["rare"] if i < 2 else []
        return " ".join(words)

    rng = random.Random(2)
    store.add([turn("c", i, text(i)) for i in range(100)], [unit(rng) for _ in range(100)])
    terms = ["everyone", "common", "rare", "middling"]
    assert store.keyword_terms("c", terms, 0.5) == ["common", "rare", "middling"]
    assert store.keyword_terms("c", terms, 0.5, max_matches=15) == ["rare", "middling"]
    assert store.keyword_terms("c", terms, 0.5, max_matches=1) == ["rare"]  # rarest always
    assert store.keyword_terms("c", ["everyone"], 0.5, max_matches=15) == ["everyone"]
    # Another conversation's counts are its own.
    store.add([turn("d", i, "rare") for i in range(50)], [unit(rng) for _ in range(50)])
    assert store.keyword_terms("c", terms, 0.5, max_matches=15) == ["rare", "middling"]


def test_reads_are_paged(store: TurnStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100k-turn conversation read in one Chroma get failed ('too many SQL variables')."""
    import convmem.chroma

    monkeypatch.setattr(convmem.chroma, "GET_PAGE", 7)
    rng = random.Random(3)
    vectors = [unit(rng) for _ in range(40)]
    store.add([turn("c", i) for i in range(40)], vectors)
    store.add([turn("other", i) for i in range(9)], [unit(rng) for _ in range(9)])
    assert store.stored_turn_ids("c") == set(range(40))
    assert store.stored_keys("c") == {(i, 0) for i in range(40)}
    assert store.count("c") == 40 and store.count("other") == 9
    with TurnStore(store.client, collection=store.name) as reopened:
        hits = reopened.query("c", vectors[33], k=3)  # loads the index from Chroma in pages
        assert hits[0].turn_id == 33 and hits[0].score > 0.999
        assert len(reopened.keyword_search("c", "turn")) == 40  # keyword index rebuilt too
