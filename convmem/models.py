"""Context windows of known models, and how a model name is matched to one.

The table holds the providers' published context windows (total tokens, prompt and reply
together). Only figures the providers publish are in it; a model that is not in it, and
matches no family in it, has no window here, and :func:`resolve_context_window` raises
:class:`~convmem.errors.UnknownModelError` rather than guess one: a guessed window that is
too big turns into HTTP 400s, one that is too small throws history away for nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from .errors import UnknownModelError, UsageError

WindowSource = Literal["table", "server", "caller", "learnt"]
"""Where a context window came from."""


@dataclass(frozen=True)
class WindowInfo:
    """A context window and where it came from.

    Attributes:
        tokens: The window, in tokens (prompt and reply together).
        source: ``"table"`` (:data:`convmem.models.CONTEXT_WINDOWS`), ``"server"`` (asked
            from the server), ``"caller"`` (``context_window=``) or ``"learnt"`` (from an
            overflow error).
        detail: Where exactly, e.g. ``"vLLM /v1/models max_model_len"``.
    """

    tokens: int
    source: WindowSource
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.tokens} ({self.source}{': ' + self.detail if self.detail else ''})"


_OPENAI: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-5-chat": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-4.5-preview": 128_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-turbo-preview": 128_000,
    "gpt-4-0125-preview": 128_000,
    "gpt-4-1106-preview": 128_000,
    "gpt-4-vision-preview": 128_000,
    "gpt-4": 8_192,
    "gpt-4-0314": 8_192,
    "gpt-4-0613": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-16k": 16_385,
    # The first gpt-3.5-turbo snapshots had 4k; exact keys keep them from matching the family.
    "gpt-3.5-turbo-0301": 4_096,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o1-pro": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o3-pro": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gpt-oss-20b": 131_072,
    "gpt-oss-120b": 131_072,
}

_QWEN: dict[str, int] = {
    # DashScope (Alibaba Cloud Model Studio) commercial models, as Model Studio lists them
    # (context window; DashScope also caps the input a little below it, and says so in its
    # 400: "Range of input length should be [1, N]", which convmem learns from).
    "qwen3-max": 262_144,
    "qwen-max": 32_768,
    "qwen-plus": 131_072,
    "qwen-flash": 1_000_000,
    "qwen-turbo": 1_000_000,
    "qwen-long": 10_000_000,
    "qwen3-coder-plus": 1_000_000,
    "qwen3-coder-flash": 1_000_000,
    "qwen-coder-plus": 131_072,
    "qwen-vl-max": 131_072,
    "qwen-vl-plus": 131_072,
    "qwen3-vl-plus": 262_144,
    "qwen3-vl-flash": 262_144,
    "qwq-plus": 131_072,
    "qvq-max": 131_072,
    # Qwen3 open-weight models: 32,768 tokens natively (131,072 only with YaRN rope scaling,
    # which a server must be started with; vLLM's tutorials run --max-model-len 32768). The
    # family key catches every size and its -instruct/-thinking variants.
    "qwen3": 32_768,
    "qwen3-vl": 131_072,
    "qwen3-next-80b-a3b": 131_072,
    # The 2507 updates are 262,144 natively.
    "qwen3-4b-instruct-2507": 262_144,
    "qwen3-4b-thinking-2507": 262_144,
    "qwen3-30b-a3b-instruct-2507": 262_144,
    "qwen3-30b-a3b-thinking-2507": 262_144,
    "qwen3-235b-a22b-instruct-2507": 262_144,
    "qwen3-235b-a22b-thinking-2507": 262_144,
    "qwen3-coder-30b-a3b-instruct": 262_144,
    "qwen3-coder-480b-a35b-instruct": 262_144,
    # Qwen2.5 instruct models (matched by prefix: "qwen2.5-72b-instruct").
    "qwen2.5-0.5b": 32_768,
    "qwen2.5-1.5b": 32_768,
    "qwen2.5-3b": 32_768,
    "qwen2.5-7b": 131_072,
    "qwen2.5-14b": 131_072,
    "qwen2.5-32b": 131_072,
    "qwen2.5-72b": 131_072,
    "qwen2.5-coder-7b": 131_072,
    "qwen2.5-coder-14b": 131_072,
    "qwen2.5-coder-32b": 131_072,
    "qwq-32b": 131_072,
}

_OPEN: dict[str, int] = {
    # Meta Llama. Llama 3 (3.0) has 8k; 3.1 and later 128k.
    "llama-2": 4_096,
    "llama-3": 8_192,
    "llama-3.1": 131_072,
    "llama-3.2": 131_072,
    "llama-3.3": 131_072,
    "llama-4-scout": 10_000_000,
    "llama-4-maverick": 1_000_000,
    # Mistral AI.
    "mistral-7b": 32_768,
    "mistral-large": 131_072,
    "mistral-nemo": 131_072,
    "mixtral-8x7b": 32_768,
    "mixtral-8x22b": 65_536,
    # Google Gemma (open) and Gemini (OpenAI-compatible endpoint).
    "gemma-2": 8_192,
    "gemma-3": 131_072,
    "gemma-3-270m": 32_768,
    "gemma-3-1b": 32_768,
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.5-pro": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    # DeepSeek API: both models are published as "128K"; the plain reading is taken.
    "deepseek-chat": 128_000,
    "deepseek-reasoner": 128_000,
    # Microsoft Phi.
    "phi-3-mini-4k": 4_096,
    "phi-3-mini-128k": 131_072,
    "phi-3-medium-4k": 4_096,
    "phi-3-medium-128k": 131_072,
    "phi-3.5-mini": 131_072,
    "phi-4": 16_384,
    "phi-4-mini": 131_072,
    # Anthropic (OpenAI-compatible endpoint).
    "claude-3": 200_000,
    "claude-3-5": 200_000,
    "claude-3-7": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-opus-4": 200_000,
    # Hugging Face SmolLM2 (135M, 360M, 1.7B): trained for 8,192 tokens, but served with
    # 2,048 per slot by convmem's local llama.cpp server (convmem.localserver), the one
    # place it is used here. Serving it wider? Pass context_window= or "server".
    "smollm2": 2_048,
}

CONTEXT_WINDOWS: Mapping[str, int] = MappingProxyType({**_OPENAI, **_QWEN, **_OPEN})
"""Known context windows in tokens, keyed by lower-case model or family name.

The values are the providers' published figures. A key also stands for its family: a name
that starts with a key followed by ``-`` or ``_`` (``llama-3.1-8b-instruct``) gets that
key's window, the longest such key winning. Read-only; pass ``context_window=`` for a
model that is missing.
"""

# "gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "gpt-4-0613", "qwen3-235b-a22b-2507".
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
# Ollama and a few hosts spell families without the hyphen: "llama3.1", "gemma2", "phi4".
_UNHYPHENATED = re.compile(r"^(llama|gemma|phi)(\d)")
_BOUNDARY = frozenset("-_")


def _normalised(model: str) -> str:
    name = model.strip().lower()
    if name.startswith("ft:"):
        # Fine-tuned OpenAI models: "ft:gpt-4o-mini-2024-07-18:org::id" has the base's window.
        name = name.split(":")[1]
    # Provider and hub prefixes ("openai/", "qwen/", "openrouter/meta-llama/", "models/"),
    # and model files served by path.
    name = name.rsplit("/", 1)[-1]
    return name.removesuffix(".gguf")


def _candidates(model: str) -> Iterator[str]:
    """Names to try for ``model``, most literal first."""
    name = _normalised(model)
    stems = [name]
    if ":" in name:
        # Ollama tags: "llama3.1:8b" -> "llama3.1-8b", then "llama3.1".
        base, tag = name.split(":", 1)
        stems = [f"{base}-{tag}", base] if tag and tag != "latest" else [base]
    seen: set[str] = set()
    for stem in stems:
        for spelled in (stem, _UNHYPHENATED.sub(r"\1-\2", stem.removeprefix("meta-"))):
            current = spelled
            while True:
                if current not in seen:
                    seen.add(current)
                    yield current
                stripped = _DATED.sub("", current.removesuffix("-latest"))
                if stripped == current:
                    break
                current = stripped


def _family_match(name: str) -> str | None:
    best: str | None = None
    for key in CONTEXT_WINDOWS:
        if (
            len(name) > len(key)
            and name.startswith(key)
            and name[len(key)] in _BOUNDARY
            and (best is None or len(key) > len(best))
        ):
            best = key
    return best


def context_window_for(model: str) -> int | None:
    """Looks up a model's context window.

    Tries, in order: the exact name; the normalised name (lower case, provider prefix such
    as ``openai/`` or ``meta-llama/`` removed, Ollama tag such as ``llama3.1:8b`` unfolded,
    ``-latest`` and dated suffixes such as ``-2024-08-06`` or ``-0613`` removed); then the
    longest family key the name starts with (``qwen2.5-72b-instruct`` -> ``qwen2.5-72b``).

    Args:
        model: The model name as given to the API.

    Returns:
        The window in tokens, or ``None`` when the model is unknown (convmem does not guess).
    """
    if model in CONTEXT_WINDOWS:
        return CONTEXT_WINDOWS[model]
    candidates = list(_candidates(model))
    for name in candidates:
        if name in CONTEXT_WINDOWS:
            return CONTEXT_WINDOWS[name]
    best: str | None = None
    for name in candidates:
        key = _family_match(name)
        if key is not None and (best is None or len(key) > len(best)):
            best = key
    return None if best is None else CONTEXT_WINDOWS[best]


def resolve_context_window(model: str, override: int | None = None) -> int:
    """The context window to budget against.

    Args:
        model: The model name.
        override: A window given by the caller; it wins over the table.

    Returns:
        The window in tokens.

    Raises:
        UsageError: ``override`` is not a positive integer.
        UnknownModelError: No override, and the model is not in :data:`CONTEXT_WINDOWS`.
    """
    if override is not None:
        # bool is an int subclass; True is not a window.
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            raise UsageError(f"context_window must be a positive int, got {override!r}")
        return override
    window = context_window_for(model)
    if window is None:
        raise UnknownModelError(model)
    return window


def resolve_window(model: str, override: int | None = None) -> WindowInfo | None:
    """The window from the caller or the table, with its source; None when neither knows.

    Args:
        model: The model name.
        override: A window given by the caller; it wins over the table.

    Returns:
        ``WindowInfo(override, "caller")``, ``WindowInfo(table value, "table", key)`` or None
        (the server may still tell: see :func:`convmem.providers.discover`).

    Raises:
        UsageError: ``override`` is not a positive integer.
    """
    if override is not None:
        return WindowInfo(resolve_context_window(model, override), "caller", "context_window=")
    window = context_window_for(model)
    if window is None:
        return None
    return WindowInfo(window, "table", "convmem.models.CONTEXT_WINDOWS")


__all__ = [
    "CONTEXT_WINDOWS",
    "WindowInfo",
    "WindowSource",
    "context_window_for",
    "resolve_context_window",
    "resolve_window",
]
