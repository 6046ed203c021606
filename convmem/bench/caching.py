"""Prompt-cache figures of a replay: the cacheable share of each row's calls, and what it saves.

Providers (OpenAI, DeepSeek, DashScope, vLLM, llama.cpp) serve a prompt prefix that repeats the
previous request's from their cache, cheaper and faster. A live conversation makes one call per
user turn; the replay previews that call (``conv.preview`` of the turn's user message, before
the turn is added: the plan a live call would send) and :class:`PrefixMeter` measures it as
:class:`~convmem.Conversation` measures real calls (``plan.shared_prefix_tokens``): the leading
messages identical to the previous call's are the cacheable part.

:func:`cost_per_1000` prices 1,000 questions of a row's mean prompt tokens at a named model's
price (:mod:`convmem.pricing`), once at the full input price and once with the cacheable share
at the cached-input price. :func:`cache_targets` checks the issue's target: the default
``Truncate`` (block truncation) keeps at least 80% of prompt tokens cacheable while its
evidence recall stays within 0.02 of the sliding window's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from convmem import TokenCounter
from convmem.messages import Message
from convmem.pricing import Price, price_for

if TYPE_CHECKING:
    from convmem.bench.results import BenchReport

PRICE_MODEL = "gpt-4o-mini"
"""The model whose price (:mod:`convmem.pricing`) the cost columns use."""

CACHEABLE_TARGET = 0.80
"""The default truncation keeps at least this share of prompt tokens cacheable..."""

EVIDENCE_TOLERANCE = 0.02
"""... while its evidence recall stays within this of the sliding window's."""


class PrefixMeter:
    """Measures, call after call, the prompt tokens each shares with the previous one's prefix.

    Token totals run over the messages (convmem's count of each, as in ``plan.messages``), so a
    shared prefix is never counted twice. One meter per replayed conversation.
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.calls = 0
        self.prompt_tokens = 0
        self.shared_tokens = 0
        self._last: list[Message] = []
        self._totals: list[int] = []  # entry i: tokens of the last call's messages 0..i

    def measure(self, messages: Sequence[Message]) -> int:
        """Records one call's messages; returns the tokens its prefix shares with the last."""
        same = 0
        for old, new in zip(self._last, messages, strict=False):
            if old != new:
                break
            same += 1
        totals = self._totals[:same]
        running = totals[-1] if totals else 0
        for m in messages[same:]:
            running += self.counter.count_message(m)
            totals.append(running)
        shared = totals[same - 1] if same else 0
        self.calls += 1
        self.prompt_tokens += running
        self.shared_tokens += shared
        self._last = list(messages)
        self._totals = totals
        return shared


def share(shared: int, prompt: int) -> float | None:
    """``shared / prompt``, or None when nothing was measured."""
    return shared / prompt if prompt else None


@dataclass(frozen=True)
class QuestionCost:
    """The prompt cost of 1,000 questions at one row's mean tokens, in US dollars."""

    without_cache: float
    with_cache: float


def cost_per_1000(
    tokens_per_question: float, cacheable: float | None, price: Price
) -> QuestionCost:
    """Prompt cost of 1,000 questions: all at the input price, and with the ``cacheable`` share
    at the cached-input price (the rest at the input price)."""
    tokens = 1000 * tokens_per_question
    cached = tokens * (cacheable or 0.0)
    return QuestionCost(
        without_cache=tokens * price.input / 1e6,
        with_cache=((tokens - cached) * price.input + cached * price.cached_input) / 1e6,
    )


def price() -> Price:
    """The price of :data:`PRICE_MODEL` (the table's, or what ``set_price`` set)."""
    found = price_for(PRICE_MODEL)
    assert found is not None, f"{PRICE_MODEL} is in convmem.pricing's table"
    return found


@dataclass(frozen=True)
class CacheTarget:
    """One budget's check of the prompt-cache target."""

    budget: int
    cacheable: float | None
    sliding_cacheable: float | None
    evidence: float | None
    sliding_evidence: float | None

    @property
    def gap(self) -> float | None:
        if self.evidence is None or self.sliding_evidence is None:
            return None
        return self.sliding_evidence - self.evidence

    @property
    def met(self) -> bool | None:
        if self.cacheable is None:
            return None
        close = self.gap is None or self.gap <= EVIDENCE_TOLERANCE + 1e-9
        return self.cacheable >= CACHEABLE_TARGET and close

    def describe(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        verdict = {True: "met", False: "NOT met", None: "?"}[self.met]
        return (
            f"Truncate at {self.budget:,}: {f(self.cacheable)} of prompt tokens cacheable "
            f"(sliding window {f(self.sliding_cacheable)}; target >= {CACHEABLE_TARGET:.2f}), "
            f"evidence {f(self.evidence)} vs sliding {f(self.sliding_evidence)} (within "
            f"{EVIDENCE_TOLERANCE}) -> {verdict}"
        )


def cache_targets(report: BenchReport) -> list[CacheTarget]:
    """The target checked at every budget that has both a default and a sliding Truncate row."""
    rows = {r.spec.key: r for r in report.rows}
    out: list[CacheTarget] = []
    for row in report.rows:
        if row.spec.kind != "truncate" or row.spec.budget is None:
            continue
        sliding = rows.get(f"sliding-{row.spec.budget}")
        if sliding is None:
            continue
        out.append(
            CacheTarget(
                budget=row.spec.budget,
                cacheable=row.cacheable_share,
                sliding_cacheable=sliding.cacheable_share,
                evidence=row.evidence_recall(),
                sliding_evidence=sliding.evidence_recall(),
            )
        )
    return out


__all__ = [
    "CACHEABLE_TARGET",
    "EVIDENCE_TOLERANCE",
    "PRICE_MODEL",
    "CacheTarget",
    "PrefixMeter",
    "QuestionCost",
    "cache_targets",
    "cost_per_1000",
    "price",
    "share",
]
