"""The benchmark data model: conversations to replay and questions to ask after them.

A benchmark conversation is data only: a list of messages to push through a context strategy one
by one, and questions to ask as the next user message once the last turn has been added. Each
question names the turns that hold its answer (``evidence_turn_ids``), so a runner can check
from a :class:`~convmem.plan.ContextPlan` whether the evidence was still in context, and lists
the gold answer's content words (``answer_keywords``), so it can check whether a summary kept
the answer without calling a model.

A :class:`BenchTurn` is one message (one LoCoMo ``dia_id``), not a convmem *turn* (a user
message plus everything up to the next one); ``turn_id`` is its position in
:attr:`BenchConversation.turns`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from convmem.errors import UsageError

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class BenchTurn:
    """One message of a benchmark conversation.

    Attributes:
        turn_id: Position in :attr:`BenchConversation.turns` (0-based).
        role: ``"user"`` or ``"assistant"``.
        text: The message content exactly as it is sent (speaker prefix, date header and image
            caption already rendered in, for LoCoMo).
        session: 1-based session number (the probe set has a single session).
        date: The session's date and time as the source gives it, or None.
        source_id: The turn's id in the source data, e.g. ``"D3:7"`` for LoCoMo.
        image_caption: The caption of the image shared in this turn, if any (also in ``text``).
        timestamp: When it was said (Unix time, UTC), if the source says; the replay stores
            it as the turn's time, which time-aware recall reads.
    """

    turn_id: int
    role: Role
    text: str
    session: int
    date: str | None
    source_id: str
    image_caption: str | None = None
    timestamp: float | None = None


@dataclass(frozen=True)
class BenchQuestion:
    """A question asked after the conversation, with what is needed to score the answer.

    Attributes:
        question: The question, sent as the next user message.
        answer: The gold answer, or None when there is none (LoCoMo adversarial questions,
            whose right response is that the conversation does not say).
        category: The category name, e.g. ``"temporal"`` or ``"correction"``.
        evidence_turn_ids: Turns that hold the answer, in source order.
        unresolved_evidence: Evidence ids from the source that name no turn.
        answer_keywords: The gold answer's content words (see :func:`content_words`).
        adversarial_answer: The misleading answer of a LoCoMo adversarial question.
        stale_answer: For a corrected fact, the old value that must *not* be given.
        stale_evidence_turn_ids: Turns that state the old value.
    """

    question: str
    answer: str | None
    category: str
    evidence_turn_ids: tuple[int, ...]
    unresolved_evidence: tuple[str, ...]
    answer_keywords: tuple[str, ...]
    adversarial_answer: str | None = None
    stale_answer: str | None = None
    stale_evidence_turn_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class BenchConversation:
    """A conversation to replay and the questions to ask after its last turn.

    Attributes:
        conversation_id: The source's id, e.g. ``"conv-26"`` or ``"probe-0-3"``.
        turns: The messages, in order; ``turns[i].turn_id == i``.
        questions: Questions whose evidence ids index ``turns``.

    Raises:
        UsageError: If turn ids are not 0, 1, 2, ... or a question names a turn that does not
            exist (a broken loader, not a data fault: faults go to ``unresolved_evidence``).
    """

    conversation_id: str
    turns: tuple[BenchTurn, ...]
    questions: tuple[BenchQuestion, ...] = field(default=())

    def __post_init__(self) -> None:
        for i, turn in enumerate(self.turns):
            if turn.turn_id != i:
                raise UsageError(
                    f"{self.conversation_id}: turn at position {i} has turn_id {turn.turn_id}"
                )
        n = len(self.turns)
        for q in self.questions:
            for tid in (*q.evidence_turn_ids, *q.stale_evidence_turn_ids):
                if not 0 <= tid < n:
                    raise UsageError(
                        f"{self.conversation_id}: question {q.question!r} names turn {tid}, "
                        f"but the conversation has {n} turns"
                    )

    def messages(self) -> list[dict[str, str]]:
        """The turns as OpenAI chat messages, in order (no system message).

        Returns:
            One ``{"role": ..., "content": ...}`` dict per turn; message ``i`` is turn ``i``.
        """
        return [{"role": t.role, "content": t.text} for t in self.turns]


# Function words only: month names ("may", "march") and numbers must survive, because dates and
# quantities are exactly what temporal and number questions ask for.
_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further had hadn't has hasn't have haven't
    having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll
    i'm i've if in into is isn't it it's its itself just let's me more most mustn't my myself no
    nor not of off on once only or other ought our ours ourselves out over own same shan't she
    she'd she'll she's should shouldn't since so some such than that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've this those through
    to too under until up very was wasn't we we'd we'll we're we've were weren't what what's
    when when's where where's which while who who's whom why why's will with won't would
    wouldn't yes you you'd you'll you're you've your yours yourself yourselves
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORDS_TEXT.split())

# A number with its internal separators ("1,000", "3.5", "1:56", "5k"), or a word with its
# apostrophes (so contractions match the stopword list); "movies,a" is two words.
_TOKEN_RE = re.compile(r"\d+(?:[.,:]\d+)*[^\W_]*|[^\W\d_][^\W_]*(?:['’][^\W_]+)*")


def _tokens(text: str) -> list[str]:
    out = []
    for tok in _TOKEN_RE.findall(text.lower()):
        tok = tok.replace("’", "'")
        if tok.endswith("'s"):
            tok = tok[:-2]
        out.append(tok)
    return out


def content_words(text: str) -> tuple[str, ...]:
    """The content words of ``text``: lowercased, stopwords and lone letters removed, deduplicated.

    Numbers are kept whole ("4817", "1,000", "3.5") and possessives lose their "'s", so
    "Melanie's daughter" gives ``("melanie", "daughter")`` and "7 May 2023" gives
    ``("7", "may", "2023")``.

    Args:
        text: Any text, typically a gold answer.

    Returns:
        The words in order of first appearance.
    """
    seen: dict[str, None] = {}
    for tok in _tokens(text):
        if tok in STOPWORDS or (len(tok) == 1 and not tok.isdigit()):
            continue
        seen.setdefault(tok, None)
    return tuple(seen)


def keyword_recall(keywords: Sequence[str], text: str) -> float | None:
    """The share of ``keywords`` that occur as whole words in ``text``.

    Uses the tokenisation of :func:`content_words`, so "14" does not match "140".

    Args:
        keywords: Typically :attr:`BenchQuestion.answer_keywords`.
        text: Typically a summary or a rendered context.

    Returns:
        A share in [0, 1], or None when there are no keywords to look for.
    """
    if not keywords:
        return None
    words = set(_tokens(text))
    return sum(k in words for k in keywords) / len(keywords)


@dataclass(frozen=True)
class BenchStats:
    """Counts that describe a benchmark set (see :func:`bench_stats`).

    Attributes:
        conversations: Number of conversations.
        turns: Number of turns, all conversations together.
        questions: Number of questions.
        questions_by_category: Questions per category name.
        evidence_resolved: Evidence turn ids over all questions (with repeats across questions).
        evidence_unresolved: Evidence ids that name no turn.
        questions_without_evidence: Questions with neither resolved nor unresolved evidence.
        image_turns: Turns that carry an image caption.
        image_turn_share: ``image_turns / turns``.
        evidence_image_share: Share of resolved evidence ids that point at image turns.
    """

    conversations: int
    turns: int
    questions: int
    questions_by_category: dict[str, int]
    evidence_resolved: int
    evidence_unresolved: int
    questions_without_evidence: int
    image_turns: int
    image_turn_share: float
    evidence_image_share: float


def bench_stats(conversations: Iterable[BenchConversation]) -> BenchStats:
    """Count conversations, turns, questions per category, evidence and image turns.

    Args:
        conversations: A benchmark set, e.g. from :func:`~convmem.bench.locomo.load_locomo`.

    Returns:
        The counts; shares are 0.0 when their denominator is 0.
    """
    n_conv = n_turns = n_img = resolved = unresolved = no_ev = ev_img = 0
    by_cat: Counter[str] = Counter()
    for conv in conversations:
        n_conv += 1
        n_turns += len(conv.turns)
        n_img += sum(t.image_caption is not None for t in conv.turns)
        for q in conv.questions:
            by_cat[q.category] += 1
            resolved += len(q.evidence_turn_ids)
            unresolved += len(q.unresolved_evidence)
            ev_img += sum(conv.turns[i].image_caption is not None for i in q.evidence_turn_ids)
            if not q.evidence_turn_ids and not q.unresolved_evidence:
                no_ev += 1
    return BenchStats(
        conversations=n_conv,
        turns=n_turns,
        questions=sum(by_cat.values()),
        questions_by_category=dict(sorted(by_cat.items())),
        evidence_resolved=resolved,
        evidence_unresolved=unresolved,
        questions_without_evidence=no_ev,
        image_turns=n_img,
        image_turn_share=n_img / n_turns if n_turns else 0.0,
        evidence_image_share=ev_img / resolved if resolved else 0.0,
    )


__all__ = [
    "STOPWORDS",
    "BenchConversation",
    "BenchQuestion",
    "BenchStats",
    "BenchTurn",
    "Role",
    "bench_stats",
    "content_words",
    "keyword_recall",
]
