"""Block truncation for prompt caches: the first kept turn stays fixed until the budget is hit."""

from __future__ import annotations

import itertools

import pytest

from convmem import Conversation
from convmem.errors import UsageError
from convmem.strategies import BlockTruncation, Truncate
from convmem.testing import FakeChatServer


def _run(strategy: Truncate, calls: int, conv_id: str | None = None) -> list[list[int]]:
    """Sends ``calls`` messages; returns the kept turn ids of each plan."""
    server = FakeChatServer()
    for i in range(calls):
        server.reply(f"reply {i}")
    kwargs = {} if conv_id is None else {"conversation_id": conv_id}
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=strategy, **kwargs)
    kept = []
    for i in range(calls):
        conv.send(f"message {i}")
        plan = conv.last_plan
        assert plan is not None
        kept.append(list(plan.kept))
    return kept


def test_block_policy_keeps_the_prefix_until_the_budget_is_hit_then_drops_to_low_water() -> None:
    kept = _run(Truncate(max_turns=6, cache_policy=BlockTruncation(low_water=0.5)), 14)
    firsts = [k[0] if k else None for k in kept]
    # Calls 0-6: everything fits (0..6 past turns), nothing dropped.
    assert [len(k) for k in kept[:7]] == [0, 1, 2, 3, 4, 5, 6]
    # Call 7 has 7 past turns > 6: drop down to 3 (50% of 6), the newest ones.
    assert kept[7] == [4, 5, 6]
    # Then the first kept turn stays fixed while turns are added after it ...
    assert kept[8] == [4, 5, 6, 7]
    assert kept[9] == [4, 5, 6, 7, 8]
    assert kept[10] == [4, 5, 6, 7, 8, 9]
    # ... until the limit is hit again: another block drop.
    assert kept[11] == [8, 9, 10]
    assert firsts[12] == 8 and firsts[13] == 8


def test_block_policy_says_what_was_kept_stable() -> None:
    server = FakeChatServer()
    for i in range(6):
        server.reply(f"r{i}")
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=Truncate(max_turns=3))
    notes = []
    for i in range(6):
        conv.send(f"m{i}")
        assert conv.last_plan is not None
        notes.append([n for n in conv.last_plan.notes if n.kind.startswith("cache_")])
    # Call 4 is the first over max_turns=3: a block drop (65% of 3 -> 1 turn kept).
    assert [n.kind for n in notes[4]] == ["cache_block_dropped"]
    assert notes[4][0].data["kept_from"] == 3 and notes[4][0].data["dropped_turns"] == 3
    assert [n.kind for n in notes[5]] == ["cache_prefix_kept"]
    assert notes[5][0].data["kept_from"] == 3
    assert "kept fixed for the prompt cache" in notes[4][0]


def test_off_switch_is_a_sliding_window() -> None:
    kept = _run(Truncate(max_turns=6, cache_policy=None), 12)
    for i, k in enumerate(kept):
        n = min(i, 6)
        assert k == list(range(i - n, i))  # the newest 6 turns: one dropped per call


def test_block_policy_under_a_token_budget_stays_within_it_and_keeps_whole_turns() -> None:
    server = FakeChatServer()
    for i in range(30):
        server.reply(f"reply number {i} " + "word " * 20)
    strategy = Truncate(max_tokens=400)
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=strategy)
    firsts = []
    for i in range(30):
        conv.send(f"question {i} " + "text " * 20)
        plan = conv.last_plan
        assert plan is not None
        assert plan.corrected_tokens <= 400
        firsts.append(plan.kept[0] if plan.kept else None)
    changes = sum(1 for a, b in itertools.pairwise(firsts) if a != b and a is not None)
    drops = [i for i, (a, b) in enumerate(itertools.pairwise(firsts)) if a != b]
    # A sliding window would move the first kept turn on nearly every call once full;
    # the block policy moves it rarely.
    assert 1 <= changes <= len(firsts) // 3, (firsts, drops)


def test_state_is_per_conversation() -> None:
    strategy = Truncate(max_turns=4, cache_policy=BlockTruncation(low_water=0.5))
    a = _run(strategy, 8, "a")
    b = _run(strategy, 3, "b")
    assert b == [[], [0], [0, 1]]  # conversation a's anchor does not leak into b
    assert a[5] == [3, 4]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, True, "0.5"])
def test_bad_low_water_is_refused(bad: object) -> None:
    with pytest.raises(UsageError, match="low_water"):
        BlockTruncation(low_water=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="cache_policy"):
        Truncate(cache_policy="block")  # type: ignore[arg-type]
