"""Learning, per model, how far convmem's estimates are from what the server counts.

The server is the truth: every ``usage.prompt_tokens`` it reports, every count its tokenize
endpoint returns and every number in a context-overflow error is a sample. Budgets scale
estimates by the learnt ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError


class UsageCalibrator:
    """Learns, per model, how far estimates are from what the server bills.

    Keeps a ratio ``reported_prompt_tokens / estimated_prompt_tokens`` per model as an
    exponential moving average (the first sample is taken as is), clamped to
    ``[min_ratio, max_ratio]``; samples where either count is below ``min_tokens`` are
    ignored, since fixed overheads dominate them. Budgets scale estimates by the ratio.
    Samples come from ``usage.prompt_tokens``, from a server's tokenize endpoint (before the
    first call), and from context-overflow errors (:meth:`observe_overflow`).

    Args:
        alpha: Weight of a new sample in the average, in (0, 1].
        min_tokens: Smallest estimate and report that count as a sample.
        min_ratio: Lower clamp of the ratio.
        max_ratio: Upper clamp of the ratio.

    Raises:
        UsageError: A parameter is out of range.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        min_tokens: int = 16,
        min_ratio: float = 0.5,
        max_ratio: float = 4.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise UsageError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0 < min_ratio <= 1 <= max_ratio:
            raise UsageError(
                f"need 0 < min_ratio <= 1 <= max_ratio, got {min_ratio!r}, {max_ratio!r}"
            )
        if min_tokens < 1:
            raise UsageError(f"min_tokens must be at least 1, got {min_tokens!r}")
        self.alpha = float(alpha)
        self.min_tokens = int(min_tokens)
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self._ratios: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def _clamp(self, value: float) -> float:
        return min(self.max_ratio, max(self.min_ratio, value))

    def observe(self, model: str, estimated: int, reported: int) -> None:
        """Records one call's estimated and reported prompt tokens.

        Args:
            model: The model the call went to.
            estimated: convmem's estimate of the prompt, in tokens.
            reported: ``usage.prompt_tokens`` from the server.
        """
        if estimated < self.min_tokens or reported < self.min_tokens:
            return
        sample = self._clamp(reported / estimated)
        previous = self._ratios.get(model)
        ratio = sample if previous is None else previous + self.alpha * (sample - previous)
        self._ratios[model] = self._clamp(ratio)
        self._samples[model] = self._samples.get(model, 0) + 1

    def observe_overflow(
        self,
        model: str,
        estimated: int,
        *,
        server_tokens: int | None = None,
        limit: int | None = None,
    ) -> float:
        """Learns from a call the server refused as too long; returns the new ratio.

        A failed call teaches as much as a successful one. When the server stated its count
        of the prompt (llama.cpp, OpenAI, vLLM do), that count is the truth for this prompt:
        the ratio jumps to it at once (no averaging: the same prompt must not fail again).
        Otherwise the prompt was more than ``limit`` real tokens although convmem thought it
        fitted, so the ratio becomes at least ``limit / estimated`` plus a 10% margin, and at
        least 25% above what it was: a conservative correction.

        Args:
            model: The model.
            estimated: convmem's raw estimate of the refused prompt.
            server_tokens: The server's count of it, when its error stated one.
            limit: The most prompt tokens the server takes, when known.

        Returns:
            The ratio now in force for ``model``.
        """
        if estimated <= 0:
            return self.ratio(model)
        current = self.ratio(model)
        if server_tokens is not None and server_tokens > 0:
            target = server_tokens / estimated
        else:
            target = current * 1.25
            if limit is not None and limit > 0:
                target = max(target, limit * 1.1 / estimated)
        self._ratios[model] = self._clamp(max(current, target))
        self._samples[model] = self._samples.get(model, 0) + 1
        return self._ratios[model]

    def ratio(self, model: str) -> float:
        """The learnt ratio for ``model``; 1.0 when nothing was observed."""
        return self._ratios.get(model, 1.0)

    def samples(self, model: str) -> int:
        """How many samples shaped the ratio for ``model``."""
        return self._samples.get(model, 0)

    def corrected(self, model: str, estimated: int) -> int:
        """An estimate scaled by the model's ratio, rounded up."""
        # round() first: 100 * 1.1 is 110.00000000000001, which must not become 111.
        return math.ceil(round(estimated * self.ratio(model), 6))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot, for :meth:`from_dict`."""
        return {
            "alpha": self.alpha,
            "min_tokens": self.min_tokens,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
            "models": {
                model: {"ratio": ratio, "samples": self._samples.get(model, 0)}
                for model, ratio in self._ratios.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageCalibrator:
        """Rebuilds a calibrator from :meth:`to_dict` output.

        Raises:
            UsageError: The data is malformed.
        """
        try:
            calibrator = cls(
                alpha=float(data.get("alpha", 0.3)),
                min_tokens=int(data.get("min_tokens", 16)),
                min_ratio=float(data.get("min_ratio", 0.5)),
                max_ratio=float(data.get("max_ratio", 4.0)),
            )
            for model, entry in dict(data.get("models", {})).items():
                calibrator._ratios[str(model)] = calibrator._clamp(float(entry["ratio"]))
                calibrator._samples[str(model)] = int(entry.get("samples", 0))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"malformed UsageCalibrator data: {exc}") from exc
        return calibrator

    def __repr__(self) -> str:
        return f"UsageCalibrator({self._ratios!r})"


__all__ = ["UsageCalibrator"]
