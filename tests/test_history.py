import json

import pytest

from convmem.errors import InvalidMessageError, UsageError
from convmem.history import History, Summary
from convmem.messages import (
    check_sequence,
    split_turns,
    to_wire,
    user_message,
    validate_message,
)

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_turns_start_at_user_messages_and_keep_tool_replies() -> None:
    h = History("sys")
    h.append(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "it is 42"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert [len(t.messages) for t in h.turns] == [4, 2]
    assert [t.id for t in h.turns] == [0, 1]
    assert h.messages()[0] == {"role": "system", "content": "sys"}
    assert len(h.messages()) == 7


def test_append_is_atomic_on_invalid_message() -> None:
    h = History()
    h.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(InvalidMessageError, match="unknown role"):
        h.append([{"role": "user", "content": "c"}, {"role": "wizard", "content": "d"}])
    assert len(h.messages()) == 2


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        ({"role": "bot", "content": "x"}, "unknown role"),
        ({"role": "user"}, "needs 'content'"),
        ({"role": "user", "content": 3}, "string or a list"),
        ({"role": "assistant"}, "no content and no tool_calls"),
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": [{"type": "video"}]}, "unknown content part"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "image_url"),
        ({"role": "user", "content": []}, "empty list"),
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {}}}],
            },
            "JSON string",
        ),
        ("hello", "must be a dict"),
    ],
)
def test_invalid_messages_are_named(msg: object, needle: str) -> None:
    with pytest.raises(InvalidMessageError, match=needle):
        validate_message(msg)


def test_tool_message_without_call_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="answers no open tool call"):
        check_sequence(
            [
                {"role": "user", "content": "a"},
                {"role": "tool", "tool_call_id": "x", "content": "1"},
            ]
        )


def test_user_message_while_tool_calls_open_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="no tool reply"):
        check_sequence(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "user", "content": "b"},
            ]
        )


def test_system_messages_are_not_history() -> None:
    with pytest.raises(InvalidMessageError, match="pinned"):
        History().append([{"role": "system", "content": "x"}])


def test_user_message_forms() -> None:
    assert user_message("hi") == {"role": "user", "content": "hi"}
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
    ]
    assert user_message(parts)["content"] == parts
    with pytest.raises(InvalidMessageError, match="takes a user message"):
        user_message({"role": "assistant", "content": "x"})


def test_caller_mutation_does_not_rewrite_history() -> None:
    msg = {"role": "user", "content": [{"type": "text", "text": "a"}]}
    h = History()
    h.append([msg])
    msg["content"][0]["text"] = "changed"
    assert h.turns[0].messages[0]["content"][0]["text"] == "a"


def test_reasoning_is_kept_in_history_but_not_on_the_wire() -> None:
    msg = {"role": "assistant", "content": "x", "reasoning_content": "thinking"}
    assert "reasoning_content" not in to_wire(msg)
    assert to_wire(msg, send_reasoning=True)["reasoning_content"] == "thinking"


def test_split_turns_leading_assistant() -> None:
    turns = split_turns(
        [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]
    )
    assert [len(t) for t in turns] == [1, 1]


def test_json_round_trip_keeps_ids_and_summaries() -> None:
    h = History("sys")
    h.append(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "reasoning_content": "r"},
        ]
    )
    h.append([{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])
    h.add_summary(Summary("a said", covers=(0,), model="m", prompt_tokens=3, completion_tokens=2))
    h.clear()
    h.append([{"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}])
    h.add_summary(Summary("e said", covers=(2,)))
    data = json.loads(h.to_json())
    back = History.from_dict(data)
    assert back.messages() == h.messages()
    assert [t.id for t in back.turns] == [2]
    assert back.next_turn_id == 3
    assert back.latest_summary is not None and back.latest_summary.covers == (2,)


def test_load_plain_message_list() -> None:
    back = History.from_dict(
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    )
    assert back.system == {"role": "system", "content": "s"}
    assert len(back.turns) == 1


def test_load_rejects_foreign_data() -> None:
    with pytest.raises(UsageError, match="not a convmem history"):
        History.from_dict({"hello": 1})


def test_summary_must_cover_existing_turns() -> None:
    with pytest.raises(UsageError, match="do not exist"):
        History().add_summary(Summary("x", covers=(5,)))
