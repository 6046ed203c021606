"""The price table and what a call costs."""

from __future__ import annotations

import math

import pytest

from convmem import pricing
from convmem.errors import UsageError
from convmem.pricing import Price, cost, price_for, set_price


def test_cost_uses_the_cached_price_for_cached_tokens() -> None:
    # gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per million.
    assert cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(0.075)
    assert cost("gpt-4o-mini", 2_000, 500, cached_tokens=1_000) == pytest.approx(
        (1_000 * 0.15 + 1_000 * 0.075 + 500 * 0.60) / 1e6
    )
    # More cached than prompt tokens (a confused server) is capped, never negative.
    assert cost("gpt-4o-mini", 10, 0, cached_tokens=50) == pytest.approx(10 * 0.075 / 1e6)


def test_names_match_like_the_window_table_but_never_by_family() -> None:
    assert price_for("openai/gpt-4o-2024-08-06") == price_for("gpt-4o")
    assert price_for("gpt-4o-mini") != price_for("gpt-4o")
    assert price_for("gpt-4o-mini-realtime-preview") is None
    assert price_for("my-finetune") is None
    assert cost("my-finetune", 100, 100) is None


def test_caller_prices_win_and_set_price_corrects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_overrides", {})
    assert cost("local-model", 100, 100) is None
    set_price("local-model", 0, 0, 0)
    assert cost("local-model", 100, 100) == 0.0
    mine = {"gpt-4o": Price(1, 1, 1)}
    assert cost("gpt-4o", 1_000_000, 0, prices=mine) == pytest.approx(1.0)
    assert "local-model" in pricing.prices()


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, True, "1"])
def test_bad_prices_are_refused(bad: object) -> None:
    with pytest.raises(UsageError, match=r"Price\.input"):
        Price(bad, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="model name"):
        set_price("", 0, 0, 0)


def test_conversation_cost_and_cached_prefix_on_every_call() -> None:
    from convmem import Conversation
    from convmem.strategies import Pipeline, RollingSummary, Truncate
    from convmem.testing import FakeChatServer

    server = FakeChatServer()
    server.reply("one", usage={"prompt_tokens": 1000, "completion_tokens": 10})
    server.reply(
        "two",
        usage={
            "prompt_tokens": 2000,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 1000},
        },
    )
    conv = Conversation(server.client(), model="gpt-4o-mini", system="Be brief.")
    conv.send("hello")
    first = conv.last_plan
    assert first is not None and first.cost == pytest.approx(cost("gpt-4o-mini", 1000, 10))
    assert first.shared_prefix_messages == 0 and first.cached_tokens == 0
    conv.send("again")
    second = conv.last_plan
    assert second is not None
    assert second.cached_tokens == 1000
    assert second.cost == pytest.approx(cost("gpt-4o-mini", 2000, 20, cached_tokens=1000))
    # The first request was [system, user]; the second starts with the same two.
    assert second.shared_prefix_messages == 2
    assert second.shared_prefix_tokens == sum(
        conv.counter.count_message(m) for m in second.messages[:2]
    )
    assert "same as the previous request" in str(second)
    assert conv.usage.cost == pytest.approx(first.cost + second.cost)
    assert conv.usage.to_dict()["cost"] == conv.usage.cost
    assert conv.usage.cached_tokens == 1000

    # A summariser is priced apart; a model with no price makes the total unknown.
    server = FakeChatServer().reply("- facts", usage={"prompt_tokens": 500, "completion_tokens": 5})
    server.reply("ok")
    conv = Conversation(
        server.client(),
        model="my-model",
        context_window=400,
        strategy=Pipeline(RollingSummary(model="gpt-4o-mini", trigger=0.1), Truncate()),
    )
    for i in range(4):
        conv.extend(
            [{"role": "user", "content": f"{i} " * 40}, {"role": "assistant", "content": "y"}]
        )
    conv.send("next")
    assert conv.usage.summary_calls == 1
    assert conv.usage.summary_cost == pytest.approx(cost("gpt-4o-mini", 500, 5))
    assert conv.usage.cost is None  # my-model has no price
