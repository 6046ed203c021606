"""What an OpenAI-compatible server can tell about itself: its window, its tokens, its overflows.

A table of windows and a local tokenizer are estimates; the server is the truth. This module
asks it, once per server and model:

- **the window**: vLLM's ``/v1/models`` (``max_model_len``), llama.cpp's ``/v1/models``
  (``meta.n_ctx``) or ``/props`` (``n_ctx``), Ollama's ``/api/ps`` (``context_length`` of the
  loaded model) or ``/api/show`` (``num_ctx``, or the model's ``context_length``), and a
  ``context_length`` field on a ``/models`` entry (OpenRouter and others);
- **its tokenizer**: vLLM's and llama.cpp's ``/tokenize``, to measure how a model's tokens
  differ from tiktoken's on Latin and CJK text, and to count a whole prompt before it is sent;
- **its overflow errors**: :func:`parse_overflow` (from :mod:`convmem.overflow`, re-exported
  here) recognises a context-length HTTP 400 from the real error bodies of OpenAI, vLLM,
  llama.cpp, Ollama and DashScope, with whatever numbers they state.

Every probe goes through the caller's own ``openai`` client (its base URL, headers and HTTP
transport), without retries and with a short timeout; a server that cannot answer is simply
not asked again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .models import WindowInfo, WindowSource
from .overflow import Overflow, _int, overflow_from_exception, parse_overflow

PROBE_TIMEOUT = 5.0
"""Seconds each probe of a server may take before convmem gives up on it."""

OLLAMA_DEFAULT_NUM_CTX = 4096
"""What an Ollama model that is not loaded yet is assumed to run with.

Ollama sizes a model's context when it loads it (``num_ctx``, ``OLLAMA_CONTEXT_LENGTH``, or a
default that depends on the memory it finds), and silently drops the oldest messages of a
prompt that does not fit. Until ``/api/ps`` shows the real figure, convmem assumes 4,096
tokens (Ollama's documented default on small machines), capped by the model's own maximum.
"""

# Probe texts for measuring a server's tokenizer against tiktoken. Prose, code and Chinese,
# as a conversation has them; fixed so the figures are comparable between servers.
LATIN_PROBE = (
    "The meeting moved to Thursday at 3 pm, in room 204. Please bring the quarterly report "
    "and the revised budget: we will decide on the new supplier then.\n"
    "def total(items: list[float], tax: float = 0.2) -> float:\n"
    "    return round(sum(items) * (1 + tax), 2)\n"
)
CJK_PROBE = (
    "会议改到星期四下午三点，在二零四会议室。请带上季度报告和修改后的预算，"
    "我们届时决定新的供应商。小明住在杭州，他的猫叫米索，每天早上七点起床。"
)


@dataclass(frozen=True)
class TokenizerProfile:
    """How a server's tokenizer counts, measured against tiktoken on :data:`LATIN_PROBE` and
    :data:`CJK_PROBE`.

    Attributes:
        latin_ratio: Server tokens per tiktoken token on Latin text and code.
        cjk_per_char: Server tokens per CJK character.
    """

    latin_ratio: float
    cjk_per_char: float


@dataclass
class ServerInfo:
    """What one server said about one model (cached per base URL and model).

    Attributes:
        kind: ``"vllm"``, ``"llama.cpp"``, ``"ollama"`` or ``"openai-compatible"``.
        window: The window it reported, if any.
        tokenizer: Its tokenizer measured against tiktoken, when it has a tokenize endpoint.
        root: The server's root URL (the base URL without ``/v1``).
    """

    kind: str = "openai-compatible"
    window: WindowInfo | None = None
    tokenizer: TokenizerProfile | None = None
    root: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def can_tokenize(self) -> bool:
        return self.kind in ("vllm", "llama.cpp")


# -- asking the server ----------------------------------------------------------------------

_cache_lock = threading.Lock()
_servers: dict[tuple[str, str], ServerInfo] = {}


def _root(client: Any) -> str:
    base = str(getattr(client, "base_url", "") or "").rstrip("/")
    for suffix in ("/v1", "/compatible-mode/v1", "/api/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _base(client: Any) -> str:
    return str(getattr(client, "base_url", "") or "").rstrip("/")


def cache_key(client: Any, model: str) -> tuple[str, str]:
    """The key server facts are cached under: the client's base URL and the model."""
    return (_base(client), model)


def cached_server(client: Any, model: str) -> ServerInfo | None:
    """What was already learnt about ``model`` on ``client``'s server, if it was asked."""
    with _cache_lock:
        return _servers.get(cache_key(client, model))


def _remember(client: Any, model: str, info: ServerInfo) -> ServerInfo:
    with _cache_lock:
        return _servers.setdefault(cache_key(client, model), info)


def forget_servers() -> None:
    """Forgets every cached server fact (for tests, or after a server was reconfigured)."""
    with _cache_lock:
        _servers.clear()


def _probe_client(client: Any) -> Any:
    with_options = getattr(client, "with_options", None)
    if callable(with_options):
        return with_options(max_retries=0, timeout=PROBE_TIMEOUT)
    return client


def _same_model(requested: str, served: str) -> bool:
    a, b = requested.strip().lower(), served.strip().lower()
    return a == b or a.removesuffix(":latest") == b.removesuffix(":latest")


def _pick_entry(entries: Sequence[Any], model: str) -> Mapping[str, Any] | None:
    models = [e for e in entries if isinstance(e, Mapping)]
    for entry in models:
        names = [entry.get("id"), entry.get("name"), entry.get("model"), *entry.get("aliases", [])]
        if any(isinstance(n, str) and _same_model(model, n) for n in names):
            return entry
    # llama.cpp serves one model under any name; a one-model server is asked about that one.
    if len(models) == 1 and str(models[0].get("owned_by", "")) == "llamacpp":
        return models[0]
    return None


def _from_models(info: ServerInfo, body: Any, model: str) -> None:
    """Reads the window and the server's kind from a ``/v1/models`` body."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        return
    owners = {str(e.get("owned_by", "")) for e in data if isinstance(e, Mapping)}
    if "vllm" in owners:
        info.kind = "vllm"
    elif "llamacpp" in owners:
        info.kind = "llama.cpp"
    elif owners & {"library", "ollama"}:
        info.kind = "ollama"
    entry = _pick_entry(data, model)
    if entry is None:
        return
    meta = entry.get("meta")
    candidates = (
        ("vLLM /v1/models max_model_len", _int(entry.get("max_model_len"))),
        (
            "llama.cpp /v1/models meta.n_ctx",
            _int(meta.get("n_ctx")) if isinstance(meta, Mapping) else None,
        ),
        ("/v1/models context_length", _int(entry.get("context_length"))),
        ("/v1/models context_window", _int(entry.get("context_window"))),
    )
    for detail, tokens in candidates:
        if tokens is not None:
            info.window = WindowInfo(tokens, "server", detail)
            return


def _from_props(info: ServerInfo, body: Any) -> None:
    if not isinstance(body, Mapping):
        return
    settings = body.get("default_generation_settings")
    n_ctx = _int(settings.get("n_ctx")) if isinstance(settings, Mapping) else None
    n_ctx = n_ctx or _int(body.get("n_ctx"))
    if n_ctx is not None:
        info.kind = "llama.cpp"
        info.window = WindowInfo(n_ctx, "server", "llama.cpp /props n_ctx")


def _from_ollama_ps(info: ServerInfo, body: Any, model: str) -> None:
    models = body.get("models") if isinstance(body, Mapping) else None
    if not isinstance(models, list):
        return
    entry = _pick_entry(models, model)
    tokens = _int(entry.get("context_length")) if entry is not None else None
    if tokens is not None:
        info.window = WindowInfo(tokens, "server", "Ollama /api/ps context_length (loaded)")


def _from_ollama_show(info: ServerInfo, body: Any) -> None:
    if not isinstance(body, Mapping):
        return
    params = body.get("parameters")
    if isinstance(params, str):
        match = re.search(r"^\s*num_ctx\s+(\d+)", params, re.MULTILINE)
        if match:
            info.window = WindowInfo(
                int(match.group(1)), "server", "Ollama /api/show parameters num_ctx"
            )
            return
    model_info = body.get("model_info")
    trained = None
    if isinstance(model_info, Mapping):
        for key, value in model_info.items():
            if str(key).endswith(".context_length"):
                trained = _int(value)
                break
    if trained is not None:
        tokens = min(trained, OLLAMA_DEFAULT_NUM_CTX)
        info.window = WindowInfo(
            tokens,
            "server",
            f"Ollama /api/show: model maximum {trained}, not loaded yet, so Ollama's default "
            f"num_ctx {OLLAMA_DEFAULT_NUM_CTX} is assumed",
        )


def _tokenize_request(info: ServerInfo, model: str, text: str) -> tuple[str, dict[str, Any]]:
    if info.kind == "vllm":
        return "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False}
    return "/tokenize", {"content": text, "add_special": False}


def _token_count(body: Any) -> int | None:
    if not isinstance(body, Mapping):
        return None
    count = _int(body.get("count"))
    if count is not None:
        return count
    tokens = body.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def _profile(latin: int | None, cjk: int | None) -> TokenizerProfile | None:
    if not latin or not cjk:
        return None
    from .tokens.families import cjk_chars, tiktoken_latin_count

    return TokenizerProfile(
        latin_ratio=latin / max(1, tiktoken_latin_count(LATIN_PROBE)),
        cjk_per_char=cjk / max(1, cjk_chars(CJK_PROBE)),
    )


def _api_error() -> tuple[type[BaseException], ...]:
    import openai

    return (openai.APIError, ValueError, TypeError)


def discover(client: Any, model: str) -> ServerInfo:
    """Asks ``client``'s server about ``model``: its window and its tokenizer. Cached.

    Probes ``/v1/models``; then llama.cpp's ``/props`` or Ollama's ``/api/ps`` and
    ``/api/show`` when the server looks like one of them; then, where there is a tokenize
    endpoint, counts :data:`LATIN_PROBE` and :data:`CJK_PROBE`. Failed probes are skipped.

    Args:
        client: An ``openai.OpenAI`` client (or anything with ``get``/``post`` like it).
        model: The model name as sent in requests.

    Returns:
        What the server said (possibly nothing: ``window`` None).
    """
    cached = cached_server(client, model)
    if cached is not None:
        return cached
    info = ServerInfo(root=_root(client))
    probe = _probe_client(client)
    errors = _api_error()

    def get(url: str) -> Any:
        try:
            return probe.get(url, cast_to=object)
        except errors:
            return None

    def post(url: str, body: dict[str, Any]) -> Any:
        try:
            return probe.post(url, body=body, cast_to=object)
        except errors:
            return None

    _from_models(info, get(_base(client) + "/models"), model)
    if info.window is None and info.kind == "llama.cpp":
        _from_props(info, get(info.root + "/props"))
    if info.kind == "ollama":
        _from_ollama_ps(info, get(info.root + "/api/ps"), model)
        if info.window is None:
            _from_ollama_show(info, post(info.root + "/api/show", {"model": model}))
    if info.can_tokenize:
        counts = []
        for text in (LATIN_PROBE, CJK_PROBE):
            path, body = _tokenize_request(info, model, text)
            counts.append(_token_count(post(info.root + path, body)))
        info.tokenizer = _profile(*counts)
    return _remember(client, model, info)


async def adiscover(client: Any, model: str) -> ServerInfo:
    """:func:`discover` over an ``openai.AsyncOpenAI`` client."""
    cached = cached_server(client, model)
    if cached is not None:
        return cached
    info = ServerInfo(root=_root(client))
    probe = _probe_client(client)
    errors = _api_error()

    async def get(url: str) -> Any:
        try:
            return await probe.get(url, cast_to=object)
        except errors:
            return None

    async def post(url: str, body: dict[str, Any]) -> Any:
        try:
            return await probe.post(url, body=body, cast_to=object)
        except errors:
            return None

    _from_models(info, await get(_base(client) + "/models"), model)
    if info.window is None and info.kind == "llama.cpp":
        _from_props(info, await get(info.root + "/props"))
    if info.kind == "ollama":
        _from_ollama_ps(info, await get(info.root + "/api/ps"), model)
        if info.window is None:
            _from_ollama_show(info, await post(info.root + "/api/show", {"model": model}))
    if info.can_tokenize:
        counts = []
        for text in (LATIN_PROBE, CJK_PROBE):
            path, body = _tokenize_request(info, model, text)
            counts.append(_token_count(await post(info.root + path, body)))
        info.tokenizer = _profile(*counts)
    return _remember(client, model, info)


def _prompt_request(
    info: ServerInfo, model: str, messages: Sequence[Mapping[str, Any]]
) -> tuple[str, dict[str, Any]]:
    if info.kind == "vllm":
        return "/tokenize", {"model": model, "messages": list(messages)}
    return "/apply-template", {"messages": list(messages)}


def count_prompt(client: Any, model: str, messages: Sequence[Mapping[str, Any]]) -> int | None:
    """The server's own count of a prompt, chat template included, before sending it.

    vLLM counts ``messages`` in one ``/tokenize`` call; llama.cpp renders them with
    ``/apply-template`` and counts the result with ``/tokenize``. Other servers: None.

    Args:
        client: The ``openai`` client.
        model: The model.
        messages: The messages as they would be sent.

    Returns:
        The prompt's tokens on the server, or None when it cannot tell.
    """
    info = cached_server(client, model)
    if info is None or not info.can_tokenize:
        return None
    probe = _probe_client(client)
    errors = _api_error()
    path, body = _prompt_request(info, model, messages)
    try:
        reply = probe.post(info.root + path, body=body, cast_to=object)
        if info.kind == "vllm":
            return _token_count(reply)
        prompt = reply.get("prompt") if isinstance(reply, Mapping) else None
        if not isinstance(prompt, str):
            return None
        counted = probe.post(
            info.root + "/tokenize",
            body={"content": prompt, "add_special": True, "parse_special": True},
            cast_to=object,
        )
        return _token_count(counted)
    except errors:
        return None


async def acount_prompt(
    client: Any, model: str, messages: Sequence[Mapping[str, Any]]
) -> int | None:
    """:func:`count_prompt` over an ``openai.AsyncOpenAI`` client."""
    info = cached_server(client, model)
    if info is None or not info.can_tokenize:
        return None
    probe = _probe_client(client)
    errors = _api_error()
    path, body = _prompt_request(info, model, messages)
    try:
        reply = await probe.post(info.root + path, body=body, cast_to=object)
        if info.kind == "vllm":
            return _token_count(reply)
        prompt = reply.get("prompt") if isinstance(reply, Mapping) else None
        if not isinstance(prompt, str):
            return None
        counted = await probe.post(
            info.root + "/tokenize",
            body={"content": prompt, "add_special": True, "parse_special": True},
            cast_to=object,
        )
        return _token_count(counted)
    except errors:
        return None


__all__ = [
    "CJK_PROBE",
    "LATIN_PROBE",
    "OLLAMA_DEFAULT_NUM_CTX",
    "PROBE_TIMEOUT",
    "Overflow",
    "ServerInfo",
    "TokenizerProfile",
    "WindowInfo",
    "WindowSource",
    "acount_prompt",
    "adiscover",
    "cached_server",
    "count_prompt",
    "discover",
    "forget_servers",
    "overflow_from_exception",
    "parse_overflow",
]
