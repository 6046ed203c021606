"""Truncate: keep the most recent whole turns that fit."""

from __future__ import annotations

from ..errors import UsageError
from ..plan import ContextPlan
from ..strategy import ContextRequest
from .compose import compose
from .recent import DEFAULT_CACHE_POLICY, BlockTruncation, RecentTurns


class Truncate(RecentTurns):
    """Keeps the most recent whole turns that fit a turn count and/or a token budget.

    The system prompt is pinned and the new message is always sent. Turns are kept newest
    first as one contiguous run and never split, so a ``tool`` reply always travels with the
    assistant message that called it.

    A single turn larger than the budget: an older one is dropped like any other. The *current*
    turn cannot be dropped; if its tool outputs make it too large, the longest outputs are cut
    in the middle with a visible marker (``[... N characters cut by convmem ...]``), and if it
    still cannot fit, :class:`~convmem.errors.ContextOverflowError` is raised before anything
    is sent.

    Args:
        max_turns: Keep at most this many past turns (the current turn not counted).
        max_tokens: Cap on the whole prompt, in tokens (system, tools and the new message
            included). Defaults to the window minus room for the reply; a cap above that has no
            effect.
        cache_policy: How old turns leave once a limit is hit. The default,
            :data:`~convmem.strategies.recent.DEFAULT_CACHE_POLICY` (a
            :class:`~convmem.strategies.BlockTruncation` with its defaults), drops old turns in
            blocks and then keeps the first kept turn fixed until the limit is hit again, so
            the prompt prefix stays the same between calls and providers' prompt caches match
            it. Each drop goes down to a low-water mark chosen from the size of the newest
            turns: the smallest drop that keeps about 85% of the prompt tokens cacheable
            (``target_cacheable``), between 65% and 95% of the room (notes
            ``cache_block_dropped`` and ``cache_prefix_kept`` say what was chosen and kept
            stable). ``None``: a sliding window, the newest turns that fit on every call (one
            old turn dropped per call). In a ``Pipeline`` the policy applies within the room
            the summary and recall leave.

    Raises:
        UsageError: a limit is not a positive int, or the cache policy is not one.
    """

    def __init__(
        self,
        max_turns: int | None = None,
        max_tokens: int | None = None,
        cache_policy: BlockTruncation | None = DEFAULT_CACHE_POLICY,
    ) -> None:
        for label, value in (("max_turns", max_turns), ("max_tokens", max_tokens)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise UsageError(f"Truncate({label}=...) must be a non-negative int, got {value!r}")
        if max_tokens == 0:
            raise UsageError("Truncate(max_tokens=0) leaves no room for the new message")
        super().__init__(max_turns=max_turns, max_tokens=max_tokens, cache_policy=cache_policy)

    @property
    def name(self) -> str:
        parts = []
        if self.max_turns is not None:
            parts.append(f"max_turns={self.max_turns}")
        if self.max_tokens is not None:
            parts.append(f"max_tokens={self.max_tokens}")
        if self.cache_policy is None:
            parts.append("cache_policy=None")
        elif self.cache_policy != DEFAULT_CACHE_POLICY:
            parts.append(f"cache_policy={self.cache_policy!r}")
        return f"Truncate({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.name

    def build(self, request: ContextRequest) -> ContextPlan:
        return compose(request, [self], name=self.name)
