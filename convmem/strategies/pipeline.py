"""Pipeline: several strategies composed into one budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UsageError
from ..history import Turn
from ..plan import ContextPlan
from ..strategy import ContextRequest, Job
from .compose import compose, prepare_all


class Pipeline:
    """Composes strategies into one context with one budget.

    ``Pipeline(RollingSummary(), VectorRecall(), Truncate(max_tokens=8000))`` sends, in order:
    the system prompt, the summary of older turns, recalled turns ("earlier in this
    conversation"), and the most recent whole turns, all within one budget. The split:

    - the summary takes what it is (its length is bounded by ``RollingSummary.max_summary_tokens``);
    - recall reserves ``VectorRecall.max_tokens`` (default: a quarter of what is left);
    - recent turns get the rest, newest first; room the recall did not use goes back to them.

    ``Truncate``'s ``max_tokens`` caps the whole prompt; without a ``Truncate`` the window's budget
    applies and a default ``Truncate()`` fills recent turns.

    Args:
        *strategies: ``RollingSummary``, ``VectorRecall`` and ``Truncate`` instances (any order).

    Raises:
        UsageError: a strategy cannot take part in a pipeline.
    """

    def __init__(self, *strategies: Any) -> None:
        if not strategies:
            raise UsageError("Pipeline() needs at least one strategy")
        for s in strategies:
            if getattr(s, "role", None) not in ("summary", "recall", "recent"):
                raise UsageError(
                    f"{type(s).__name__} cannot take part in a Pipeline (it needs a "
                    "contribute() method and a role of 'summary', 'recall' or 'recent')"
                )
        if sum(1 for s in strategies if s.role == "summary") > 1:
            raise UsageError("a Pipeline takes at most one summary strategy")
        self.strategies: tuple[Any, ...] = strategies

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
