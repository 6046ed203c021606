"""Hypothesis over generated garbage: from_json, extend, send and the argument validators.

The promise under test: whatever a caller or a file hands convmem, only ``UsageError``
subclasses escape, a refused input leaves the history byte-identical, an accepted one leaves it
sendable and saveable as UTF-8, and nothing hangs (each example has a deadline).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convmem import Conversation, _check
from convmem.errors import InvalidHistoryError, InvalidMessageError, UsageError
from convmem.testing import FakeChatServer

FUZZ = settings(
    max_examples=120,
    deadline=2000,  # ms per example: a hang or a quadratic blow-up fails the test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- generators -----------------------------------------------------------------------------------

surrogate = st.integers(0xD800, 0xDFFF).map(chr)
text = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), surrogate, st.text(max_size=4)),
    st.sampled_from(["", " ", "John Doe", "call_1", "user", "assistant", "tool", "function"]),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_like = st.recursive(
    scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(text, st.integers(), st.just(math.nan)), inner, max_size=4),
    ),
    max_leaves=12,
)
ROLES = ["system", "developer", "user", "assistant", "tool", "function", "bot", "", None]
CONTENT_PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(text, json_like)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.one_of(
                        st.sampled_from(
                            [
                                "https://example.com/a.png",
                                "data:image/png;base64,iVBORw0KGgo=",
                                "data:image/png;base64,%%%",
                                "ftp://x/y.png",
                                "relative.png",
                            ]
                        ),
                        text,
                    )
                },
                optional={"detail": st.sampled_from(["low", "high", "auto", "max", 1])},
            ),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_audio"), "input_audio": st.one_of(json_like, st.just({}))}
    ),
    json_like,
)
tool_call = st.fixed_dictionaries(
    {
        "id": st.one_of(st.sampled_from(["call_1", "call_2", ""]), json_like),
        "type": st.sampled_from(["function", "custom", None]),
        "function": st.one_of(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "g", ""]), "arguments": st.one_of(text, json_like)}
            ),
            json_like,
        ),
    }
)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES)},
        optional={
            "content": st.one_of(text, st.lists(CONTENT_PARTS, max_size=3), json_like),
            "name": st.one_of(st.sampled_from(["bob", "John Doe", "f"]), json_like),
            "tool_calls": st.one_of(st.lists(tool_call, max_size=2), json_like),
            "tool_call_id": st.one_of(st.sampled_from(["call_1", "call_2"]), json_like),
            "function_call": st.one_of(
                st.fixed_dictionaries({"name": st.just("f"), "arguments": st.just("{}")}),
                json_like,
            ),
            "reasoning_content": text,
            "extra": json_like,
        },
    ),
    json_like,
)
# Mostly valid input, with the hazards that must be repaired (lone surrogates) or refused.
good_text = st.one_of(st.text(max_size=20), text)
good_user = st.fixed_dictionaries(
    {
        "role": st.just("user"),
        "content": st.one_of(
            good_text,
            st.lists(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "text": good_text}),
                    st.just(
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ),
                ),
                min_size=1,
                max_size=3,
            ),
        ),
    },
    optional={"name": st.sampled_from(["bob", "agent_7", "John Doe"])},
)
good_assistant = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": good_text},
    optional={"reasoning_content": good_text, "annotations": st.just([])},
)


@st.composite
def good_turn(draw: st.DrawFn) -> list[Any]:
    turn: list[Any] = [draw(good_user)]
    if draw(st.booleans()):
        call_id = draw(st.sampled_from(["call_a", "call_b", "call_c"]))
        if draw(st.booleans()):
            turn.append({"role": "assistant", "content": None, "tool_calls": [_call(call_id)]})
            turn.append({"role": "tool", "tool_call_id": call_id, "content": draw(good_text)})
        else:  # the legacy form
            turn.append(
                {"role": "assistant", "function_call": {"name": "f", "arguments": draw(text)}}
            )
            turn.append({"role": "function", "name": "f", "content": draw(good_text)})
    turn.append(draw(good_assistant))
    return turn


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A valid message with one value replaced by garbage."""
    msg = dict(draw(base))
    msg[draw(st.sampled_from([*msg.keys(), "extra", "name"]))] = draw(json_like)
    return msg


plausible = st.one_of(good_user, good_assistant, mutated(good_user), mutated(good_assistant))
message = st.one_of(plausible, plausible, message)
batch = st.one_of(
    st.lists(good_turn(), min_size=1, max_size=3).map(lambda ts: [m for t in ts for m in t]),
    st.lists(plausible, max_size=5),
    st.lists(message, max_size=5),
    json_like,
)


def fresh(server: FakeChatServer | None = None) -> Conversation:
    server = server or FakeChatServer()
    conv = Conversation(server.client(), model="gpt-4o-mini", system="sys", conversation_id="fz")
    conv.extend(
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": None, "tool_calls": [_call("call_0")]},
            {"role": "tool", "tool_call_id": "call_0", "content": "42"},
            {"role": "assistant", "content": "it is 42"},
        ]
    )
    return conv


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def assert_healthy(conv: Conversation) -> None:
    """Saveable as UTF-8, reloads to the same document, and the next call goes out."""
    data = conv.to_json()
    data.encode("utf-8")
    again = Conversation.from_json(FakeChatServer().client(), data)
    assert again.to_json() == data
    server = FakeChatServer().reply("ok")
    conv.client = server.client()
    try:
        conv.send("next")
    except InvalidMessageError as exc:  # e.g. tool calls left open by the batch
        assert "no tool reply" in str(exc)
        assert server.requests == []
        return
    json.dumps(server.last_request, ensure_ascii=False).encode("utf-8")


# -- properties -----------------------------------------------------------------------------------


@FUZZ
@given(batch)
def test_extend_garbage(messages: Any) -> None:
    conv = fresh()
    before = conv.to_json()
    try:
        conv.extend(messages)
    except UsageError:
        assert conv.to_json() == before
        return
    assert_healthy(conv)


@FUZZ
@given(message)
def test_send_garbage(msg: Any) -> None:
    server = FakeChatServer().reply("reply \ud800 with a lone surrogate")
    conv = fresh(server)
    before = conv.to_json()
    try:
        conv.send(msg)
    except UsageError:
        assert server.requests == []
        assert conv.to_json() == before
        return
    assert len(server.requests) == 1
    assert len(conv.turns) == 2
    assert_healthy(conv)


def _document() -> dict[str, Any]:
    conv = fresh()
    conv.extend([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    doc: dict[str, Any] = json.loads(conv.to_json())
    doc["summaries"] = [{"text": "s", "covers": [0], "created_at": 1.7e9, "model": "m"}]
    return doc


DOCUMENT = _document()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


PATHS = _paths(DOCUMENT)[1:]


@st.composite
def tampered(draw: st.DrawFn) -> Any:
    """The valid document with 1-3 values replaced by garbage (or deleted)."""
    doc = copy.deepcopy(DOCUMENT)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        target: Any = doc
        try:
            for key in path[:-1]:
                target = target[key]
            if draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = draw(st.one_of(text, json_like))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed the path
    return doc


@FUZZ
@given(st.one_of(tampered(), json_like, st.text(max_size=40)), st.booleans())
def test_from_json_garbage(data: Any, as_text: bool) -> None:
    if as_text and not isinstance(data, str):
        try:
            data = json.dumps(data)
        except (TypeError, ValueError):  # keys json cannot write
            return
    try:
        conv = Conversation.from_json(FakeChatServer().client(), data, model="gpt-4o-mini")
    except UsageError as exc:
        assert isinstance(exc, InvalidHistoryError), type(exc)
        return
    assert_healthy(conv)


@FUZZ
@given(tampered(), st.one_of(st.none(), text, json_like))
def test_pinned_conversation_id_wins_or_is_refused(data: Any, pin: Any) -> None:
    try:
        conv = Conversation.from_json(
            FakeChatServer().client(), data, conversation_id=pin, model="gpt-4o-mini"
        )
    except UsageError:
        return
    expected = pin if pin is not None else data.get("conversation_id")
    if expected is not None:
        assert conv.conversation_id == expected


CHECKS: list[Callable[[str, Any], Any]] = [
    _check.positive_int,
    _check.non_negative_int,
    _check.finite_number,
    _check.positive_number,
    _check.non_empty_str,
    _check.text_id,
    _check.chroma_collection_name,
    lambda name, v: _check.number_in_range(name, v, -1.0, 1.0),
]


@FUZZ
@given(st.sampled_from(CHECKS), json_like)
def test_validators_garbage(check: Any, value: Any) -> None:
    try:
        check("arg", value)
    except UsageError as exc:
        assert str(exc).startswith("arg must be")


@pytest.mark.parametrize("value", [True, math.nan, math.inf, "1", None, [], {}])
def test_every_numeric_validator_refuses_non_numbers(value: Any) -> None:
    for check in CHECKS[:4]:
        with pytest.raises(UsageError):
            check("arg", value)
