"""Prompt caching on a real server: llama.cpp reuses a matching prompt prefix and says so.

llama.cpp (this version, through ``xllamacpp``) keeps the last prompt of a slot in its KV cache
and, with ``cache_prompt`` on (its default), processes only what follows the longest common
prefix; it reports the reused tokens as ``usage.prompt_tokens_details.cached_tokens`` (and as
``timings.cache_n``). The fixture's server has one slot, so consecutive calls of one
conversation meet the previous prompt in the cache. Block truncation keeps the prefix fixed;
a one-turn sliding window changes it on every call once full.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from convmem import Conversation
from convmem.strategies import DEFAULT_CACHE_POLICY, BlockTruncation, Truncate

pytestmark = pytest.mark.llama

CALLS = 4  # calls after the budget is hit; the first of them fills the cache


def _history(n: int) -> list[dict[str, str]]:
    """Short turns, enough that the budget is hit at once. Each is smaller than a turn the
    calls below add (a longer question, a one-token reply), so a sliding window has to drop at
    least one old turn on every call."""
    out = []
    for i in range(n):
        out.append({"role": "user", "content": f"Box {i} holds {i * 7} apples."})
        out.append({"role": "assistant", "content": "Noted."})
    return out


def _run(server: Any, policy: BlockTruncation | None) -> list[tuple[int, int, int, int]]:
    """(prompt tokens, cached tokens, timings.cache_n, shared prefix) for each call."""
    timings: list[dict[str, Any]] = []

    def hook(response: httpx2.Response) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            response.read()
            timings.append(json.loads(response.content).get("timings") or {})

    client = server.client(http_client=httpx2.Client(event_hooks={"response": [hook]}))
    conv = Conversation(
        client,
        model=server.model,
        context_window=server.context_window,
        system="Answer in one word.",
        strategy=Truncate(max_tokens=220, cache_policy=policy),
    )
    conv.extend(_history(16))
    out = []
    for i in range(CALLS):
        conv.send(f"Please tell me how many apples are in box number {i}?", max_tokens=1)
        plan = conv.last_plan
        assert plan is not None and plan.dropped  # truncation is at work on every call
        assert plan.reported_prompt_tokens is not None and plan.cached_tokens is not None
        out.append(
            (
                plan.reported_prompt_tokens,
                plan.cached_tokens,
                int(timings[-1].get("cache_n", -1)),
                plan.shared_prefix_tokens,
            )
        )
    return out


def test_block_truncation_gets_cache_hits_where_a_sliding_window_does_not(
    llama_server: Any,
) -> None:
    sliding = _run(llama_server, None)
    block = _run(llama_server, DEFAULT_CACHE_POLICY)
    # Shown with `pytest -s`: (prompt, cached, timings.cache_n, shared prefix) per call.
    print(f"\nsliding window: {sliding}\nblock truncation: {block}")
    # The server's two reports agree: usage.prompt_tokens_details and timings.cache_n.
    assert all(cached == cache_n for _, cached, cache_n, _ in sliding + block)
    # After the first call of each run (which meets the other run's prompt in the cache):
    block_cached = sum(c for _, c, _, _ in block[1:])
    sliding_cached = sum(c for _, c, _, _ in sliding[1:])
    block_prompt = sum(p for p, _, _, _ in block[1:])
    sliding_prompt = sum(p for p, _, _, _ in sliding[1:])
    # The sliding window changes the messages right after the system prompt on every call:
    # the server can reuse little more than the system prompt.
    assert sliding_cached < 0.25 * sliding_prompt, sliding
    # Block truncation keeps them: most of every prompt comes from the cache.
    assert block_cached > 0.6 * block_prompt, block
    assert block_cached > 3 * sliding_cached
    # convmem's own measure (the prefix shared with the previous request) tells the same story.
    assert sum(s for *_, s in block[1:]) > 3 * sum(s for *_, s in sliding[1:])
