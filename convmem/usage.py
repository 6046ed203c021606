"""Cumulative token usage of a conversation, with summariser calls counted apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    summary_prompt_tokens: int = 0
    summary_completion_tokens: int = 0
    summary_calls: int = 0

    @property
    def total_tokens(self) -> int:
        """All tokens, the conversation's calls and summariser calls together."""
        return (
            self.prompt_tokens
            + self.completion_tokens
            + self.summary_prompt_tokens
            + self.summary_completion_tokens
        )

    def add_completion(self, usage: Any) -> None:
        """Adds an SDK ``CompletionUsage`` (or None when the server sent none)."""
        self.calls += 1
        if usage is None:
            return
        self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "completion_tokens_details", None)
        self.reasoning_tokens += int(getattr(details, "reasoning_tokens", 0) or 0)
        pdetails = getattr(usage, "prompt_tokens_details", None)
        self.cached_tokens += int(getattr(pdetails, "cached_tokens", 0) or 0)

    def add_summary(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.summary_calls += 1
        self.summary_prompt_tokens += prompt_tokens
        self.summary_completion_tokens += completion_tokens

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        return d
