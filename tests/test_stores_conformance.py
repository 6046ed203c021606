"""The store contract, run against every store (SQLite, and a real PostgreSQL server).

A store of your own passes this suite when ``store_spec``/``store`` (tests/_pg.py) open it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from convmem.errors import ConflictError, InvalidMessageError, UsageError
from convmem.history import Summary
from convmem.stores import Commit, Head, Store
from convmem.stores.base import EMPTY


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def call(call_id: str, name: str = "lookup", args: str = '{"q": "x"}') -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
        ],
    }


def reply(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def exchange(store: Any, cid: str, n: int, head: Head | None = None) -> Head:
    for i in range(n):
        head = store.append(cid, [user(f"q{i}"), bot(f"a{i}")], expected_head=head).head
    assert head is not None
    return head


def test_is_a_store(store: Any) -> None:
    assert isinstance(store, Store)


def test_create_and_load_round_trip(store: Any) -> None:
    system = {"role": "system", "content": "You are terse."}
    assert store.create("c1", system=system, model="gpt-4o-mini", context_window=128_000)
    assert not store.create("c1", model="other")  # exists: nothing changes
    loaded = store.load("c1")
    assert loaded is not None
    assert (loaded.system, loaded.model, loaded.context_window) == (system, "gpt-4o-mini", 128_000)
    assert loaded.turns == [] and loaded.head == EMPTY
    assert store.load("nope") is None and store.head("nope") is None
    assert store.turns("nope") == [] and store.turn_ids("nope") == []


def test_whole_turns_dense_ids_and_exact_messages(store: Any) -> None:
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this? ünïcödé"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    thinking = {"role": "assistant", "content": "a cat", "reasoning_content": "hmm"}
    c0 = store.append("c", [image, thinking], expected_head=EMPTY, created_at=1000.0)
    assert isinstance(c0, Commit)
    assert [t.id for t in c0.turns] == [0] and c0.head == Head(0, 2) and c0.base == EMPTY
    c1 = store.append("c", [user("u1"), bot("b1"), user("u2"), bot("b2")], expected_head=c0.head)
    assert [t.id for t in c1.turns] == [1, 2] and c1.head == Head(2, 2)
    loaded = store.load("c")
    assert [t.id for t in loaded.turns] == [0, 1, 2]
    assert loaded.turns[0].messages == (image, thinking)
    assert loaded.turns[0].created_at == 1000.0
    assert loaded.head == Head(2, 2) == store.head("c")
    assert [t.id for t in store.turns("c", after=0)] == [1, 2]
    assert store.turn_ids("c") == [0, 1, 2]
    assert loaded.title == "what is this? ünïcödé"


def test_tool_replies_continue_the_head_turn(store: Any) -> None:
    head = store.append("c", [user("weather?"), call("c1")]).head
    assert head == Head(0, 2)
    with pytest.raises(InvalidMessageError, match="tool calls"):
        store.append("c", [user("ignored the call")], expected_head=head)
    commit = store.append("c", [reply("c1", "sunny"), bot("It is sunny.")], expected_head=head)
    assert commit.head == Head(0, 4)
    assert [m["role"] for m in commit.turns[0].messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert [m["role"] for m in store.load("c").turns[0].messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


def test_invalid_input_is_refused_before_anything_is_written(store: Any) -> None:
    store.append("c", [user("hi"), bot("hello")])
    before = store.load("c")
    with pytest.raises(InvalidMessageError):
        store.append("c", [user("ok"), {"role": "robot", "content": "x"}])
    with pytest.raises(InvalidMessageError, match="pinned"):
        store.append("c", [{"role": "system", "content": "x"}])
    with pytest.raises(InvalidMessageError, match="no open tool call"):
        store.append("c", [reply("nope", "x")])
    with pytest.raises(UsageError, match="empty"):
        store.append("c", [])
    with pytest.raises(UsageError, match="on_conflict"):
        store.append("c", [user("x")], on_conflict="merge")
    with pytest.raises(UsageError, match="conversation_id"):
        store.append("", [user("x")])
    with pytest.raises(UsageError, match="expected_head"):
        store.append("c", [user("x")], expected_head=3)
    with pytest.raises(UsageError, match="usage"):
        store.append("c", [user("x")], usage={"prompt_tokens": "many"})
    after = store.load("c")
    assert [t.messages for t in after.turns] == [t.messages for t in before.turns]
    assert after.head == before.head


def test_retry_with_the_same_idempotency_key_adds_nothing(store_spec: Any) -> None:
    first = store_spec.open()
    commit = first.append("c", [user("pay 10 EUR"), bot("done")], idempotency_key="req-1")
    first.close()
    # The acknowledgement was lost; the client retries, from another connection.
    second = store_spec.open()
    again = second.append("c", [user("pay 10 EUR"), bot("done")], idempotency_key="req-1")
    assert again.duplicate and not commit.duplicate
    assert [t.id for t in again.turns] == [0] and again.head == commit.head
    assert again.turns[0].messages == commit.turns[0].messages
    assert second.turn_ids("c") == [0]
    assert not second.append("c", [user("next")], idempotency_key="req-2").duplicate
    assert second.turn_ids("c") == [0, 1]
    second.close()


def test_stale_head_append_policy_writes_after_the_new_head(store: Any) -> None:
    seen = exchange(store, "c", 1)
    store.append("c", [user("other writer"), bot("b")], expected_head=seen)
    commit = store.append("c", [user("mine"), bot("m")], expected_head=seen)  # default append
    assert commit.conflict and commit.base == Head(1, 2) and [t.id for t in commit.turns] == [2]
    assert [t.messages[0]["content"] for t in store.load("c").turns] == [
        "q0",
        "other writer",
        "mine",
    ]


def test_stale_head_raise_policy_names_both_heads(store: Any) -> None:
    seen = exchange(store, "c", 1)
    store.append("c", [user("other"), bot("b")], expected_head=seen)
    with pytest.raises(ConflictError) as info:
        store.append("c", [user("mine")], expected_head=seen, on_conflict="raise")
    assert info.value.expected == Head(0, 2) and info.value.actual == Head(1, 2)
    assert "turn 0 (2 messages)" in str(info.value) and "turn 1 (2 messages)" in str(info.value)
    assert store.turn_ids("c") == [0, 1]


def test_stale_head_fork_policy_forks_at_the_head_it_was_built_on(store: Any) -> None:
    seen = exchange(store, "c", 2)
    store.append("c", [user("other"), bot("b")], expected_head=seen)
    commit = store.append(
        "c", [user("mine"), bot("m")], expected_head=seen, on_conflict="fork", idempotency_key="k"
    )
    assert commit.forked_from == "c" and commit.conversation_id != "c"
    fork = store.load(commit.conversation_id)
    assert [t.messages[0]["content"] for t in fork.turns] == ["q0", "q1", "mine"]
    assert fork.forked_from == "c" and fork.forked_at == 1
    assert [t.messages[0]["content"] for t in store.load("c").turns] == ["q0", "q1", "other"]
    # The retry of a forked write finds the fork, from either id.
    retry = store.append("c", [user("mine"), bot("m")], expected_head=seen, idempotency_key="k")
    assert retry.duplicate and retry.conversation_id == commit.conversation_id


def test_continuation_on_a_moved_head_is_a_conflict_under_append(store: Any) -> None:
    head = store.append("c", [user("weather?"), call("c1")]).head
    store.append("c", [reply("c1", "rain"), bot("Rain.")], expected_head=head)
    with pytest.raises(ConflictError, match="continue turn 0"):
        store.append("c", [reply("c1", "sun"), bot("Sun.")], expected_head=head)
    forked = store.append(
        "c", [reply("c1", "sun"), bot("Sun.")], expected_head=head, on_conflict="fork"
    )
    contents = [m.get("content") for m in store.load(forked.conversation_id).turns[0].messages]
    assert contents == ["weather?", None, "sun", "Sun."]


def test_summary_written_only_if_nothing_it_was_built_on_changed(store: Any) -> None:
    head = exchange(store, "c", 4)
    assert store.add_summary("c", Summary("first", (0, 1)), expected_summaries=0)
    # A second summariser that read the same state loses the race.
    assert not store.add_summary("c", Summary("rival", (0, 1)), expected_summaries=0)
    assert not store.add_summary("c", Summary("future", (0, 9)), expected_summaries=1)
    # It covers the head turn, which has grown since the summariser read it.
    stale = Head(3, 1)
    assert not store.add_summary(
        "c", Summary("x", (0, 1, 2, 3)), expected_summaries=1, expected_head=stale
    )
    assert store.add_summary(
        "c",
        Summary("second", (0, 1, 2, 3), model="m", prompt_tokens=7),
        expected_summaries=1,
        expected_head=head,
    )
    assert not store.add_summary("gone", Summary("x", (0,)), expected_summaries=0)
    summaries = store.load("c").summaries
    assert [(s.text, s.covers) for s in summaries] == [("first", (0, 1)), ("second", (0, 1, 2, 3))]
    assert summaries[1].model == "m" and summaries[1].prompt_tokens == 7
    with pytest.raises(UsageError, match="at least one turn"):
        store.add_summary("c", Summary("empty", ()), expected_summaries=2)


def test_usage_adds_up_state_is_replaced_tokens_counted(store: Any) -> None:
    store.append(
        "c", [user("a")], usage={"prompt_tokens": 10, "calls": 1}, tokens=5, state={"ratio": 1.1}
    )
    store.append("c", [bot("b")], usage={"prompt_tokens": 3, "summary_calls": 1}, tokens=2)
    loaded = store.load("c")
    assert loaded.usage == {"prompt_tokens": 13, "calls": 1, "summary_calls": 1}
    assert loaded.state == {"ratio": 1.1} and loaded.tokens == 7
    store.append("c", [user("c")], state={"ratio": 0.9, "plan": {"x": [1]}})
    assert store.load("c").state == {"ratio": 0.9, "plan": {"x": [1]}}


def test_list_search_delete(store: Any) -> None:
    store.create("tea", model="m1")
    store.append("tea", [user("Do you like green tea?\nsecond line"), bot("I love tea.")], tokens=9)
    store.append("coffee", [user("Coffee, please!"), bot("Here's your coffee.")])
    rows = store.list()
    assert [r.id for r in rows] == ["coffee", "tea"]  # most recently updated first
    tea = rows[1]
    assert (tea.title, tea.model, tea.turns, tea.tokens) == ("Do you like green tea?", "m1", 1, 9)
    assert [r.id for r in store.list(limit=1)] == ["coffee"]
    hits = store.search("tea")
    assert {(h.conversation_id, h.turn_id, h.index) for h in hits} == {("tea", 0, 0), ("tea", 0, 1)}
    assert all(h.score > 0 for h in hits)
    assert [h.role for h in store.search("green tea")] == ["user"]
    assert store.search("TEA green!") and store.search("'coffee'")[0].conversation_id == "coffee"
    assert store.search("tea", conversation_id="coffee") == []
    assert store.search("") == [] and store.search("?!") == []
    assert [h.turn_id for h in store.search("lookup")] == []
    assert store.delete("tea") and not store.delete("tea")
    assert store.load("tea") is None and store.search("tea") == []
    assert [r.id for r in store.list()] == ["coffee"]
    with pytest.raises(UsageError, match="limit"):
        store.list(limit=0)


def test_search_finds_tool_call_names_and_arguments(store: Any) -> None:
    head = store.append("c", [user("weather?"), call("c1", "get_weather", '{"city": "Lyon"}')]).head
    store.append("c", [reply("c1", "drizzle")], expected_head=head)
    assert [h.role for h in store.search("lyon")] == ["assistant"]
    assert [h.role for h in store.search("drizzle")] == ["tool"]


def test_fork_copies_turns_and_the_summaries_they_carry(store: Any) -> None:
    store.create("a", system={"role": "system", "content": "S"}, model="m")
    exchange(store, "a", 5)
    store.add_summary("a", Summary("s01", (0, 1)), expected_summaries=0)
    store.add_summary("a", Summary("s0-3", (0, 1, 2, 3)), expected_summaries=1)
    assert store.fork("a", at_turn=2, new_id="b") == "b"
    b = store.load("b")
    assert [t.id for t in b.turns] == [0, 1, 2] and b.head == Head(2, 2)
    assert [s.text for s in b.summaries] == ["s01"]
    assert (b.system, b.model, b.forked_from, b.forked_at) == (
        {"role": "system", "content": "S"},
        "m",
        "a",
        2,
    )
    whole = store.fork("a")
    assert [t.id for t in store.load(whole).turns] == [0, 1, 2, 3, 4]
    assert len(store.load(whole).summaries) == 2
    empty = store.fork("a", at_turn=-1, new_id="e")
    assert store.load(empty).turns == [] and store.load(empty).system is not None
    # The fork goes on by itself; the original is untouched.
    store.append("b", [user("branch")], expected_head=Head(2, 2))
    assert store.turn_ids("b") == [0, 1, 2, 3] and store.turn_ids("a") == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="already exists"):
        store.fork("a", new_id="b")
    with pytest.raises(UsageError, match="no turn 9"):
        store.fork("a", at_turn=9)
    with pytest.raises(UsageError, match="no conversation"):
        store.fork("zzz")
    store.delete("a")
    assert store.turn_ids("b") == [0, 1, 2, 3]


def test_reopened_store_has_everything(store_spec: Any) -> None:
    first = store_spec.open()
    first.create("c", system={"role": "system", "content": "S"}, model="m", context_window=4096)
    exchange(first, "c", 3)
    first.add_summary("c", Summary("s", (0, 1)), expected_summaries=0)
    first.close()
    again = store_spec.open()
    loaded = again.load("c")
    assert [t.id for t in loaded.turns] == [0, 1, 2] and loaded.summaries[0].text == "s"
    assert (loaded.model, loaded.context_window) == ("m", 4096)
    again.close()


def test_schema_version_is_recorded_and_a_newer_one_refused(store_spec: Any) -> None:
    store = store_spec.open()
    rows = store._transact(lambda tx: tx.rows("SELECT version FROM convmem_schema"), write=False)
    assert [r[0] for r in rows] == list(range(1, len(store.migrations) + 1))
    store._transact(
        lambda tx: tx.run("INSERT INTO convmem_schema (version, applied_at) VALUES (?, 0)", (99,))
    )
    store.close()
    with pytest.raises(UsageError, match="schema version 99"):
        store_spec.open()


def test_bad_arguments(store: Any) -> None:
    with pytest.raises(UsageError, match="at_turn"):
        store.fork("a", at_turn="3")
    with pytest.raises(UsageError, match="new_id"):
        store.fork("a", new_id="")
    with pytest.raises(UsageError, match="query"):
        store.search(3)
    with pytest.raises(UsageError, match="idempotency_key"):
        store.append("c", [user("x")], idempotency_key="")
    with pytest.raises(UsageError, match="expected_summaries"):
        store.add_summary("c", Summary("s", (0,)), expected_summaries=-1)
    assert json.loads(json.dumps([r.id for r in store.list()])) == []
