"""The recent-turn filler and its prompt-cache policy (block truncation with hysteresis).

:class:`RecentTurns` keeps the newest whole turns that fit (:func:`fill_recent`); with a
:class:`BlockTruncation` policy it drops old turns in blocks and keeps the first kept turn fixed
between calls, so the request's prefix stays the same and providers' prompt caches match it.
``Truncate`` is :class:`RecentTurns` with limits and the block policy on by default
(:data:`DEFAULT_CACHE_POLICY`), alone or inside a ``Pipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError
from ..history import Turn
from .composition import Composition, role_of


def fill_recent(
    comp: Composition, *, max_turns: int | None = None, floor: int | None = None
) -> None:
    """The default recent-turn policy: adds the newest whole turns that fit, one contiguous run.

    Continues below the turns already kept, steps over turns already in the recalled section,
    and stops at the first turn that is summarised, over ``max_turns``, over the room left, or
    older than ``floor`` (a turn id).
    """
    history = comp.request.history
    turns = history.turn_list()
    start = len(turns) - 1
    if comp.recent:
        # Continue below the oldest turn already kept (turns are sorted by id).
        start = history.index_after(comp.recent[-1].id) - 2
    for i in range(start, -1, -1):
        turn = turns[i]
        if comp.is_decided(turn.id):
            decision = comp.decisions.get(turn.id)
            if decision is not None and decision.action == "recalled":
                continue  # already sent by recall: room it left can still take older turns
            break  # summarised: the run of recent turns ends here
        if floor is not None and turn.id < floor:
            break
        if max_turns is not None and len(comp.recent) >= max_turns:
            break
        tokens = comp.request.turn_tokens(turn)
        if tokens > comp.remaining:
            break
        comp.add_recent(turn, tokens=tokens)


#: The share of prompt tokens the automatic low-water mark aims to keep cacheable.
DEFAULT_TARGET_CACHEABLE = 0.85

#: The range the automatic low-water mark is clamped to (see :meth:`BlockTruncation.low_water_for`).
#: Below: never drop more than a third of the room (the fixed mark used before); where the target
#: would need more (turns over ~4% of the room), it is out of reach or nearly so, and a deeper
#: drop buys little cacheable share for much evidence. Above: every drop frees at least 5%.
AUTO_LOW_WATER_RANGE = (0.65, 0.95)

#: How many of the newest kept turns the automatic mark averages to estimate a call's new tokens.
ESTIMATE_TURNS = 8


@dataclass(frozen=True)
class BlockTruncation:
    """Prompt-cache policy: drop old turns in blocks and keep the first kept turn fixed.

    A sliding window drops one old turn per call once the budget is hit, so the messages after
    the system prompt change on every call and a provider's prompt cache (OpenAI, DeepSeek,
    vLLM, llama.cpp) never matches past them. With this policy, when the newest turns no longer
    all fit, old turns are dropped down to a low-water mark (a share of the room for recent
    turns, and of ``max_turns``); on later calls the first kept turn stays the same, and only
    new turns are added after it, until the budget is hit again. While every turn fits, every
    turn is sent (the whole history is a stable prefix too).

    The low-water mark is chosen at each drop unless ``low_water`` fixes it: the smallest drop
    that keeps about ``target_cacheable`` of the prompt tokens cacheable over the coming drop
    cycle (:meth:`low_water_for`), so a large budget with small turns drops a few turns and
    sends almost what a sliding window sends, and a small budget with large turns drops more
    (at most a third of the room). A smaller drop keeps more of the older turns (more
    evidence); a larger one caches more.

    In a ``Pipeline`` the room is what the summary and the recall reserve leave: a block drop
    moves the recent turns past turns the summary does not cover yet, so the summary is
    extended once, at the drop, and both then stay the same until the next drop. Room the
    recall leaves unused still goes to older turns (evidence first), so with recall the start
    of the recent turns stays fixed only while recall fills its share; the recalled section,
    which changes with every question, is sent after the recent turns, next to the new
    message (see :attr:`~convmem.plan.ContextPlan.messages`), so it never breaks the prefix
    before it.

    The state (the first kept turn per ``conversation_id``) lives in the strategy object and is
    not persisted: after a restart the next call recomputes it.

    Args:
        low_water: A fixed share of the recent-turn room (and of ``max_turns``) to fill after a
            drop, in (0, 1]; ``None`` (the default) chooses it at each drop from the size of
            the newest turns and ``target_cacheable``.
        target_cacheable: The share of prompt tokens the automatic mark aims to keep in a
            prefix shared with the previous call, in (0, 1). Ignored when ``low_water`` is set.

    Raises:
        UsageError: ``low_water`` is neither None nor in (0, 1], or ``target_cacheable`` is
            not in (0, 1).
    """

    low_water: float | None = None
    target_cacheable: float = DEFAULT_TARGET_CACHEABLE

    def __post_init__(self) -> None:
        lw = self.low_water
        if lw is not None and (
            isinstance(lw, bool) or not isinstance(lw, int | float) or not 0 < lw <= 1
        ):
            raise UsageError(
                f"BlockTruncation(low_water=...) must be in (0, 1] or None, got {lw!r}"
            )
        tc = self.target_cacheable
        if isinstance(tc, bool) or not isinstance(tc, int | float) or not 0 < tc < 1:
            raise UsageError(f"BlockTruncation(target_cacheable=...) must be in (0, 1), got {tc!r}")

    def low_water_for(
        self, newest: Sequence[int], room: int, max_turns: int | None = None
    ) -> tuple[float, float | None]:
        """The low-water mark of a drop, and the turn size it was estimated from.

        With room ``B`` and ``t`` new tokens per call (the turn the previous call answered),
        the prompt grows from ``x * B`` back to ``B`` in ``(1 - x) * B / t`` calls; each adds
        ``t`` tokens the cache cannot hold, and the first after a drop misses whole, so about
        ``1 - 2 * tau / (1 - x**2)`` of the prompt tokens are cacheable (``tau = t / B``). The
        mark is the largest ``x`` that reaches ``target_cacheable``,
        ``sqrt(1 - 2 * tau / (1 - target))``, clamped to :data:`AUTO_LOW_WATER_RANGE`. ``t`` is
        the mean of the newest :data:`ESTIMATE_TURNS` turns that fit (read anyway: the
        estimate costs no extra reads); under ``max_turns`` a call adds one turn of
        ``max_turns``, and the larger share counts.

        Args:
            newest: Token counts of the turns that fit the room, newest first.
            room: Tokens the recent turns may fill.
            max_turns: The turn limit, if any.

        Returns:
            ``(low_water, estimated_turn_tokens)``; a fixed ``low_water`` comes back as set,
            with ``None`` for the estimate.
        """
        if self.low_water is not None:
            return float(self.low_water), None
        sample = newest[:ESTIMATE_TURNS]
        turn_tokens = sum(sample) / len(sample) if sample else float(room)
        tau = turn_tokens / room if room > 0 else 1.0
        if max_turns:
            tau = max(tau, 1 / max_turns)
        lo, hi = AUTO_LOW_WATER_RANGE
        x = math.sqrt(max(0.0, 1 - 2 * tau / (1 - self.target_cacheable)))
        return min(hi, max(lo, x)), turn_tokens


#: The cache policy :class:`~convmem.strategies.Truncate` uses unless told otherwise.
DEFAULT_CACHE_POLICY = BlockTruncation()


class RecentTurns:
    """The default recent-turn filler: the newest whole turns that fit (see :func:`fill_recent`).

    Args:
        max_turns: Keep at most this many past turns.
        max_tokens: Cap on the whole prompt, in tokens.
        cache_policy: :class:`BlockTruncation` to drop old turns in blocks and keep the prefix
            stable for prompt caches; ``None`` for a sliding window (one turn per call).

    Raises:
        UsageError: ``cache_policy`` is neither a :class:`BlockTruncation` nor None.
    """

    role: Literal["recent"] = "recent"

    def __init__(
        self,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        cache_policy: BlockTruncation | None = None,
    ) -> None:
        if cache_policy is not None and not isinstance(cache_policy, BlockTruncation):
            raise UsageError(
                f"cache_policy must be a BlockTruncation or None, got {cache_policy!r}"
            )
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.cache_policy = cache_policy
        # conversation id -> the first kept turn (the anchor of the stable prefix).
        self._anchors: dict[str, int] = {}

    def share_state(self, other: RecentTurns) -> None:
        """Uses ``other``'s cache anchors (a filler merged from several, made anew each call)."""
        self._anchors = other._anchors

    def contribute(self, comp: Composition) -> None:
        policy = self.cache_policy
        if policy is None:
            fill_recent(comp, max_turns=self.max_turns)
            return
        if not comp.recent_floor_set:
            # Chosen on the first pass, with the recall reserve held back.
            comp.recent_floor = self._choose_floor(comp, policy)
            comp.recent_floor_set = True
            fill_recent(comp, max_turns=self.max_turns, floor=comp.recent_floor)
            return
        # The top-up after recall: room the recalled section left goes to older turns, as
        # without the policy (evidence first: measured on the probe set, holding it back cost
        # up to a fifth of the evidence). It varies with what recall found, so in a pipeline
        # with recall the start of the recent turns stays fixed only while recall fills its share.
        recall = any(role_of(c) == "recall" for c in comp.components)
        fill_recent(comp, max_turns=self.max_turns, floor=None if recall else comp.recent_floor)

    def _choose_floor(self, comp: Composition, policy: BlockTruncation) -> int | None:
        """The id of the oldest turn to keep this call (``None``: no floor).

        Pure in a trial composition (a summary planning its coverage); otherwise the anchor
        chosen is remembered for the conversation's next call.
        """
        request = comp.request
        key = request.conversation_id
        previous = self._anchors.get(key)
        room = comp.remaining
        # Newest first: the undecided contiguous run, read only as far as the answer needs
        # (past the turns that fit, down to the previous anchor), so a call's cost does not
        # grow with the history. Without an anchor (a conversation's first call under the
        # policy) the whole run is read once.
        candidates: list[Turn] = []
        fits: list[Turn] = []  # what a sliding window keeps
        costs: list[int] = []  # their token counts
        used = 0
        full = False  # a turn did not fit: ``fits`` is final
        for turn in reversed(request.history.turn_list()):
            if comp.is_decided(turn.id):
                break
            if full and previous is not None and turn.id < previous:
                break  # the run reaches the anchor: the turns below it do not matter
            candidates.append(turn)
            if full:
                continue
            cost = request.turn_tokens(turn)
            if (self.max_turns is not None and len(fits) >= self.max_turns) or (used + cost > room):
                full = True
                continue
            fits.append(turn)
            costs.append(cost)
            used += cost
        if not candidates:
            return None
        # The run's oldest turn read: turns before it are summarised (or there are none), or,
        # when the read stopped at the anchor, it is older than the anchor (max() below).
        first = candidates[-1].id
        if not full:
            # Everything fits: send it all (the whole run is a stable prefix too).
            self._kept(comp, previous, first, len(candidates))
            return None
        if previous is not None and fits:
            # Turns the summary covers now are not candidates: the anchor moves up to the first.
            anchor = max(previous, first)
            if anchor >= fits[-1].id:
                self._kept(comp, previous, anchor, sum(1 for t in candidates if t.id >= anchor))
                return anchor
        # The budget is hit: drop down to the low-water mark.
        low_water, turn_tokens = policy.low_water_for(costs, room, self.max_turns)
        low_tokens = int(room * low_water)
        low_turns = max(1, int(self.max_turns * low_water)) if self.max_turns else None
        kept: list[Turn] = []
        used = 0
        for turn, cost in zip(fits, costs, strict=True):
            if low_turns is not None and len(kept) >= low_turns:
                break
            if kept and used + cost > low_tokens:
                break
            kept.append(turn)
            used += cost
        if not kept:
            self._remember(comp, None)
            return None
        new_anchor = kept[-1].id
        self._remember(comp, new_anchor)
        comp.note(
            "cache_block_dropped",
            kept_from=new_anchor,
            kept_turns=len(kept),
            dropped_turns=sum(1 for t in candidates if (previous or 0) <= t.id < new_anchor),
            low_water=round(low_water, 3),
            room=room,
            estimated_turn_tokens=None if turn_tokens is None else round(turn_tokens, 1),
            target_cacheable=None if policy.low_water is not None else policy.target_cacheable,
        )
        return new_anchor

    def _kept(self, comp: Composition, previous: int | None, first: int, turns: int) -> None:
        """Remembers ``first`` as the anchor and says in the plan what stayed stable."""
        self._remember(comp, first)
        if previous is None:
            return  # the conversation's first call under this policy: nothing to compare
        if first > previous:
            # The turns before ``first`` went into the summary in one block (a summary component
            # extended it when the budget was hit, or at its trigger).
            comp.note("cache_block_summarised", kept_from=first, kept_turns=turns)
        else:
            comp.note("cache_prefix_kept", kept_from=first, kept_turns=turns)

    def _remember(self, comp: Composition, anchor: int | None) -> None:
        if comp.trial:
            return
        key = comp.request.conversation_id
        if anchor is None:
            self._anchors.pop(key, None)
        else:
            self._anchors[key] = anchor
