"""The replay benchmark's figures: per question, per row, and for a whole run.

:class:`QuestionResult` is what :func:`~convmem.bench.scoring.score_question` measures for one
question; :class:`RowResult` aggregates a row's questions (means, by category) and its
summariser calls; :class:`BenchReport` holds every row with the run's settings. A new column
of the report starts as a field here (and in ``to_dict``); :mod:`convmem.bench.report` prints
and writes them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from convmem.bench.rows import RowSpec


@dataclass(frozen=True)
class QuestionResult:
    """How one context served one question.

    Attributes:
        conversation_id: The benchmark conversation.
        index: The question's position in the conversation's questions.
        category: Its category.
        tokens: Estimated prompt tokens of the context (question included).
        evidence: Resolved evidence turns of the question.
        evidence_present: Of those, how many the context sends verbatim.
        keyword_recall: Share of the gold answer's content words in the context; None when the
            answer has none (e.g. LoCoMo adversarial questions).
        stale_only: For a corrected fact: the old value is in the context without the new
            one. None for other questions.
        evidence_not_summarised: Of the evidence turns, how many the plan dropped although a
            summary strategy should have covered them (``plan.not_summarised``).
    """

    conversation_id: str
    index: int
    category: str
    tokens: int
    evidence: int
    evidence_present: int
    keyword_recall: float | None
    stale_only: bool | None = None
    evidence_not_summarised: int = 0

    @property
    def evidence_share(self) -> float | None:
        """``evidence_present / evidence``; None when the question has no resolved evidence."""
        return self.evidence_present / self.evidence if self.evidence else None

    @property
    def all_evidence(self) -> bool | None:
        """Whether every evidence turn is sent; None without resolved evidence."""
        return self.evidence_present == self.evidence if self.evidence else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "index": self.index,
            "category": self.category,
            "tokens": self.tokens,
            "evidence": self.evidence,
            "evidence_present": self.evidence_present,
            "keyword_recall": _round(self.keyword_recall),
            "stale_only": self.stale_only,
            "evidence_not_summarised": self.evidence_not_summarised,
        }


def _mean(values: Iterable[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class RowResult:
    """One row's results over every conversation.

    Attributes:
        spec: The row.
        strategy: The strategy's own name, e.g. ``"Truncate(max_tokens=4000)"``.
        questions: Per-question results, ordered by conversation then question.
        summary_calls: Summariser calls the strategy made (failed and reused ones included).
        summary_failures: Of those, the ones that failed (the call then fell back).
        summary_prompt_tokens: Prompt tokens of the summariser calls (as the server reported).
        summary_completion_tokens: Their completion tokens.
        summary_reused: Calls answered with the reply to an identical earlier request.
        summary_seconds: Time of the summariser calls, reused ones at their original time.
        wall_seconds: Time to replay and score the row, reused summariser calls counted at
            their original time, so the figure is what the row costs on its own.
        replayed_calls: Calls previewed during the replay, one per user turn (see
            :mod:`convmem.bench.caching`).
        replayed_prompt_tokens: Their prompt tokens (messages, convmem's count).
        replayed_shared_tokens: Of those, the tokens in a prefix shared with the previous call.
    """

    spec: RowSpec
    strategy: str = ""
    questions: list[QuestionResult] = field(default_factory=list)
    summary_calls: int = 0
    summary_failures: int = 0
    summary_prompt_tokens: int = 0
    summary_completion_tokens: int = 0
    summary_reused: int = 0
    summary_seconds: float = 0.0
    wall_seconds: float = 0.0
    replayed_calls: int = 0
    replayed_prompt_tokens: int = 0
    replayed_shared_tokens: int = 0

    def _select(self, category: str | None) -> list[QuestionResult]:
        return [q for q in self.questions if category is None or q.category == category]

    @property
    def mean_tokens(self) -> float:
        """Mean estimated prompt tokens per question (0.0 without questions)."""
        return statistics.fmean(q.tokens for q in self.questions) if self.questions else 0.0

    @property
    def cacheable_share(self) -> float | None:
        """Share of the replayed calls' prompt tokens in a prefix shared with the previous
        call (what a provider's prompt cache can serve); None when no call was replayed."""
        if not self.replayed_prompt_tokens:
            return None
        return self.replayed_shared_tokens / self.replayed_prompt_tokens

    @property
    def summary_tokens(self) -> int:
        return self.summary_prompt_tokens + self.summary_completion_tokens

    def evidence_recall(self, category: str | None = None) -> float | None:
        """Mean share of evidence turns sent, over questions with resolved evidence."""
        return _mean(q.evidence_share for q in self._select(category))

    def all_evidence(self, category: str | None = None) -> float | None:
        """Share of questions (with resolved evidence) whose evidence is all sent."""
        return _mean(q.all_evidence for q in self._select(category))

    def keyword_recall(self, category: str | None = None) -> float | None:
        """Mean share of the gold answers' content words found in the context."""
        return _mean(q.keyword_recall for q in self._select(category))

    def stale_only(self) -> float | None:
        """Share of corrected-fact questions whose context has the stale value only."""
        return _mean(q.stale_only for q in self.questions)

    def not_summarised(self) -> float | None:
        """Mean share of evidence turns dropped, not summarised (summary rows; 0 while the
        summariser works)."""
        return _mean(
            q.evidence_not_summarised / q.evidence if q.evidence else None for q in self.questions
        )

    def to_dict(self, categories: Sequence[str], full_tokens: float | None) -> dict[str, Any]:
        return {
            "key": self.spec.key,
            "kind": self.spec.kind,
            "label": self.spec.label,
            "strategy": self.strategy,
            "budget": self.spec.budget,
            "questions": len(self.questions),
            "mean_tokens": round(self.mean_tokens, 1),
            "savings": _round(savings(self.mean_tokens, full_tokens)),
            "evidence_recall": _round(self.evidence_recall()),
            "all_evidence": _round(self.all_evidence()),
            "keyword_recall": _round(self.keyword_recall()),
            "stale_only": _round(self.stale_only()),
            "not_summarised": _round(self.not_summarised()) if self.spec.uses_summary else None,
            "by_category": {
                c: {
                    "questions": len(self._select(c)),
                    "evidence_recall": _round(self.evidence_recall(c)),
                    "all_evidence": _round(self.all_evidence(c)),
                    "keyword_recall": _round(self.keyword_recall(c)),
                }
                for c in categories
            },
            "summary_calls": self.summary_calls,
            "summary_failures": self.summary_failures,
            "summary_prompt_tokens": self.summary_prompt_tokens,
            "summary_completion_tokens": self.summary_completion_tokens,
            "summary_reused": self.summary_reused,
            "summary_seconds": round(self.summary_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "replayed_calls": self.replayed_calls,
            "replayed_prompt_tokens": self.replayed_prompt_tokens,
            "replayed_shared_tokens": self.replayed_shared_tokens,
            "cacheable_share": _round(self.cacheable_share),
        }


def savings(tokens: float, full_tokens: float | None) -> float | None:
    """``1 - tokens / full_tokens``: the share of prompt tokens saved against the full history."""
    if not full_tokens:
        return None
    return 1.0 - tokens / full_tokens


@dataclass
class BenchReport:
    """A whole benchmark run.

    Attributes:
        name: Names the output files, e.g. ``"probe"``.
        dataset: What was replayed, e.g. ``"LoCoMo (locomo_dev.json), 5 conversations"``.
        categories: Question categories, in report order.
        rows: One result per row, in run order.
        settings: Everything needed to reproduce the run (JSON-compatible).
        summarizer: What the summary rows called, or None when there were none.
        command: The command line that produced it, when run from the CLI.
        seconds: Wall time of the whole run (setup included).
        setup_seconds: Of that, loading the embedding model and starting stores.
    """

    name: str
    dataset: str
    categories: list[str]
    rows: list[RowResult]
    settings: dict[str, Any] = field(default_factory=dict)
    summarizer: str | None = None
    command: str | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0

    @property
    def full_tokens(self) -> float | None:
        """Mean tokens per call of the full-history row, if it ran."""
        for row in self.rows:
            if row.spec.kind == "full":
                return row.mean_tokens
        return None

    def row(self, key: str) -> RowResult:
        """The row with this :attr:`RowSpec.key`.

        Raises:
            KeyError: No such row.
        """
        for row in self.rows:
            if row.spec.key == key:
                return row
        raise KeyError(key)

    def to_dict(self, *, questions: bool = True) -> dict[str, Any]:
        """The report as JSON-compatible data (``questions=False`` leaves out each question)."""
        full = self.full_tokens
        data: dict[str, Any] = {
            "name": self.name,
            "dataset": self.dataset,
            "command": self.command,
            "summarizer": self.summarizer,
            "settings": self.settings,
            "categories": list(self.categories),
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "rows": [r.to_dict(self.categories, full) for r in self.rows],
        }
        if questions:
            data["questions"] = {r.spec.key: [q.to_dict() for q in r.questions] for r in self.rows}
        return data


__all__ = ["BenchReport", "QuestionResult", "RowResult", "savings"]
