"""How recall ranks what it found: reciprocal-rank fusion, the date bonus, later mentions.

The recall job (:meth:`VectorRecall.prepare <convmem.strategies.VectorRecall.prepare>`) returns
:class:`Candidates`: a dense and a keyword ranking of the conversation's units. :func:`fuse`
turns them into one order: each list gives a unit ``1 / (RRF_K + rank)``, and a unit from a
time the new message mentions ("last May", "two weeks ago"; :mod:`convmem.dates`) gets a
bonus. :func:`later_mention` finds, for a recalled message, a later candidate about the same
thing (a correction, an update), which is sent with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..history import Turn
from ..messages import text_of
from ..strategy import ContextRequest
from .recall_units import Key

#: Reciprocal-rank-fusion constant: a unit at rank r in a list scores ``1 / (RRF_K + r)``.
#: Measured on the LoCoMo development split (evidence recall at 2k / 4k tokens): 60 (the
#: usual value) 0.880 / 0.926, 20 0.888 / 0.929: a smaller constant trusts the top of each
#: list more.
RRF_K = 20

#: Fused-score bonus for a unit stored in a time the new message mentions (what a unit
#: ranked first in one list gets).
DEFAULT_DATE_BONUS = 1 / (RRF_K + 1)

#: Keyword-query words found in more than this share of a conversation's units are left out
#: of its keyword query (speaker names, the conversation's constant topic): they match
#: everything and would only add noise.
COMMON_TERM_SHARE = 0.2

#: The keyword query keeps its rarest words while the units they are found in add up to at
#: most this many (``TurnStore.keyword_terms``): FTS5 ranks every match (3-7 us each here),
#: so a long conversation's common words would cost milliseconds for weak matches. On the
#: LoCoMo development split (conversations under a thousand messages) 300 and 1,000 gave
#: the same evidence (0.889 / 0.929 at 2k / 4k tokens).
KEYWORD_MATCH_CAP = 300

#: A later candidate among this many of the best that shares a word of the query with a
#: recalled message counts as a later mention of it (and comes along).
LATER_MENTION_RANK = 30


def query_text(request: ContextRequest) -> str:
    """The text recall searches for: the new user message (or the last turn's)."""
    for msg in reversed(request.pending):
        if msg.get("role") == "user":
            return text_of(msg)
    turns = request.turns
    if turns and turns[-1].user_message is not None:
        return text_of(turns[-1].user_message)
    return ""


@dataclass(frozen=True)
class Candidates:
    """What the recall job found (the result of :meth:`VectorRecall.prepare`'s job).

    Attributes:
        query: The text searched for.
        dense: ``(turn_id, part, cosine)``, best first.
        keyword: ``(turn_id, part, bm25)``, best first.
        seconds: Time the search took (embedding included).
        stored: Units embedded and stored first because they were missing from the store.
    """

    query: str
    dense: tuple[tuple[int, int, float], ...]
    keyword: tuple[tuple[int, int, float], ...]
    seconds: float = 0.0
    stored: int = 0


@dataclass
class Ranking:
    """The fused order of the candidates.

    Attributes:
        order: Messages, best first.
        score: Each message's fused score.
        why: Each message's reasons (``"dense #3 0.41"``, ``"keywords #1"``, ``"date"``).
    """

    order: list[Key]
    score: dict[Key, float]
    why: dict[Key, list[str]]


def fuse(
    cands: Candidates,
    turns: Sequence[Turn],
    index_of: Callable[[int], int | None],
    *,
    date_bonus: float = DEFAULT_DATE_BONUS,
    rrf_k: int = RRF_K,
) -> Ranking:
    """Fuses the dense and keyword rankings by reciprocal rank, plus the date bonus.

    Args:
        cands: What the searches found.
        turns: The history's turns.
        index_of: A turn id's index in ``turns`` (None: gone, e.g. cleared).
        date_bonus: Added for a unit from a time the query mentions (0: none).
        rrf_k: The fusion constant.

    Returns:
        The order (ties: newer first), scores and reasons.
    """
    fused: dict[Key, float] = {}
    why: dict[Key, list[str]] = {}
    for name, hits in (("dense", cands.dense), ("keywords", cands.keyword)):
        for rank, (turn_id, part, score) in enumerate(hits):
            idx = index_of(turn_id)
            if idx is None or part >= len(turns[idx].messages):
                continue  # gone (cleared) or stale
            key = (idx, part)
            fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank + 1)
            label = f"{name} #{rank + 1}"
            if name == "dense":
                label += f" {score:.2f}"
            why.setdefault(key, []).append(label)
    if date_bonus and fused and turns:
        from ..dates import in_ranges, time_ranges

        ranges = time_ranges(cands.query, reference=turns[-1].created_at)
        if ranges:
            for key in fused:
                if in_ranges(turns[key[0]].created_at, ranges):
                    fused[key] += date_bonus
                    why[key].append("date")
    order = sorted(fused, key=lambda key: (-fused[key], -key[0], key[1]))
    return Ranking(order, fused, why)


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light suffix stripper, enough to match "relocating" with "relocate".

    Remembered per word (a build stems the words of every candidate it has not seen before:
    half of a first build's time at 10k stored turns before this cache).
    """
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_stems(text: str) -> frozenset[str]:
    """The stemmed content words of ``text`` (stopwords left out)."""
    from ..lexical import query_terms

    return frozenset(stem(w) for w in query_terms(text))


def message_stems(turn: Turn, part: int) -> frozenset[str]:
    """The stemmed content words of one message."""
    return content_stems(text_of(turn.messages[part]))


def later_mention(
    key: Key,
    order: Sequence[Key],
    words: Callable[[Key], frozenset[str]],
    available: Callable[[Key], bool],
    query: frozenset[str],
) -> Key | None:
    """A later candidate message about the same thing as ``key`` (e.g. a correction), if any.

    The same thing: it shares two or more content words with the message, and either a third
    of the smaller message's words, or (among the :data:`LATER_MENTION_RANK` best candidates)
    a word of the query (one shared word is not enough: "our team had a long discussion" is not
    a later mention of "the new team lead is Isolde"; "the team lead is Leopold after all" is).
    The best ranked such candidate.

    Args:
        key: The recalled message.
        order: The candidates, best first.
        words: A message's stemmed content words (cached by the caller).
        available: Whether a message may still be sent.
        query: The query's stemmed content words.
    """
    base = words(key)
    if not base:
        return None
    for rank, other in enumerate(order):
        if other <= key or not available(other):
            continue
        theirs = words(other)
        shared = base & theirs
        same = len(shared) >= 2 and (
            len(shared) * 3 >= min(len(base), len(theirs))
            or (rank < LATER_MENTION_RANK and bool(shared & query))
        )
        if same:
            return other
    return None


__all__ = [
    "COMMON_TERM_SHARE",
    "DEFAULT_DATE_BONUS",
    "KEYWORD_MATCH_CAP",
    "LATER_MENTION_RANK",
    "RRF_K",
    "Candidates",
    "Ranking",
    "content_stems",
    "fuse",
    "later_mention",
    "message_stems",
    "query_text",
    "stem",
]
