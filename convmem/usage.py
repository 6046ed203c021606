"""Cumulative token usage of a conversation, with summariser calls counted apart, and its cost.

Money is kept in whole nano-dollars (integers), so sums are exact and a store can add them up
like token counts; :attr:`Usage.cost` turns them into US dollars. A call whose model has no price
(see :mod:`convmem.pricing`) makes the cost unknown (``None``), never a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .pricing import cost


@dataclass
class Usage:
    """Tokens billed so far.

    Every successful API response is counted, including rounds of a turn that later failed
    (they were billed), so this is what the conversation cost, not what it kept.

    Attributes:
        prompt_tokens: Prompt tokens of the conversation's own calls.
        completion_tokens: Completion tokens of those calls.
        reasoning_tokens: Of the completion tokens, those spent thinking (when reported).
        cached_tokens: Of the prompt tokens, those served from the provider's cache.
        calls: Number of the conversation's own calls.
        summary_prompt_tokens: Prompt tokens of summariser calls.
        summary_completion_tokens: Completion tokens of summariser calls.
        summary_calls: Number of summariser calls (failed ones included).
        cost_nanousd: Cost of the conversation's own calls, in billionths of a US dollar.
        summary_cost_nanousd: Cost of summariser calls, likewise.
        unpriced_calls: Conversation calls whose model has no price (their cost is unknown).
        unpriced_summary_calls: Summariser calls whose model has no price.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    summary_prompt_tokens: int = 0
    summary_completion_tokens: int = 0
    summary_calls: int = 0
    cost_nanousd: int = 0
    summary_cost_nanousd: int = 0
    unpriced_calls: int = 0
    unpriced_summary_calls: int = 0

    @property
    def cost(self) -> float | None:
        """US dollars so far, summariser calls included; None when a call had no price."""
        if self.unpriced_calls or self.unpriced_summary_calls:
            return None
        return (self.cost_nanousd + self.summary_cost_nanousd) / 1e9

    @property
    def summary_cost(self) -> float | None:
        """US dollars of the summariser calls alone; None when one had no price."""
        return None if self.unpriced_summary_calls else self.summary_cost_nanousd / 1e9

    @property
    def total_tokens(self) -> int:
        """All tokens, the conversation's calls and summariser calls together."""
        return (
            self.prompt_tokens
            + self.completion_tokens
            + self.summary_prompt_tokens
            + self.summary_completion_tokens
        )

    def add_completion(self, usage: Any, model: str | None = None) -> float | None:
        """Adds an SDK ``CompletionUsage`` (or None when the server sent none).

        Returns:
            What the call cost in US dollars at ``model``'s price, or None when unknown (no
            model given, no price for it, or no usage reported).
        """
        self.calls += 1
        if usage is None:
            self.unpriced_calls += 1
            return None
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        details = getattr(usage, "completion_tokens_details", None)
        self.reasoning_tokens += int(getattr(details, "reasoning_tokens", 0) or 0)
        cached = cached_tokens(usage) or 0
        self.cached_tokens += cached
        price = None if model is None else cost(model, prompt, completion, cached)
        if price is None:
            self.unpriced_calls += 1
        else:
            self.cost_nanousd += round(price * 1e9)
        return price

    def add_summary(
        self, prompt_tokens: int, completion_tokens: int, model: str | None = None
    ) -> float | None:
        """Adds a summariser call; returns its cost in US dollars (None when unknown)."""
        self.summary_calls += 1
        self.summary_prompt_tokens += prompt_tokens
        self.summary_completion_tokens += completion_tokens
        price = None if model is None else cost(model, prompt_tokens, completion_tokens)
        if price is None:
            self.unpriced_summary_calls += 1
        else:
            self.summary_cost_nanousd += round(price * 1e9)
        return price

    def to_dict(self) -> dict[str, Any]:
        """The counters, with ``total_tokens``, ``cost`` and ``summary_cost`` (US dollars or
        None) derived."""
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        d["cost"] = self.cost
        d["summary_cost"] = self.summary_cost
        return d


def cached_tokens(usage: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens``, or None when the server did not say."""
    details = getattr(usage, "prompt_tokens_details", None)
    value = getattr(details, "cached_tokens", None)
    return None if value is None else int(value)
