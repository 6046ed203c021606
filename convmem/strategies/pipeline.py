"""Pipeline: several strategies composed into one budget."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError
from ..history import Turn
from ..plan import ContextPlan
from ..strategy import ContextRequest, Job, Strategy
from .compose import Component, compose, merge_fillers, prepare_all, role_of
from .custom import StrategyFunction, as_strategy


class Pipeline:
    """Composes strategies into one context with one budget.

    ``Pipeline(RollingSummary(), VectorRecall(), Truncate(max_tokens=8000))`` sends, in order:
    the system prompt, the summary of older turns, the most recent whole turns, recalled turns
    ("earlier in this conversation"), and the new message, all within one budget. The order
    puts what changes least between calls first, so a provider's prompt cache matches as much
    as possible (see :attr:`~convmem.plan.ContextPlan.messages`). The split:

    - the summary takes what it is (its length is bounded by ``RollingSummary.max_summary_tokens``);
    - recall reserves ``VectorRecall.max_recall_tokens`` (default: a quarter of what is left);
    - recent turns get the rest, newest first; room the recall did not use goes back to them.

    ``Truncate``'s ``max_tokens`` caps the whole prompt, and its cache policy (block truncation
    by default) applies within the room the others leave; without a ``Truncate`` the window's
    budget applies and the default recent-turn filler (newest whole turns that fit, a sliding
    window) is used.

    Your own strategy (a function of the request, or an object with ``build``, returning a
    :class:`~convmem.strategies.Selection` or turns) takes the place of that filler: its turns
    are sent verbatim after the summary, and recall fills what is left.

    Args:
        *strategies: ``RollingSummary``, ``VectorRecall``, ``Truncate`` and at most one strategy
            of your own (any order).

    Raises:
        UsageError: a strategy cannot take part in a pipeline, two summary strategies, or two
            recent-turn strategies that cannot be merged.
    """

    def __init__(self, *strategies: Component | Strategy | StrategyFunction) -> None:
        if not strategies:
            raise UsageError("Pipeline() needs at least one strategy")
        parts: list[Component] = []
        for s in strategies:
            if isinstance(s, Pipeline):
                raise UsageError("a Pipeline cannot hold a Pipeline: list its strategies instead")
            if role_of(s) is None:
                try:
                    s = as_strategy(s)  # a strategy of the user's: the recent-turn filler
                except UsageError:
                    raise UsageError(
                        f"{type(s).__name__} cannot take part in a Pipeline: it is neither a "
                        "component (a role and contribute()) nor a strategy (a function of the "
                        "request, or an object with build(request))"
                    ) from None
            parts.append(s)  # type: ignore[arg-type]
        if sum(1 for s in parts if role_of(s) == "summary") > 1:
            raise UsageError("a Pipeline takes at most one summary strategy")
        merge_fillers([s for s in parts if role_of(s) == "recent"])  # type: ignore[misc]
        self.strategies: tuple[Component, ...] = tuple(parts)

    @property
    def name(self) -> str:
        return (
            "Pipeline("
            + ", ".join(getattr(s, "name", type(s).__name__) for s in self.strategies)
            + ")"
        )

    def __repr__(self) -> str:
        return self.name

    def prepare(self, request: ContextRequest) -> list[Job]:
        return prepare_all(self.strategies, request)

    def build(self, request: ContextRequest) -> ContextPlan:
        return compose(request, self.strategies, name=self.name)

    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> list[Job]:
        jobs: list[Job] = []
        for s in self.strategies:
            obs = getattr(s, "observe", None)
            if callable(obs):
                jobs.extend(obs(conversation_id, turns))
        return jobs
