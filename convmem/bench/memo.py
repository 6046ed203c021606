"""Calls the replay run makes once: the summariser client counted and memoised, and the embedder.

:class:`CountingClient` wraps the summariser's client: it counts calls, tokens and time in a
:class:`CallStats` and answers a request identical to an earlier one with the earlier reply
(reused calls are still counted, at their original time, so a row reports what it would cost
alone). :class:`MemoEmbedder` embeds each distinct text once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Memo:
    """A summariser reply kept for reuse, with the time the original call took."""

    value: Any
    seconds: float


@dataclass
class CallStats:
    """What a row's summariser calls cost (reused ones included, at their original time)."""

    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused: int = 0
    seconds: float = 0.0
    saved_seconds: float = 0.0


class _Completions:
    def __init__(self, client: Any, memo: dict[str, Memo], stats: CallStats) -> None:
        self._client = client
        self._memo = memo
        self._stats = stats

    def create(self, **kwargs: Any) -> Any:
        stats = self._stats
        stats.calls += 1
        key = json.dumps({k: v for k, v in kwargs.items() if k != "timeout"}, sort_keys=True)
        hit = self._memo.get(key)
        if hit is not None:
            stats.reused += 1
            stats.seconds += hit.seconds
            stats.saved_seconds += hit.seconds
            self._count(hit.value)
            return hit.value
        t0 = time.perf_counter()
        try:
            value = self._client.chat.completions.create(**kwargs)
        except Exception:
            stats.failures += 1
            stats.seconds += time.perf_counter() - t0
            raise
        seconds = time.perf_counter() - t0
        stats.seconds += seconds
        self._memo[key] = Memo(value, seconds)
        self._count(value)
        return value

    def _count(self, value: Any) -> None:
        usage = getattr(value, "usage", None)
        self._stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
        self._stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)


class _Chat:
    def __init__(self, completions: _Completions) -> None:
        self.completions = completions


class CountingClient:
    """Wraps the summariser client: counts calls, tokens and time; answers repeats from memo.

    Args:
        client: The client to call (anything with ``chat.completions.create``).
        memo: Replies by request, shared by the rows that may ask the same.
        stats: Where this row's calls are counted.
    """

    def __init__(self, client: Any, memo: dict[str, Memo], stats: CallStats) -> None:
        self.chat = _Chat(_Completions(client, memo, stats))


class MemoEmbedder:
    """An embedder that embeds each distinct text once and remembers its vector.

    Every recall row stores the same turns and asks the same questions, so without this a run
    would embed each text once per row.

    Args:
        embedder: The embedder to call for texts not seen yet.
    """

    def __init__(self, embedder: Callable[[Sequence[str]], Sequence[Sequence[float]]]) -> None:
        self._embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self.embedded = 0

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vector in zip(missing, self._embedder(missing), strict=True):
                self._vectors[text] = [float(x) for x in vector]
            self.embedded += len(missing)
        return [self._vectors[t] for t in texts]


__all__ = ["CallStats", "CountingClient", "Memo", "MemoEmbedder"]
