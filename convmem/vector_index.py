"""One conversation's vectors in memory, searched exactly (cosine) with numpy; the record types.

:class:`~convmem.store.TurnStore` keeps a :class:`ConversationIndex` per queried conversation
(loaded from Chroma on its first query, kept up to date by the store's writes): an exact search
over one conversation's rows costs about a millisecond at 10k turns, where Chroma's
per-conversation ``where`` filter costs tens. :func:`vector` checks an embedding given by a
caller before it reaches Chroma or numpy. :class:`StoredTurn` (what is stored) and
:class:`RecallHit` (what a query finds) are importable from :mod:`convmem.store` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class StoredTurn:
    """One finished turn, as stored for recall.

    Attributes:
        conversation_id: The conversation it belongs to; queries never cross it.
        turn_id: Its index in that conversation's history (unique within the conversation).
        text: What is embedded (and indexed by keyword): for :class:`VectorRecall`, one
            message of the turn with its neighbours.
        created_at: When the turn finished, seconds since the epoch.
        part: Which unit of the turn this is (:class:`VectorRecall` stores one per message,
            ``part`` being the message's index in the turn); ``(conversation_id, turn_id,
            part)`` identifies a stored unit.
    """

    conversation_id: str
    turn_id: int
    text: str
    created_at: float
    part: int = 0


@dataclass(frozen=True)
class RecallHit:
    """A stored turn returned by :meth:`TurnStore.query`.

    Attributes:
        conversation_id: The conversation it belongs to (always the one queried).
        turn_id: Its index in that conversation's history.
        text: The stored text.
        created_at: When the turn finished, seconds since the epoch.
        score: Cosine similarity to the query, in ``[-1, 1]``; higher is closer.
        part: The unit of the turn (see :attr:`StoredTurn.part`).
    """

    conversation_id: str
    turn_id: int
    text: str
    created_at: float
    score: float
    part: int = 0


class ConversationIndex:
    """One conversation's vectors in memory, searched exactly (cosine) with numpy."""

    def __init__(self) -> None:
        self.turn_ids: list[int] = []
        self.parts: list[int] = []
        self.texts: list[str] = []
        self.created: list[float] = []
        self.row_of: dict[tuple[int, int], int] = {}
        self.rows_of_turn: dict[int, list[int]] = {}
        self._rows: list[Any] = []  # unit vectors, stacked lazily
        self._matrix: Any = None

    def upsert(
        self, turn_id: int, part: int, text: str, created_at: float, vector: Sequence[float]
    ) -> None:
        import numpy as np

        vec = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        unit = vec / norm if norm > 0 else vec
        row = self.row_of.get((turn_id, part))
        if row is None:
            row = self.row_of[(turn_id, part)] = len(self.turn_ids)
            self.rows_of_turn.setdefault(turn_id, []).append(row)
            self.turn_ids.append(turn_id)
            self.parts.append(part)
            self.texts.append(text)
            self.created.append(created_at)
            self._rows.append(unit)
        else:
            self.texts[row] = text
            self.created[row] = created_at
            self._rows[row] = unit
            if self._matrix is not None and row < self._matrix.shape[0]:
                self._matrix[row] = unit

    def search(
        self,
        conversation_id: str,
        query: list[float],
        *,
        k: int,
        min_score: float | None,
        excluded: Sequence[int],
    ) -> list[RecallHit]:
        import numpy as np

        if not self.turn_ids:
            return []
        if self._matrix is None:
            self._matrix = np.vstack(self._rows)
        elif self._matrix.shape[0] < len(self._rows):
            # Appended since the last search (the usual case: one turn per call): stack only
            # the new rows instead of the whole conversation again.
            self._matrix = np.vstack([self._matrix, *self._rows[self._matrix.shape[0] :]])
        q = np.asarray(query, dtype=np.float32)
        if q.shape[0] != self._matrix.shape[1]:
            raise UsageError(
                f"query vector has dimension {q.shape[0]}, stored vectors {self._matrix.shape[1]}"
            )
        norm = float(np.linalg.norm(q))
        scores = self._matrix @ (q / norm if norm > 0 else q)
        for turn_id in excluded:
            for row in self.rows_of_turn.get(turn_id, ()):
                scores[row] = -np.inf
        n = min(k, len(self.turn_ids))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        hits = [
            RecallHit(
                conversation_id=conversation_id,
                turn_id=self.turn_ids[i],
                text=self.texts[i],
                created_at=self.created[i],
                score=max(-1.0, min(1.0, float(scores[i]))),
                part=self.parts[i],
            )
            for i in top
            if np.isfinite(scores[i]) and (min_score is None or scores[i] >= min_score)
        ]
        hits.sort(key=lambda hit: (-hit.score, hit.turn_id, hit.part))
        return hits


def vector(values: Sequence[float]) -> list[float]:
    if isinstance(values, (str, bytes)):
        raise UsageError("an embedding must be a sequence of numbers, not a string")
    try:
        vector = [float(x) for x in values]
    except (TypeError, ValueError) as exc:
        raise UsageError("an embedding must be a sequence of numbers") from exc
    if not vector:
        raise UsageError("an embedding must not be empty")
    if not all(math.isfinite(x) for x in vector):
        raise UsageError("an embedding must hold finite numbers (no NaN or infinity)")
    return vector


__all__ = ["ConversationIndex", "RecallHit", "StoredTurn", "vector"]
