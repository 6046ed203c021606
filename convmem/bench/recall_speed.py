"""Recall speed: query latency of :class:`~convmem.strategies.VectorRecall` and indexing throughput.

One conversation of N stored turns (a user and an assistant message each: 2N units, every one
in the vector store and the keyword index) shares an in-memory Chroma collection with other
conversations. A *recall query* is what a call waits for before its context is built:
embedding the new message with the packaged all-MiniLM-L6-v2, the dense search and the keyword
search of the conversation (the ``prepare`` job), then fusing and choosing the windows (the
``build``). Stored vectors are seeded random unit vectors (embedding 200k texts would take an
hour on this machine; the search does not care what the vectors mean), stored texts are
generated chat messages, so the keyword index is realistic; queries are real questions,
embedded for real.

Indexing throughput is reported end to end (turns stored one at a time as a chat stores them,
through ``VectorRecall.observe``: both messages embedded, written to Chroma and to the keyword
index), and in its parts: storing units whose vectors are known (Chroma + keyword index) and
embedding texts.

Run it with ``convmem bench recall`` or :func:`run_recall` from Python.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convmem import ConvmemError, UsageError

from .options import parse_counts

DEFAULT_TURNS: tuple[int, ...] = (10_000, 100_000)
DEFAULT_OUT = "bench_results/recall_speed.json"
TARGET_MS: dict[int, float] = {10_000: 20.0, 100_000: 50.0}
"""Recall query p95 targets (query embedding included), by stored turns."""

QUERIES: tuple[str, ...] = (
    "What did we decide about the trip to the coast?",
    "Who was going to pay for the tickets?",
    "When is the dentist appointment again?",
    "What was the name of the restaurant you suggested last May?",
    "Can you remind me what my sister said about the budget?",
    "What did I say about the car two weeks ago?",
    "Which hotel did we book for the conference?",
    "What time does the train leave on Friday?",
    "What was the code for the garage door?",
    "Did I mention what the landlord wanted?",
)

OPENERS: tuple[str, ...] = (
    "",
    "Quick question: ",
    "Sorry, remind me: ",
    "Hey, ",
    "One more thing. ",
    "Wait, ",
    "Before I go: ",
    "Hmm, ",
    "By the way, ",
    "Honestly I forgot. ",
    "Small thing: ",
)
"""Put before the queries so each of the (up to 110) timed queries is a new text."""


@dataclass
class RecallSize:
    """One size: stored turns, what storing them cost, and query latency.

    Attributes:
        turns: Turns of the queried conversation (2 units each).
        other_conversations / other_turns: Other conversations sharing the collection.
        store_seconds: Storing every unit (vectors given: Chroma plus the keyword index).
        units_per_second: Units stored per second.
        queries: Timed queries.
        p50_ms / p95_ms: The recall query, embedding included (``prepare`` + ``build``).
        embed_p50_ms: Of that, embedding the query alone (median).
        dense_p50_ms / keyword_p50_ms: The dense and keyword searches alone (median).
        build_p50_ms: Fusing and choosing the windows (median).
    """

    turns: int
    other_conversations: int
    other_turns: int
    store_seconds: float = 0.0
    units_per_second: float = 0.0
    queries: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    embed_p50_ms: float = 0.0
    dense_p50_ms: float = 0.0
    keyword_p50_ms: float = 0.0
    build_p50_ms: float = 0.0


@dataclass
class RecallSpeedReport:
    """A whole run: sizes, embedding throughput and the environment."""

    sizes: list[RecallSize] = field(default_factory=list)
    embed_texts: int = 0
    embed_texts_per_s: float | None = None
    embed_batch: int = 64
    embed_backend: str = ""
    index_turns: int = 0
    index_turns_per_s: float | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    def targets(self) -> list[tuple[str, str, bool]]:
        """``(target, measured, met)`` for each size with a target."""
        out = []
        for size in self.sizes:
            target = TARGET_MS.get(size.turns)
            if target is not None:
                out.append(
                    (
                        f"recall query p95 <= {target:g} ms at {size.turns:,} turns "
                        "(query embedding included)",
                        f"{size.p95_ms:.1f} ms",
                        size.p95_ms <= target,
                    )
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in self.targets()]
        return data

    def format(self) -> str:
        """The report as text: one line per size, then throughput and targets."""
        env = self.environment
        lines = [
            f"python {env.get('python')}, {env.get('cpus')} CPUs, load average "
            f"{env.get('load_average_start')} at start, {env.get('load_average_end')} at end; "
            f"{self.seconds:.0f} s",
        ]
        if self.skipped:
            return "\n".join([*lines, f"skipped: {self.skipped}"])
        lines.append("")
        lines.append(
            "turns     units/s stored  query p50  query p95  embed p50  dense p50  keyword p50"
            "  build p50"
        )
        for s in self.sizes:
            lines.append(
                f"{s.turns:<9,} {s.units_per_second:>14,.0f}  {s.p50_ms:>6.1f} ms  "
                f"{s.p95_ms:>6.1f} ms  {s.embed_p50_ms:>6.1f} ms  {s.dense_p50_ms:>6.1f} ms  "
                f"{s.keyword_p50_ms:>8.1f} ms  {s.build_p50_ms:>6.1f} ms"
            )
        if self.index_turns_per_s is not None:
            lines.append(
                f"\nindexing, end to end: {self.index_turns_per_s:,.1f} turns/s over "
                f"{self.index_turns} turns stored one at a time (2 messages each: embedding, "
                "Chroma and the FTS5 keyword index)"
            )
        if self.embed_texts_per_s is not None:
            lines.append(
                f"embedding alone (all-MiniLM-L6-v2{self.embed_backend}, batch "
                f"{self.embed_batch}): "
                f"{self.embed_texts_per_s:,.0f} texts/s over {self.embed_texts} texts"
            )
        targets = self.targets()
        if targets:
            lines += ["", "Targets"]
            for name, measured, ok in targets:
                lines.append(f"  {name}: {measured} -> {'met' if ok else 'NOT met'}")
        return "\n".join(lines)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _unit_vectors(rng: Any, n: int, dim: int) -> Any:
    import numpy as np

    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _texts(n: int, seed: int) -> list[str]:
    from convmem.bench.synth import make_history

    return [m["content"] for m in make_history(2 * max(1, min(n, 2_000)), seed=seed)]


def _fill(store: Any, cid: str, turns: int, texts: Sequence[str], rng: Any, dim: int) -> int:
    from convmem.store import StoredTurn

    stored = 0
    for chunk in _chunks(turns, 2_000):
        rows = [
            StoredTurn(cid, i, texts[(2 * i + p) % len(texts)], 1_600_000_000.0 + 600 * i, p)
            for i in chunk
            for p in (0, 1)
        ]
        store.add(rows, _unit_vectors(rng, len(rows), dim).tolist())
        stored += len(rows)
    return stored


def run_size(
    turns: int,
    *,
    embedder: Any,
    other_conversations: int = 4,
    other_turns: int = 2_500,
    queries: int = 100,
    seed: int = 0,
) -> RecallSize:
    """Stores ``turns`` turns (and the other conversations) and times recall queries."""
    import numpy as np

    from convmem import Budget, ContextRequest, History, LocalJob, TiktokenCounter
    from convmem.strategies import Pipeline, Truncate, VectorRecall

    result = RecallSize(turns, other_conversations, other_turns)
    rng = np.random.default_rng(seed)
    texts = _texts(turns, seed)
    dim = len(embedder(["dimension probe"])[0])
    recall = VectorRecall(embedder=embedder)
    store = recall.store
    try:
        t0 = time.perf_counter()
        units = _fill(store, "bench-target", turns, texts, rng, dim)
        for i in range(other_conversations):
            units += _fill(store, f"bench-other-{i}", other_turns, texts, rng, dim)
        result.store_seconds = round(time.perf_counter() - t0, 2)
        result.units_per_second = round(units / max(result.store_seconds, 1e-9), 1)
        history = History()
        for i in range(turns):
            history.append(
                [
                    {"role": "user", "content": texts[(2 * i) % len(texts)]},
                    {"role": "assistant", "content": texts[(2 * i + 1) % len(texts)]},
                ],
                created_at=1_600_000_000.0 + 600 * i,
            )
        counter = TiktokenCounter(encoding="cl100k_base")
        strategy = Pipeline(recall, Truncate(max_tokens=4_000))
        recall.mark_complete("bench-target")  # filled directly above: nothing to repair
        total: list[float] = []
        embed: list[float] = []
        dense: list[float] = []
        keyword: list[float] = []
        build: list[float] = []
        from convmem.lexical import query_terms
        from convmem.strategies.recall import COMMON_TERM_SHARE, KEYWORD_MATCH_CAP

        for i in range(queries + 3):
            # Every query is a new text (VectorRecall remembers the vectors of recent queries).
            question = OPENERS[(i // len(QUERIES)) % len(OPENERS)] + QUERIES[i % len(QUERIES)]
            request = ContextRequest(
                history=history,
                pending=[{"role": "user", "content": question}],
                budget=Budget(1_000_000, 0),
                counter=counter,
                conversation_id="bench-target",
                model="bench",
            )
            q0 = time.perf_counter()
            for job in strategy.prepare(request):
                assert isinstance(job, LocalJob)
                request.results[job.key] = _Result(job.fn())
            q1 = time.perf_counter()
            strategy.build(request)
            q2 = time.perf_counter()
            # The parts, timed apart (not part of the total above).
            e0 = time.perf_counter()
            vector = embedder([question])[0]
            e1 = time.perf_counter()
            store.query("bench-target", vector, k=recall.candidates, min_score=recall.min_score)
            e2 = time.perf_counter()
            terms = store.keyword_terms(
                "bench-target", query_terms(question), COMMON_TERM_SHARE, KEYWORD_MATCH_CAP
            )
            store.keyword_search("bench-target", terms, k=recall.candidates)
            e3 = time.perf_counter()
            if i < 3:  # warm-up: the first query loads the conversation into memory
                continue
            total.append((q2 - q0) * 1e3)
            build.append((q2 - q1) * 1e3)
            embed.append((e1 - e0) * 1e3)
            dense.append((e2 - e1) * 1e3)
            keyword.append((e3 - e2) * 1e3)
        total.sort()
        result.queries = len(total)
        result.p50_ms = round(statistics.median(total), 2)
        result.p95_ms = round(_percentile(total, 0.95), 2)
        result.embed_p50_ms = round(statistics.median(embed), 2)
        result.dense_p50_ms = round(statistics.median(dense), 2)
        result.keyword_p50_ms = round(statistics.median(keyword), 2)
        result.build_p50_ms = round(statistics.median(build), 2)
    finally:
        store.close()
    return result


def run_indexing(turns: int, *, embedder: Any, seed: int = 0) -> float:
    """Stores ``turns`` generated turns one at a time, as a chat does; returns turns per second.

    Each turn goes through ``VectorRecall.observe`` (the job a conversation runs after each
    reply): its messages are embedded and written to Chroma and to the keyword index.
    """
    from convmem import History, LocalJob
    from convmem.strategies import VectorRecall

    texts = _texts(turns, seed + 3)
    recall = VectorRecall(embedder=embedder)
    history = History()
    try:
        recall.warm()
        t0 = time.perf_counter()
        for i in range(turns):
            added = history.append(
                [
                    {"role": "user", "content": texts[(2 * i) % len(texts)]},
                    {"role": "assistant", "content": texts[(2 * i + 1) % len(texts)]},
                ],
                created_at=1_600_000_000.0 + 600 * i,
            )
            for job in recall.observe("bench-index", added):
                assert isinstance(job, LocalJob)
                job.fn()
        seconds = time.perf_counter() - t0
    finally:
        recall.store.close()
    return round(turns / max(seconds, 1e-9), 1)


@dataclass
class _Result:
    value: Any
    ok: bool = True
    error: BaseException | None = None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def run_recall(
    turns: Sequence[int] = DEFAULT_TURNS,
    *,
    other_conversations: int = 4,
    other_turns: int = 2_500,
    queries: int = 100,
    embed_texts: int = 512,
    embed_batch: int = 64,
    index_turns: int = 200,
    seed: int = 0,
    progress: Any = None,
) -> RecallSpeedReport:
    """Times recall at each size (see the module docstring).

    Returns:
        The report; ``skipped`` says why nothing ran (a missing extra).
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import platform

    started = time.perf_counter()
    report = RecallSpeedReport(embed_batch=embed_batch)
    report.environment = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_start": _load(),
    }
    try:
        from convmem.embed import resolve_embedder

        embedder = resolve_embedder(None, batch_size=embed_batch)
        embedder(["warm up"])
        if type(embedder).__name__ != "OnnxEmbedder":
            report.embed_backend = " on sentence-transformers"
        elif getattr(embedder, "quantized", False):
            report.embed_backend = " on ONNX Runtime, int8 weights"
        else:
            report.embed_backend = " on ONNX Runtime"
        # The int8 graph embeds one text per pass whatever batch size it is given.
        report.embed_batch = int(getattr(embedder, "batch_size", embed_batch))
    except (ConvmemError, ImportError) as exc:
        report.skipped = f"vector recall is not available ({exc}): pip install 'convmem[recall]'"
        return report
    for n in turns:
        size = run_size(
            n,
            embedder=embedder,
            other_conversations=other_conversations,
            other_turns=other_turns,
            queries=queries,
            seed=seed,
        )
        report.sizes.append(size)
        if progress is not None:
            progress(
                f"  {n:>7,} turns: query p50 {size.p50_ms:.1f} ms, p95 {size.p95_ms:.1f} ms "
                f"({time.perf_counter() - started:.0f} s so far)"
            )
    if index_turns > 0:
        report.index_turns = index_turns
        report.index_turns_per_s = run_indexing(index_turns, embedder=embedder, seed=seed)
    if embed_texts > 0:
        texts = _texts(embed_texts, seed + 7)[:embed_texts]
        embedder(texts[:embed_batch])
        t0 = time.perf_counter()
        embedder(texts)
        report.embed_texts = len(texts)
        report.embed_texts_per_s = round(len(texts) / (time.perf_counter() - t0), 1)
    report.environment["load_average_end"] = _load()
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def build_parser(prog: str = "convmem bench recall") -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Recall query latency (query embedding included) at 10k and 100k stored "
        "turns, and indexing throughput.",
    )
    p.add_argument(
        "--turns",
        type=lambda t: parse_counts(t, what="turns"),
        default=None,
        help="stored turns of the queried conversation, e.g. 10k,100k (default)",
    )
    p.add_argument("--queries", type=int, default=100, help="timed queries per size")
    p.add_argument("--quick", action="store_true", help="2k turns, 30 queries: under a minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the recall speed benchmark, prints it and writes the JSON report."""
    args = build_parser().parse_args(argv)
    turns = args.turns or ([2_000] if args.quick else list(DEFAULT_TURNS))
    queries = 30 if args.quick else args.queries
    if queries < 1:
        print("convmem bench recall: --queries must be positive", file=sys.stderr)
        return 2
    print(f"convmem bench recall: {', '.join(f'{n:,}' for n in turns)} turns", flush=True)
    try:
        report = run_recall(
            turns,
            queries=queries,
            other_conversations=1 if args.quick else 4,
            other_turns=500 if args.quick else 2_500,
            embed_texts=64 if args.quick else 512,
            index_turns=50 if args.quick else 200,
            seed=args.seed,
            progress=lambda line: print(line, flush=True),
        )
    except UsageError as exc:
        print(f"convmem bench recall: {exc}", file=sys.stderr)
        return 2
    print()
    print(report.format())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import json

    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


__all__ = [
    "DEFAULT_TURNS",
    "RecallSize",
    "RecallSpeedReport",
    "main",
    "run_indexing",
    "run_recall",
    "run_size",
]
