"""Context strategies: what each call sends from a long history.

- :class:`Truncate` keeps the most recent whole turns that fit (turn count and/or tokens).
- :class:`RollingSummary` summarises the older half when the context reaches 70% of the window.
- :class:`VectorRecall` brings back the past turns most similar to the new message (Chroma).
- :class:`Pipeline` composes them into one budget.
- Your own: a function of the request (or an object with ``build``) returning a
  :class:`Selection` or a list of turns; convmem derives the decisions and checks the plan
  (:mod:`convmem.strategies.custom`).

``VectorRecall`` needs the ``recall`` extra (``pip install 'convmem[recall]'``); it is imported
on first use, so ``import convmem.strategies`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .composition import Composition
from .custom import Selection
from .pipeline import Pipeline
from .recent import DEFAULT_CACHE_POLICY, BlockTruncation, RecentTurns
from .summary import RollingSummary, default_lookahead, default_should_summarize
from .truncate import Truncate

if TYPE_CHECKING:
    from .recall import VectorRecall

__all__ = [
    "DEFAULT_CACHE_POLICY",
    "BlockTruncation",
    "Composition",
    "Pipeline",
    "RecentTurns",
    "RollingSummary",
    "Selection",
    "Truncate",
    "VectorRecall",
    "default_lookahead",
    "default_should_summarize",
]


def __getattr__(name: str) -> Any:
    if name == "VectorRecall":
        from .recall import VectorRecall

        return VectorRecall
    raise AttributeError(name)
