"""Scoring one question: what of its evidence and answer the context a strategy built sends.

:func:`score_question` reads the :class:`~convmem.plan.ContextPlan` previewed for a question:

- **tokens**: ``plan.estimated_tokens``;
- **evidence recall**: the share of the question's evidence turns that the context sends
  verbatim (``plan.kept`` or ``plan.recalled``), and whether all of them are sent;
- **answer keywords**: the share of the gold answer's content words found in the context text
  (system, summary, recalled and recent messages; the question itself excluded). This is how a
  summary is credited: its evidence turns are ``summarised``, not sent;
- **stale only** (questions with a corrected fact): the old value is in the context and the new
  one is not, so a model would answer with the stale value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from convmem import ContextPlan
from convmem.bench.data import BenchQuestion, content_words
from convmem.bench.results import QuestionResult
from convmem.messages import Message, text_of


class ContextWords:
    """Content words of context messages, cached per conversation message text.

    A long history is scored once per question per row; turn texts repeat across all of them,
    so their words are computed once. Summary and recalled sections (system messages) change
    with every call and are not cached.
    """

    def __init__(self) -> None:
        self._cache: dict[str, frozenset[str]] = {}

    def of_message(self, message: Mapping[str, Any]) -> frozenset[str]:
        text = text_of(message)
        if message.get("role") == "system":
            return frozenset(content_words(text))
        words = self._cache.get(text)
        if words is None:
            words = self._cache[text] = frozenset(content_words(text))
        return words

    def of_context(self, messages: Sequence[Message]) -> set[str]:
        out: set[str] = set()
        for message in messages:
            out |= self.of_message(message)
        return out


def _share(keywords: Sequence[str], words: set[str]) -> float | None:
    # Keywords are content words, never stopwords, so membership in the context's content
    # words is exactly keyword_recall() on the context text.
    if not keywords:
        return None
    return sum(k in words for k in keywords) / len(keywords)


def score_question(
    plan: ContextPlan,
    question: BenchQuestion,
    turn_map: Sequence[int],
    *,
    conversation_id: str,
    index: int,
    words: ContextWords | None = None,
    part_map: Sequence[int] | None = None,
) -> QuestionResult:
    """Scores one question's context.

    Args:
        plan: The context built for the question (its last message is the question).
        question: The question.
        turn_map: For each benchmark turn index, the convmem turn id that holds it.
        conversation_id: The benchmark conversation, for the record.
        index: The question's position, for the record.
        words: A shared word cache (a new one when None).
        part_map: For each benchmark turn index, its message's index in that convmem turn
            (a recalled turn only partly sent counts only for the messages sent).

    Returns:
        The result.
    """
    kept = set(plan.kept)
    recalled = {d.turn_id: d.parts for d in plan.turn_decisions if d.action == "recalled"}
    recalled.update({t: None for t in plan.recalled if t not in recalled})

    def is_sent(i: int) -> bool:
        # Recall may send part of a turn: then the evidence message itself must be among
        # the parts sent.
        tid = turn_map[i]
        if tid in kept:
            return True
        if tid not in recalled:
            return False
        parts = recalled[tid]
        return parts is None or part_map is None or part_map[i] in parts

    evidence = [turn_map[i] for i in question.evidence_turn_ids]
    present = sum(1 for i in question.evidence_turn_ids if is_sent(i))
    lost = set(plan.not_summarised)
    cache = words if words is not None else ContextWords()
    context = cache.of_context(plan.messages[:-1])  # the question itself is not context
    stale_only: bool | None = None
    if question.stale_answer is not None:
        stale = content_words(question.stale_answer)
        new = question.answer_keywords
        has_stale = bool(stale) and all(k in context for k in stale)
        has_new = bool(new) and all(k in context for k in new)
        stale_only = has_stale and not has_new
    return QuestionResult(
        conversation_id=conversation_id,
        index=index,
        category=question.category,
        tokens=plan.estimated_tokens,
        evidence=len(evidence),
        evidence_present=present,
        keyword_recall=_share(question.answer_keywords, context),
        stale_only=stale_only,
        evidence_not_summarised=sum(1 for tid in evidence if tid in lost),
    )


__all__ = ["ContextWords", "score_question"]
