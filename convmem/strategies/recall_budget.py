"""How much of the budget recall gets: the split policy and the reserve it sets in a plan.

When the whole history no longer fits, recall gets most of the free budget and a small block
of the newest turns stays for short-term coherence (:func:`default_recall_budget`). Any
``(free, history_fits, newest_turn_tokens) -> recall tokens`` callable can replace it
(``VectorRecall(split=...)``); :func:`recall_reserve` applies it to a plan being composed and
notes what it decided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .compose import Composition

#: Share of the free budget the newest turns keep when the history no longer fits.
DEFAULT_RECENT_SHARE = 0.1

#: The newest turns kept whole when the history no longer fits (short-term coherence:
#: "and the second one?"), as long as they take at most half the free budget.
DEFAULT_RECENT_TURNS = 3


def default_recall_budget(free: int, history_fits: bool, newest_turns: Sequence[int]) -> int:
    """How many of the free tokens the recalled section may use (the default split policy).

    When the whole (unsummarised) history fits, nothing needs recalling: 0. Otherwise the
    newest turns keep :data:`DEFAULT_RECENT_SHARE` of the budget, or the newest
    :data:`DEFAULT_RECENT_TURNS` turns if they need more (up to half), and recall gets the
    rest. Measured on the LoCoMo development split, this is where the evidence is: recent
    turns hold a tenth of it at 2k tokens, recall most of the rest.

    Args:
        free: Tokens left after the system prompt, summary and new message.
        history_fits: Whether every unsummarised turn would fit in ``free``.
        newest_turns: Tokens of the newest turns, newest first (up to
            :data:`DEFAULT_RECENT_TURNS`).

    Returns:
        Tokens for the recalled section (the rest goes to the newest turns; what recall does
        not use goes back to them too).
    """
    if history_fits or free <= 0:
        return 0
    recent = max(
        int(free * DEFAULT_RECENT_SHARE),
        min(sum(newest_turns[:DEFAULT_RECENT_TURNS]), free // 2),
    )
    return max(0, free - recent)


SplitPolicy = Callable[[int, bool, Sequence[int]], int]
"""``(free, history_fits, newest_turn_tokens) -> recall tokens``: a budget split policy."""


def recall_reserve(comp: Composition, split: SplitPolicy, cap: int | None = None) -> int:
    """Tokens set aside for the recalled section before the newest turns are chosen.

    Args:
        comp: The plan being composed (its remaining budget is what is split).
        split: The policy.
        cap: At most this many tokens (``VectorRecall.max_recall_tokens``), or None.

    Returns:
        The recall tokens; when the history does not fit, a ``recall_budget`` note says so.
    """
    free = max(0, comp.remaining)
    request = comp.request
    fits = True
    total = 0
    newest: list[int] = []
    for turn in reversed(request.turns):
        if comp.is_decided(turn.id):
            continue
        tokens = request.turn_tokens(turn)
        if len(newest) < DEFAULT_RECENT_TURNS:
            newest.append(tokens)
        total += tokens
        if total > free:
            fits = False
            break
    share = max(0, min(free, int(split(free, fits, tuple(newest)))))
    if cap is not None:
        share = min(share, request.budget.to_estimate(cap))
    if not fits:
        policy = getattr(split, "__name__", type(split).__name__)
        comp.note(
            "recall_budget",
            recall=share,
            free=free,
            policy=policy,
            text=f"recall budget {share} of {free} free tokens ({policy}); newest turns "
            "get the rest",
        )
    return share


__all__ = [
    "DEFAULT_RECENT_SHARE",
    "DEFAULT_RECENT_TURNS",
    "SplitPolicy",
    "default_recall_budget",
    "recall_reserve",
]
