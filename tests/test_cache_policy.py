"""Block truncation for prompt caches: the first kept turn stays fixed until the budget is hit."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest

from convmem import Conversation
from convmem.errors import UsageError
from convmem.plan import ContextPlan
from convmem.strategies import (
    DEFAULT_CACHE_POLICY,
    BlockTruncation,
    Pipeline,
    RollingSummary,
    Selection,
    Truncate,
)
from convmem.strategies.recent import AUTO_LOW_WATER_RANGE, ESTIMATE_TURNS
from convmem.strategy import ContextRequest
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
    # Call 4 is the first over max_turns=3: a block drop (to the floor, 65% of 3 -> 1 turn).
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


# -- inside a Pipeline: summary and recall coexist ----------------------------------------------


def _summary_server(n: int = 400) -> FakeChatServer:
    """Chat calls get 'ok ...'; summariser calls (recognised by their prompt) get a fact list
    naming the turns they cover, so every new summary has a text of its own."""
    server = FakeChatServer()

    def reply(body: dict[str, Any]) -> Any:
        if "keep the memory of a conversation" in body["messages"][0]["content"]:
            turns = body["messages"][1]["content"].count("<convmem-turn ")
            return {
                "content": f"- {turns} more turns: the user asked things",
                "usage": {"prompt_tokens": 300, "completion_tokens": 12, "total_tokens": 312},
            }
        return "ok " * 10

    server.respond_with(reply, times=n)
    return server


def _summary_pipeline_run(
    policy: BlockTruncation | None, calls: int = 40
) -> tuple[FakeChatServer, list[ContextPlan]]:
    server = _summary_server()
    # The truncation cap (500 tokens) is hit long before the summary's trigger (70% of 1000).
    strategy = Pipeline(
        RollingSummary(max_summary_tokens=128), Truncate(max_tokens=500, cache_policy=policy)
    )
    conv = Conversation(
        server.client(), model="m", system="sys", context_window=1000, reply_reserve=100,
        strategy=strategy,
    )  # fmt: skip
    plans = []
    for i in range(calls):
        conv.send(f"question {i} " + "text " * 15)
        assert conv.last_plan is not None
        plans.append(conv.last_plan)
    return server, plans


def _summariser_calls(server: FakeChatServer) -> list[int]:
    """Indexes (among chat calls) of the calls that came right after a summariser call."""
    out, chat = [], 0
    for body in server.requests:
        if "keep the memory of a conversation" in body["messages"][0]["content"]:
            out.append(chat)
        else:
            chat += 1
    return out


def test_block_policy_in_a_pipeline_keeps_summary_and_recent_turns_fixed_between_drops() -> None:
    server, plans = _summary_pipeline_run(DEFAULT_CACHE_POLICY)
    # The budget is hit: the summary takes the block of turns the recent ones leave behind.
    drops = [i for i, p in enumerate(plans) if p.notes_of("cache_block_summarised")]
    kept = [i for i, p in enumerate(plans) if p.notes_of("cache_prefix_kept")]
    assert drops and len(kept) > 2 * len(drops), (drops, kept)
    for i, plan in enumerate(plans):
        assert plan.corrected_tokens <= 500
        assert plan.not_summarised == []  # every turn left out is covered by the summary
        if i in kept:
            first = plan.notes_of("cache_prefix_kept")[0].data["kept_from"]
            assert plan.kept[0] == first
            # Nothing changed but the new turn: the whole previous request is the prefix.
            assert plan.new_summary is None and not plan.summary_calls
            assert plan.shared_prefix_messages == len(plans[i - 1].messages)
    # The summary is extended only when a block is dropped (once per drop, never in between).
    assert _summariser_calls(server) == drops


def test_block_policy_in_a_pipeline_shares_more_prefix_and_summarises_less_often() -> None:
    block_server, block = _summary_pipeline_run(DEFAULT_CACHE_POLICY)
    sliding_server, sliding = _summary_pipeline_run(None)
    start = next(i for i, p in enumerate(sliding) if p.dropped or p.summarised)

    def share(plans: list[ContextPlan]) -> float:
        shared = sum(p.shared_prefix_tokens for p in plans[start:])
        return shared / sum(p.estimated_tokens for p in plans[start:])

    # A summary already moves in blocks (it plans for its largest size); the block policy
    # makes the blocks larger: fewer summaries, more of each request shared with the last.
    assert share(block) > share(sliding) + 0.05, (share(block), share(sliding))
    assert len(_summariser_calls(block_server)) < len(_summariser_calls(sliding_server))


def test_alone_the_block_policy_shares_most_of_the_prompt_a_sliding_window_almost_none() -> None:
    def share(policy: BlockTruncation | None) -> float:
        server = FakeChatServer()
        server.respond_with(lambda body: "ok " * 10, times=40)
        conv = Conversation(
            server.client(), model="gpt-4o-mini", system="sys",
            strategy=Truncate(max_tokens=400, cache_policy=policy),
        )  # fmt: skip
        plans = []
        for i in range(40):
            conv.send(f"question {i} " + "text " * 15)
            assert conv.last_plan is not None
            plans.append(conv.last_plan)
        after = plans[20:]  # the budget is hit from about call 10 on
        assert all(p.dropped for p in after)
        return sum(p.shared_prefix_tokens for p in after) / sum(p.estimated_tokens for p in after)

    block, sliding = share(DEFAULT_CACHE_POLICY), share(None)
    assert block > 0.7 and sliding < 0.05, (block, sliding)


def test_summary_message_is_byte_identical_until_a_new_summary_is_made() -> None:
    server = _summary_server()
    conv = Conversation(
        server.client(), model="m", system="sys", context_window=1000, reply_reserve=100,
        strategy=RollingSummary(max_summary_tokens=128),
    )  # fmt: skip
    sent: list[tuple[str, list[dict[str, Any]], ContextPlan]] = []
    for i in range(30):
        conv.send(f"question {i} " + "text " * 15)
        assert conv.last_plan is not None
        request = server.requests[-1]  # the chat call (a summariser call comes before it)
        summary = conv.last_plan.section("summary")
        key = json.dumps(summary.messages) if summary else ""
        sent.append((key, request["messages"], conv.last_plan))
    with_summary = [i for i, (key, _, _) in enumerate(sent) if key]
    assert with_summary, "the summary never fired"
    repeats = 0
    for i in with_summary[1:]:
        key, messages, plan = sent[i]
        if plan.new_summary is None:
            repeats += 1
            # Same summary: the same bytes, at the same place, in the request sent.
            assert key == sent[i - 1][0]
            assert json.dumps(messages[1]) == json.dumps(sent[i - 1][1][1])
            # ... so the prefix through the summary (and the recent turns) is shared.
            assert plan.shared_prefix_messages >= 2
            assert plan.shared_prefix_tokens >= plan.tokens_by_section()["summary"]
        else:
            assert key != sent[i - 1][0]  # a new summary is a new text
    assert repeats >= 3


# -- the order that breaks the least ------------------------------------------------------------


def _recall_two_oldest(request: ContextRequest) -> Selection:
    turns = request.turns
    return Selection(recent=turns[2:], recalled=turns[:2])


def test_recalled_section_goes_after_the_recent_turns_right_before_the_new_message() -> None:
    server = FakeChatServer()
    for i in range(5):
        server.reply(f"reply {i}")
    conv = Conversation(
        server.client(), model="gpt-4o-mini", system="sys", strategy=_recall_two_oldest
    )
    for i in range(5):
        conv.send(f"message {i}")
    sent = server.last_request["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["system", "user", "assistant", "user", "assistant", "system", "user"]
    assert sent[1]["content"] == "message 2" and sent[-1]["content"] == "message 4"
    assert sent[-2]["content"].startswith("Earlier in this conversation")
    assert "message 0" in sent[-2]["content"]
    plan = conv.last_plan
    assert plan is not None
    assert [s.name for s in plan.sections] == ["system", "recent", "recalled"]
    assert plan.messages == sent


def test_recalled_section_stays_before_the_user_message_through_tool_rounds() -> None:
    def lookup(q: str) -> str:
        """Looks a thing up."""
        return f"{q} is 42"

    server = FakeChatServer()
    server.reply("first").reply("second")
    server.reply(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}])
    server.reply("x is 42")
    conv = Conversation(
        server.client(), model="gpt-4o-mini", system="sys", strategy=_recall_two_oldest
    )
    conv.send("one")
    conv.send("two")
    conv.send("what is x?", tools=[lookup])
    first, second = server.requests[-2]["messages"], server.requests[-1]["messages"]
    assert [m["role"] for m in second[-4:]] == ["system", "user", "assistant", "tool"]
    assert second[-3]["content"] == "what is x?"
    # The tool round only appends: the first request of the turn is a prefix of the second.
    assert second[: len(first)] == first
    plan = conv.last_plan
    assert plan is not None and plan.shared_prefix_messages == len(first)


class _RecallsNothing:
    """A recall component that reserves half the room and finds nothing to send."""

    role = "recall"

    def reserve(self, comp: Any) -> int:
        return int(comp.remaining // 2)

    def contribute(self, comp: Any) -> None:
        pass


def test_room_recall_leaves_still_goes_to_older_turns_under_the_block_policy() -> None:
    def kept(policy: BlockTruncation | None) -> list[list[int]]:
        server = FakeChatServer()
        server.respond_with(lambda body: "ok " * 10, times=25)
        conv = Conversation(
            server.client(), model="gpt-4o-mini", system="sys",
            strategy=Pipeline(_RecallsNothing(), Truncate(max_tokens=400, cache_policy=policy)),
        )  # fmt: skip
        out = []
        for i in range(25):
            conv.send(f"question {i} " + "text " * 15)
            assert conv.last_plan is not None
            out.append(conv.last_plan.kept)
        return out

    # Evidence first: what recall does not use is filled as a sliding window fills it.
    assert kept(DEFAULT_CACHE_POLICY) == kept(None)


def test_block_policy_reads_only_the_turns_it_needs_once_it_has_an_anchor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A context build must not grow with the history: after the first call under the policy,
    the anchor bounds how far back it reads (a long history made it O(n) per call)."""
    from convmem.strategies.composition import Composition

    def long_history(n: int) -> list[dict[str, str]]:
        out = []
        for i in range(n):
            out += [
                {"role": "user", "content": f"turn {i}"},
                {"role": "assistant", "content": "ok"},
            ]
        return out

    looked_at: list[int] = []
    real = Composition.is_decided

    def counting(self: Composition, turn_id: int) -> bool:
        looked_at.append(turn_id)
        return real(self, turn_id)

    for n in (500, 5_000):
        conv = Conversation(None, model="gpt-4o-mini", strategy=Truncate(max_tokens=300))
        conv.extend(long_history(n))
        first = conv.preview("next")
        monkeypatch.setattr(Composition, "is_decided", counting)
        looked_at.clear()
        again = conv.preview("next")
        monkeypatch.setattr(Composition, "is_decided", real)
        assert again.kept == first.kept  # the same answer as the first (full) read
        assert len(set(looked_at)) < 60, n  # a few dozen turns, whatever the history's length


# -- the automatic low-water mark ---------------------------------------------------------------


def _replay_drops(words: int, max_tokens: int, turns: int) -> tuple[list[ContextPlan], list[Any]]:
    """Previews ``turns`` calls of turns about ``words`` words each side; returns every plan and
    the ``cache_block_dropped`` notes (the default policy: the automatic mark)."""
    conv = Conversation(None, model="gpt-4o-mini", strategy=Truncate(max_tokens=max_tokens))
    plans, drops = [], []
    for i in range(turns):
        text = f"question {i} " + "word " * words
        plan = conv.preview(text)
        plans.append(plan)
        drops += plan.notes_of("cache_block_dropped")
        conv.extend([{"role": "user", "content": text}, {"role": "assistant", "content": text}])
    return plans, drops


def test_automatic_low_water_follows_the_turn_size() -> None:
    lo, hi = AUTO_LOW_WATER_RANGE
    target = DEFAULT_CACHE_POLICY.target_cacheable
    marks = {}
    for label, words, budget, turns in (
        ("small", 5, 4000, 260),  # turns of ~30 tokens: under 1% of the room
        ("medium", 40, 4000, 80),  # ~100 tokens: 2.5%
        ("large", 100, 1000, 20),  # ~210 tokens: a fifth of the room
    ):
        plans, drops = _replay_drops(words, budget, turns)
        assert drops, label
        note = drops[0]
        x, room, t = note.data["low_water"], note.data["room"], note.data["estimated_turn_tokens"]
        assert note.data["target_cacheable"] == target
        # The note carries what the mark was chosen from: it can be recomputed from it.
        expected = math.sqrt(max(0.0, 1 - 2 * (t / room) / (1 - target)))
        assert x == pytest.approx(min(hi, max(lo, expected)), abs=1e-3), label
        # The drop went down to that mark: the recent turns kept fill at most x of the room.
        plan = next(p for p in plans if p.notes_of("cache_block_dropped"))
        recent = plan.tokens_by_section()["recent"]
        assert recent <= x * room and recent > x * room - 2 * t, (label, recent, x, room)
        marks[label] = x
    assert marks["small"] == hi  # tiny turns: the smallest drop allowed (5% of the room)
    assert marks["large"] == lo  # turns too large for the target: never below the floor
    assert lo < marks["medium"] < hi
    # A smaller drop where turns are small: more of the older turns stay than with a fixed 0.65.
    assert marks["small"] > marks["medium"] > marks["large"]


def test_automatic_low_water_still_keeps_the_first_turn_fixed_between_drops() -> None:
    plans, drops = _replay_drops(40, 2000, 60)
    assert len(drops) >= 3
    anchor = None
    for plan in plans:
        (dropped,) = plan.notes_of("cache_block_dropped") or (None,)
        if dropped is not None:
            anchor = dropped.data["kept_from"]
        elif anchor is not None:
            # Between drops, only new turns are added after the same first turn.
            assert plan.kept[0] == anchor
            assert plan.notes_of("cache_prefix_kept")[0].data["kept_from"] == anchor
        assert plan.estimated_tokens <= 2000


def test_low_water_for_estimates_from_the_newest_turns_and_max_turns() -> None:
    policy = BlockTruncation()
    lo, hi = AUTO_LOW_WATER_RANGE
    # The newest ESTIMATE_TURNS turns count, older ones do not.
    x, t = policy.low_water_for([50] * ESTIMATE_TURNS + [5000] * 10, room=4000)
    assert t == 50 and x == pytest.approx(math.sqrt(1 - 2 * (50 / 4000) / 0.15))
    # Under max_turns a call adds one of max_turns turns; the larger share counts.
    assert policy.low_water_for([10] * 8, room=100_000, max_turns=10) == (lo, 10)
    x, _ = policy.low_water_for([10] * 8, room=100_000, max_turns=100)
    assert x == pytest.approx(math.sqrt(1 - 2 * 0.01 / 0.15))
    assert policy.low_water_for([1] * 8, room=100_000)[0] == hi
    # A fixed mark is used as given, with no estimate.
    assert BlockTruncation(low_water=0.5).low_water_for([50] * 8, room=4000) == (0.5, None)
    # A higher target drops more.
    assert BlockTruncation(target_cacheable=0.9).low_water_for([100] * 8, 4000)[0] < x


def test_a_fixed_low_water_is_noted_without_an_estimate() -> None:
    conv = Conversation(
        None, model="gpt-4o-mini",
        strategy=Truncate(max_turns=4, cache_policy=BlockTruncation(low_water=0.5)),
    )  # fmt: skip
    drops = []
    for i in range(8):
        drops += conv.preview(f"m{i}").notes_of("cache_block_dropped")
        conv.extend([{"role": "user", "content": f"m{i}"}, {"role": "assistant", "content": "ok"}])
    assert drops
    data = drops[0].data
    assert data["low_water"] == 0.5 and data["kept_turns"] == 2  # 50% of max_turns=4
    assert data["estimated_turn_tokens"] is None and data["target_cacheable"] is None
    assert "low-water mark (50%)" in drops[0]


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, True, "0.8", None])
def test_bad_target_cacheable_is_refused(bad: object) -> None:
    with pytest.raises(UsageError, match=r"target_cacheable=\.\.\.\) must be in \(0, 1\)"):
        BlockTruncation(target_cacheable=bad)  # type: ignore[arg-type]


def test_the_drop_itself_reads_only_the_turns_it_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Estimating the mark reads no turn the build does not read anyway: a drop on a long
    history looks at about as many turns as fit, not at the history."""
    from convmem.strategies.composition import Composition

    looked_at: list[int] = []
    real = Composition.is_decided

    def counting(self: Composition, turn_id: int) -> bool:
        looked_at.append(turn_id)
        return real(self, turn_id)

    conv = Conversation(None, model="gpt-4o-mini", strategy=Truncate(max_tokens=300))
    for i in range(3_000):
        conv.extend(
            [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": "ok"}]
        )
    conv.preview("next")  # the first call under the policy reads the run once
    seen = 0
    monkeypatch.setattr(Composition, "is_decided", counting)
    for i in range(40):
        looked_at.clear()
        plan = conv.preview(f"next {i}")
        if plan.notes_of("cache_block_dropped"):
            seen += 1
            assert len(set(looked_at)) < 80, len(set(looked_at))
        conv.extend(
            [{"role": "user", "content": f"more {i}"}, {"role": "assistant", "content": "ok"}]
        )
    assert seen >= 2
