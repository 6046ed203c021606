"""What tokens cost in money: a price table per model, and the arithmetic.

Prices are US dollars per million tokens: input, cached input (a prompt prefix the provider
served from its cache) and output, as the providers list them for standard (not batch, not
priority) processing on the date in :data:`PRICES_AS_OF`. Prices change: correct them for the
process with :func:`set_price` (conversations, ``conv.usage.cost`` and ``convmem chat`` use it),
or pass ``prices={...}`` to :func:`price_for` and :func:`cost`. A model with no price here has none:
:func:`cost` returns ``None`` rather than a guess, and so does everything built on it. A local
server (llama.cpp, Ollama, vLLM on your machine) costs what you say it costs:
``set_price("SmolLM2-135M-Instruct", 0, 0, 0)``.

Where a provider tiers its prices by prompt length (DashScope's Qwen models), the table holds
the first tier, which covers prompts up to 32k tokens (128k for ``qwen-plus``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError
from .models import _candidates

#: When the built-in prices were read from the providers' price pages. They are not fetched at
#: run time (convmem works offline): correct them with ``set_price`` or ``prices=``.
PRICES_AS_OF = "2025"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens.

    Attributes:
        input: A prompt token.
        cached_input: A prompt token served from the provider's prompt cache; when the
            provider has no cache discount it equals ``input``.
        output: A completion token (reasoning tokens included: they are billed as output).
    """

    input: float
    cached_input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise UsageError(f"Price.{name} must be a finite number >= 0, got {value!r}")


_BUILTIN: dict[str, Price] = {
    # OpenAI (platform.openai.com/docs/pricing, standard tier).
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "gpt-5-chat": Price(1.25, 0.125, 10.00),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4-turbo": Price(10.00, 10.00, 30.00),
    "gpt-4": Price(30.00, 30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 0.50, 1.50),
    "o1": Price(15.00, 7.50, 60.00),
    "o1-mini": Price(1.10, 0.55, 4.40),
    "o3": Price(2.00, 0.50, 8.00),
    "o3-mini": Price(1.10, 0.55, 4.40),
    "o4-mini": Price(1.10, 0.275, 4.40),
    # DeepSeek (api-docs.deepseek.com/quick_start/pricing): cache hit vs miss.
    "deepseek-chat": Price(0.28, 0.028, 0.42),
    "deepseek-reasoner": Price(0.28, 0.028, 0.42),
    # Alibaba Cloud Model Studio (DashScope), international, first tier; an implicit cache hit
    # is billed at 20% of the input price.
    "qwen-max": Price(1.60, 0.32, 6.40),
    "qwen3-max": Price(1.20, 0.24, 6.00),
    "qwen-plus": Price(0.40, 0.08, 1.20),
    "qwen-turbo": Price(0.05, 0.01, 0.20),
    "qwen-flash": Price(0.05, 0.01, 0.40),
}

_overrides: dict[str, Price] = {}


def set_price(model: str, input: float, cached_input: float, output: float) -> None:
    """Sets (or corrects) a model's price for this process; dollars per million tokens."""
    if not isinstance(model, str) or not model:
        raise UsageError("set_price needs a model name")
    _overrides[model] = Price(input, cached_input, output)


def price_for(model: str, prices: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``: from ``prices``, then :func:`set_price`, then the table.

    Names are matched as the window table matches them (provider prefix, date suffix and
    ``-latest`` removed: ``openai/gpt-4o-2024-08-06`` is ``gpt-4o``), but never by family:
    ``gpt-4o-mini`` does not fall back to ``gpt-4o``'s price.

    Returns:
        The :class:`Price`, or ``None`` when the model has none.
    """
    for table in (prices or {}, _overrides, _BUILTIN):
        if model in table:
            return table[model]
        for name in _candidates(model):
            if name in table:
                return table[name]
    return None


def cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    prices: Mapping[str, Price] | None = None,
) -> float | None:
    """What one call cost in US dollars, or ``None`` when ``model`` has no price.

    ``cached_tokens`` are the part of ``prompt_tokens`` the provider reported as served from
    its cache (``usage.prompt_tokens_details.cached_tokens``); they are billed at the cached
    price.
    """
    price = price_for(model, prices)
    if price is None:
        return None
    cached = max(0, min(cached_tokens, prompt_tokens))
    return (
        (prompt_tokens - cached) * price.input
        + cached * price.cached_input
        + completion_tokens * price.output
    ) / 1_000_000


def prices() -> dict[str, Price]:
    """The built-in table with this process's :func:`set_price` corrections applied."""
    return {**_BUILTIN, **_overrides}
