"""Input validation and trust: argument checks, redaction, messages, saved histories."""

from __future__ import annotations

import math
import warnings

import pytest

from convmem import _check
from convmem.errors import UsageError
from convmem.plan import ContextPlan, SummaryCall
from convmem.redact import REDACTED, describe_error, redact, remember_secret

# -- _check ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, False, "8", 1.0, None, math.nan])
def test_positive_int_refuses(bad: object) -> None:
    with pytest.raises(UsageError, match=r"max_tool_rounds must be a positive int"):
        _check.positive_int("max_tool_rounds", bad)


def test_positive_int_accepts() -> None:
    assert _check.positive_int("n", 3) == 3
    assert _check.non_negative_int("n", 0) == 0
    with pytest.raises(UsageError, match="an int >= 0"):
        _check.non_negative_int("n", -1)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, -math.inf, True, "1", None])
def test_positive_number_refuses(bad: object) -> None:
    with pytest.raises(UsageError, match=r"timeout must be a finite number > 0"):
        _check.positive_number("timeout", bad)


def test_number_in_range() -> None:
    assert _check.number_in_range("min_score", 0.5, -1.0, 1.0) == 0.5
    for bad in (math.nan, 1.5, -2, True, "0.3"):
        with pytest.raises(UsageError, match=r"min_score must be a number in \[-1.0, 1.0\]"):
            _check.number_in_range("min_score", bad, -1.0, 1.0)
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        _check.number_in_range("trigger", 0, 0, 1, low_open=True)
    assert _check.finite_number("x", 2) == 2.0
    assert _check.optional(_check.positive_number, "t", None) is None


@pytest.mark.parametrize(
    "bad", ["ab", "-abc", "abc-", "a..b", "has space", "192.168.0.1", "é" * 4, 12, "x" * 513]
)
def test_chroma_collection_name_refuses(bad: object) -> None:
    with pytest.raises(UsageError, match="a Chroma collection name"):
        _check.chroma_collection_name("collection", bad)


def test_chroma_collection_name_accepts() -> None:
    for ok in ("abc", "convmem_turns", "a.b-c_d9", "x" * 512):
        assert _check.chroma_collection_name("collection", ok) == ok


def test_text_id() -> None:
    assert _check.text_id("conversation_id", "user 42/chat.1") == "user 42/chat.1"
    for bad in ("", 5, None, "x" * 257, "a\nb", "a\ud800", b"abc"):
        with pytest.raises(UsageError, match="conversation_id must be a string of 1-256"):
            _check.text_id("conversation_id", bad)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(UsageError) as info:
        _check.positive_int("k", "9" * 500)
    assert len(str(info.value)) < 200


# -- redaction ------------------------------------------------------------------------------------

# The body OpenAI returns for a wrong key (401, code invalid_api_key).
OPENAI_401 = (
    "Error code: 401 - {'error': {'message': 'Incorrect API key provided: "
    "sk-proj-AbCdEf1234567890xyzXYZ0987654321. You can find your API key at "
    "https://platform.openai.com/account/api-keys.', 'type': 'invalid_request_error', "
    "'param': None, 'code': 'invalid_api_key'}}"
)


def test_redact_openai_key_in_provider_error() -> None:
    out = redact(OPENAI_401)
    assert "sk-proj-AbCdEf" not in out
    assert REDACTED in out
    assert "invalid_api_key" in out  # the useful part stays


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "headers={'authorization': 'Bearer abcdefgh12345'}",
        "url?api_key=abcd1234efgh&x=1",
        '{"api-key": "0123456789abcdef"}',
        "token hf_abcdefghijklmnopqrstuvwxyz12 leaked",
        "google AIzaSyA1234567890abcdefghijklmnopqrs",
        "aws AKIAIOSFODNN7EXAMPLE id",
        "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ],
)
def test_redact_credential_shapes(text: str) -> None:
    out = redact(text)
    assert REDACTED in out
    for secret in (
        "eyJhbGci",
        "abcdefgh12345",
        "abcd1234efgh",
        "0123456789abcdef",
        "hf_abc",
        "AIzaSy",
        "AKIAIOSF",
        "ghp_abc",
    ):
        assert secret not in out


def test_redact_exact_and_remembered_secrets() -> None:
    assert redact("key was weird-local-key-42!", ["weird-local-key-42"]) == "key was [REDACTED]!"
    assert redact("short", ["abc"]) == "short"  # too short to be a key: left alone
    remember_secret("another-odd-secret-77")
    assert "another-odd-secret-77" not in redact("server said another-odd-secret-77")
    assert redact("nothing to hide here") == "nothing to hide here"


def test_describe_error_and_plan_notes_are_redacted() -> None:
    err = RuntimeError(OPENAI_401)
    assert "sk-proj" not in describe_error(err)
    plan = ContextPlan(
        strategy="x",
        sections=[],
        turn_decisions=[],
        context_window=10,
        reply_reserve=1,
        budget=9,
        estimated_tokens=0,
        corrected_tokens=0,
        notes=[f"summariser failed ({OPENAI_401})"],  # type: ignore[list-item]  # plain str
        summary_calls=[SummaryCall(model="m", ok=False, error=OPENAI_401)],
    )
    assert "sk-proj" not in plan.notes[0]
    assert plan.summary_calls[0].error is not None
    assert "sk-proj" not in plan.summary_calls[0].error
    assert "sk-proj" not in plan.to_json()


def test_no_warning_from_redact() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        redact("x" * 10_000)


# -- shared helpers -------------------------------------------------------------------------------

import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import httpx2  # noqa: E402

from convmem import Conversation  # noqa: E402
from convmem.errors import (  # noqa: E402
    InvalidHistoryError,
    InvalidMessageError,
    ReadOnlyError,
)
from convmem.history import History, Turn  # noqa: E402
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall  # noqa: E402
from convmem.strategy import Budget, ContextRequest, LocalJob  # noqa: E402
from convmem.testing import FakeChatServer  # noqa: E402

PNG_1PX = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8"
    "AAAAASUVORK5CYII="
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def conv_with(server: FakeChatServer, **kw: Any) -> Conversation:
    kw.setdefault("model", "gpt-4o-mini")
    return Conversation(server.client(), **kw)


def saved(conv: Conversation) -> bytes:
    """The saved form, encoded as a file would be: fails if it is not valid UTF-8."""
    return conv.to_json().encode("utf-8")


# -- point 3: lone surrogates and NaN never reach the history -------------------------------------


def test_lone_surrogate_from_extend_is_repaired_and_history_stays_saveable() -> None:
    server = FakeChatServer().reply("fine")
    conv = conv_with(server, system="sys \udfff")
    conv.extend([{"role": "user", "content": "a\ud800b"}, {"role": "assistant", "content": "c"}])
    assert conv.messages[1]["content"] == "a\ufffdb"
    assert conv.system is not None and conv.system["content"] == "sys \ufffd"
    data = saved(conv)
    conv.send("next")  # the request body is valid UTF-8 JSON
    assert server.last_request["messages"][1]["content"] == "a\ufffdb"
    again = Conversation.from_json(server.client(), data.decode("utf-8"))
    assert again.messages[1]["content"] == "a\ufffdb"


def test_surrogate_pair_written_as_two_code_points_becomes_the_character() -> None:
    h = History()
    h.append([{"role": "user", "content": "smile \ud83d\ude00"}])
    assert h.messages()[0]["content"] == "smile \U0001f600"


def test_server_reply_with_lone_surrogate_is_repaired_before_commit() -> None:
    server = FakeChatServer().reply("broken \ud800 reply").reply("second")
    conv = conv_with(server)
    reply = conv.send("hi")
    assert reply.choices[0].message.content == "broken \ud800 reply"  # the SDK object as sent
    assert conv.messages[-1]["content"] == "broken \ufffd reply"  # the history: repaired
    saved(conv)
    conv.send("again")  # still sendable
    assert server.last_request["messages"][1]["content"] == "broken \ufffd reply"
    assert len(conv.turns) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "user", "content": "x", math.nan: 1},
        {"role": "user", "content": [{"type": "text", "text": "x", "w": math.nan}]},
        {"role": "assistant", "content": "x", "score": math.inf},
        {"role": "user", "content": "x", 3: "y"},
    ],
)
def test_nan_and_non_string_keys_are_refused_and_nothing_is_committed(bad: Any) -> None:
    server = FakeChatServer()
    conv = conv_with(server)
    conv.extend([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    before = saved(conv)
    batch = [bad] if bad["role"] == "user" else [{"role": "user", "content": "q"}, bad]
    with pytest.raises(InvalidMessageError, match=r"NaN|infinity|keys must be strings"):
        conv.extend(batch)
    assert saved(conv) == before
    assert server.requests == []


# -- point 7: from_json trusts nothing ------------------------------------------------------------


def good_document() -> dict[str, Any]:
    server = FakeChatServer().reply("one").reply("two")
    conv = conv_with(server, conversation_id="conv-a")
    conv.send("first")
    conv.send("second")
    conv.history.add_summary(
        __import__("convmem").Summary(text="s", covers=(0,), created_at=1.7e9, model="m")
    )
    return json.loads(conv.to_json())  # type: ignore[no-any-return]


def _set(doc: dict[str, Any], path: Sequence[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["turns", 0, "created_at"], math.nan, "turns[0].created_at"),
        (["turns", 0, "created_at"], 1e300, "turns[0].created_at"),
        (["turns", 1, "created_at"], -5, "turns[1].created_at"),
        (["turns", 1, "created_at"], "yesterday", "turns[1].created_at"),
        (["turns", 0, "created_at"], _DELETE, "turns[0].created_at"),
        (["turns", 0, "id"], _DELETE, "turns[0].id"),
        (["turns", 0, "id"], True, "turns[0].id"),
        (["turns", 1, "id"], 0, "turns[1].id"),
        (["turns", 0, "messages"], _DELETE, "turns[0].messages"),
        (["turns", 0, "messages"], [], "turns[0].messages"),
        (["turns", 0, "messages", 0, "role"], {}, "turns[0].messages[0]"),
        (["turns", 0, "messages", 1, "content"], 7, "turns[0].messages[1]"),
        (["turns", 1, "messages", 0, "role"], "assistant", "turns[1].messages[0]"),
        (["turns", 0], "not a turn", "turns[0]"),
        (["turns"], {"0": 1}, "turns"),
        (["summaries", 0, "covers"], [0, 99], "summaries[0].covers"),
        (["summaries", 0, "covers"], "0", "summaries[0].covers"),
        (["summaries", 0, "text"], None, "summaries[0].text"),
        (["summaries", 0, "created_at"], math.inf, "summaries[0].created_at"),
        (["summaries", 0, "prompt_tokens"], -1, "summaries[0].prompt_tokens"),
        (["summaries", 0], [], "summaries[0]"),
        (["next_turn_id"], "9", "next_turn_id"),
        (["version"], 99, "version"),
        (["format"], "other", "format"),
        (["system"], {"role": "user", "content": "x"}, "system"),
        (["system"], 12, "system"),
        (["conversation_id"], 12, "conversation_id"),
        (["conversation_id"], "", "conversation_id"),
        (["model"], ["m"], "model"),
    ],
)
def test_from_json_names_the_bad_field(path: list[Any], value: Any, field: str) -> None:
    doc = _set(good_document(), path, value)
    server = FakeChatServer()
    for data in (doc, json.dumps(doc)):
        with pytest.raises(InvalidHistoryError) as info:
            Conversation.from_json(server.client(), data)
        assert info.value.field == field, str(info.value)
        assert field in str(info.value)
    assert server.requests == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"format": "convmem.history", "turns": [], "next_turn_id": NaN}', "next_turn_id"),
        ('{"format": "convmem.history", "turns": [{"id": Infinity}]}', r"turns\[0\]\.id"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("null", "expected a convmem history"),
        ("42", "expected a convmem history"),
        ('"text"', "expected a convmem history"),
    ],
)
def test_from_json_refuses_non_histories(text: str, needle: str) -> None:
    with pytest.raises(InvalidHistoryError, match=needle):
        Conversation.from_json(FakeChatServer().client(), text, model="m", context_window=100)
    with pytest.raises(InvalidHistoryError, match=needle):
        History.from_json(text)


def test_from_json_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(InvalidHistoryError, match="not UTF-8"):
        History.from_json(b'{"format": "convmem.history"}\xff')
    assert History.from_json(b'{"format": "convmem.history"}').turns == ()


def test_from_json_plain_message_list_errors_name_the_index() -> None:
    with pytest.raises(InvalidHistoryError) as info:
        History.from_dict([{"role": "system", "content": "s"}, {"role": "user"}])
    assert info.value.field == "[1]"


def test_from_json_conversation_id_is_pinned_or_refused() -> None:
    doc = good_document()
    server = FakeChatServer()
    same = Conversation.from_json(server.client(), doc, conversation_id="conv-a")
    assert same.conversation_id == "conv-a"
    with pytest.raises(InvalidHistoryError, match="belongs to conversation 'conv-a'") as info:
        Conversation.from_json(server.client(), doc, conversation_id="conv-b")
    assert info.value.field == "conversation_id"
    del doc["conversation_id"]
    pinned = Conversation.from_json(server.client(), doc, conversation_id="conv-b")
    assert pinned.conversation_id == "conv-b"
    trusted = Conversation.from_json(server.client(), good_document())
    assert trusted.conversation_id == "conv-a"
    with pytest.raises(UsageError, match="conversation_id must be"):
        Conversation.from_json(server.client(), doc, conversation_id=5)
    # A saved id no convmem could have written is refused, not repaired into another id
    # (hypothesis found a lone surrogate turned into U+FFFD, and '\x1f' accepted).
    for bad in ("\ud800", "a\udfffb", "\x1f", "x" * 257):
        with pytest.raises(InvalidHistoryError) as refused:
            Conversation.from_json(server.client(), {**good_document(), "conversation_id": bad})
        assert refused.value.field == "conversation_id"


def test_from_json_round_trips_a_valid_document_exactly() -> None:
    doc = good_document()
    conv = Conversation.from_json(FakeChatServer().client(), json.dumps(doc))
    assert json.loads(conv.to_json()) == doc


# -- point 8: secrets never reach notes, warnings or JSON -----------------------------------------


def test_summariser_error_echoing_the_key_is_redacted_everywhere() -> None:
    key = "my-local-server-key-0123"  # no known shape: caught because it is the client's key
    server = FakeChatServer()

    def reply(body: dict[str, Any]) -> Any:
        if "keep the memory" in body["messages"][0]["content"]:
            return httpx2.Response(
                401,
                json={
                    "error": {
                        "message": f"Incorrect API key provided: {key}. sk-proj-ABCDEFGH12345678",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
        return "ok " * 10

    server.respond_with(reply, times=200)
    conv = Conversation(
        server.client(api_key=key),
        model="m",
        context_window=1000,
        reply_reserve=100,
        strategy=RollingSummary(trigger=0.5),
    )
    failed = None
    for i in range(40):
        conv.send(f"message {i} " + "blah " * 20)
        plan = conv.last_plan
        assert plan is not None
        if plan.summary_calls and not plan.summary_calls[0].ok:
            failed = plan
            break
    assert failed is not None, "the summariser was never called"
    written = failed.to_json() + "\n".join(failed.notes) + str(failed) + conv.to_json()
    assert "invalid_api_key" in written or "AuthenticationError" in written
    assert key not in written
    assert "sk-proj-ABCDEFGH" not in written


class _FailingObserver(Truncate):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def observe(self, conversation_id: str, turns: Sequence[Turn]) -> list[LocalJob]:
        def fail() -> None:
            raise RuntimeError(self.message)

        return [LocalJob("store", fail)]


def test_background_warning_is_redacted() -> None:
    key = "another-weird-key-9876"
    server = FakeChatServer().reply("ok")
    conv = Conversation(
        server.client(api_key=key),
        model="gpt-4o-mini",
        strategy=_FailingObserver(f"denied for {key} (Authorization: Bearer {key})"),
    )
    with pytest.warns(RuntimeWarning) as record:
        conv.send("hi")
        conv.drain()
    text = " ".join(str(w.message) for w in record)
    assert "denied for [REDACTED]" in text
    assert key not in text


# -- point 12: input validation before the network ------------------------------------------------


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": {}, "content": "x"}, r"(unknown|got) role \{\}"),
        ({"role": ["user"], "content": "x"}, r"(unknown|got) role \['user'\]"),
        ({"role": "user", "content": "x", "foo": 1}, "unknown key 'foo'"),
        ({"role": "user", "contnet": "x"}, "unknown key 'contnet'"),
        ({"role": "user", "content": "x", "name": "John Doe"}, "no spaces"),
        ({"role": "user", "content": "x", "name": "x" * 65}, "1-64"),
        ({"role": "user", "content": "x", "name": 5}, "'name' must be"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "foo.png"}}]},
            "http",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
            },
            "http",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://a b/c.png"}}],
            },
            "whitespace",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}],
            },
            "data URL must look like",
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}
                ],
            },
            "not valid base64",
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:text/html;base64,PGI+"}}
                ],
            },
            "image data URL of type 'text/html'",
        ),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "data"),
        (
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}],
            },
            "input_audio",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg=="}}],
            },
            "format",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {}}]}, "file_id"),
        ({"role": "user", "content": b"bytes"}, "not bytes"),
        ({"role": "user", "content": {"text": "x"}}, "string or a list"),
        ({"role": "user", "content": [{"type": "text", "text": object()}]}, "JSON values"),
    ],
)
def test_bad_user_messages_fail_before_the_network(message: Any, needle: str) -> None:
    server = FakeChatServer().reply("never")
    conv = conv_with(server)
    with pytest.raises(InvalidMessageError, match=needle):
        conv.send(message)
    with pytest.raises(InvalidMessageError, match=needle):
        conv.extend([message])
    assert server.requests == []
    assert conv.messages == []


def test_valid_image_and_audio_parts_pass() -> None:
    server = FakeChatServer().reply("ok")
    conv = conv_with(server)
    conv.send(
        [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": PNG_1PX, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ]
    )
    assert len(server.last_request["messages"][0]["content"]) == 4


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        (None, "expected a list of message dicts, got NoneType"),
        ({"role": "user", "content": "x"}, "wrap a single message in a list"),
        ("hello", "got str"),
        (5, "got int"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": {"temp": 20}},
            ],
            "json.dumps",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": 42},
            ],
            "string content",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "image_url", "image_url": {"url": PNG_1PX}}],
                },
            ],
            "tool content parts must be text",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "function", "name": "f", "content": "1"}],
            "orphan",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "function_call": {"name": "g", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "1"},
            ],
            "orphan",
        ),
        ([{"role": "function", "content": "1"}], "needs the 'name'"),
        (
            [{"role": "assistant", "content": None, "function_call": {"arguments": "{}"}}],
            "function_call needs",
        ),
    ],
)
def test_bad_extend_arguments_are_usage_errors(messages: Any, needle: str) -> None:
    conv = conv_with(FakeChatServer())
    with pytest.raises(InvalidMessageError, match=needle):
        conv.extend(messages)
    assert conv.messages == []


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    deep: Any = "x"
    for _ in range(50_000):
        deep = [deep]
    conv = conv_with(FakeChatServer())
    with pytest.raises(InvalidMessageError, match="nested more than"):
        conv.send({"role": "user", "content": [{"type": "text", "text": "a", "extra": deep}]})
    loop: dict[str, Any] = {"role": "user", "content": "x"}
    loop["self"] = loop
    with pytest.raises(InvalidMessageError):
        conv.extend([loop])


def test_legacy_function_messages_are_converted_to_tool_calls() -> None:
    server = FakeChatServer().reply("it is 21 degrees")
    conv = conv_with(server)
    conv.extend(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "weather", "arguments": '{"city": "Rome"}'},
            },
            {"role": "function", "name": "weather", "content": "21C"},
        ]
    )
    conv.send()
    sent = server.last_request["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    call = sent[1]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Rome"}'}
    assert call["id"].startswith("call_legacy_")
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "21C"}
    assert "function_call" not in sent[1]


def test_send_arguments_are_checked_before_the_network() -> None:
    server = FakeChatServer().reply("never")
    conv = conv_with(server)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_tokens": True}, "max_tokens must be a positive int, got True"),
        ({"max_tokens": 0}, "max_tokens must be a positive int"),
        ({"max_completion_tokens": "100"}, "max_completion_tokens must be a positive int"),
        ({"n": True}, "n must be a positive int"),
        ({"max_tool_rounds": "8"}, "max_tool_rounds must be an int >= 0"),
        ({"max_tool_rounds": -1}, "max_tool_rounds must be an int >= 0"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(UsageError, match=needle):
            conv.send("hi", **kwargs)
    assert server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_tool_rounds": "8"}, "max_tool_rounds must be an int >= 0, got '8'"),
        ({"max_tool_rounds": 2.5}, "max_tool_rounds must be"),
        ({"max_tool_rounds": True}, "max_tool_rounds must be"),
        ({"conversation_id": 42}, "conversation_id must be a string"),
        ({"conversation_id": ""}, "conversation_id must be a string"),
        ({"conversation_id": "a\nb"}, "conversation_id must be a string"),
        ({"system": 5}, "system= must be a string"),
        ({"system": {"role": "user", "content": "x"}}, "system/developer"),
    ],
)
def test_conversation_arguments_are_checked_at_construction(
    kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(UsageError, match=needle):
        conv_with(FakeChatServer(), **kwargs)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: RollingSummary(timeout=-1), r"RollingSummary\(timeout=...\) must be"),
        (lambda: RollingSummary(timeout=math.nan), r"timeout=...\) must be"),
        (lambda: RollingSummary(trigger=math.nan), r"trigger=...\) must be"),
        (lambda: RollingSummary(trigger="0.7"), r"trigger=...\) must be"),  # type: ignore[arg-type]
        (lambda: RollingSummary(max_summary_tokens=True), "max_summary_tokens"),
        (lambda: RollingSummary(summarizer_window=0), "summarizer_window"),
        (lambda: RollingSummary(model=""), r"model=...\) must be"),
        (lambda: RollingSummary(should_summarize="yes"), "callable"),  # type: ignore[arg-type]
        (lambda: RollingSummary(prompt=" "), "prompt"),
        (lambda: VectorRecall(min_score=math.nan), r"min_score=...\) must be"),
        (lambda: VectorRecall(min_score=2), r"min_score=...\) must be"),
        (lambda: VectorRecall(collection="my collection"), "Chroma collection name"),
        (lambda: VectorRecall(collection="ab"), "Chroma collection name"),
        (lambda: VectorRecall(collection="10.0.0.1"), "Chroma collection name"),
        (lambda: VectorRecall(collection="-abc"), "Chroma collection name"),
    ],
)
def test_strategy_arguments_are_checked_at_construction(make: Any, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        make()


# -- point 13: the history cannot be edited in place ---------------------------------------------


def test_history_cannot_be_edited_through_turns_or_system() -> None:
    server = FakeChatServer().reply("ok").reply("ok")
    conv = conv_with(server, system="be brief")
    conv.send([{"type": "text", "text": "hi"}])
    before = saved(conv)
    tokens = conv.turns[0].tokens(conv.counter)
    msg = conv.turns[0].messages[0]
    with pytest.raises(ReadOnlyError, match="append-only"):
        msg["content"] = "tampered"
    with pytest.raises(ReadOnlyError):
        msg["content"].append({"type": "text", "text": "more"})
    with pytest.raises(ReadOnlyError):
        msg["content"][0]["text"] = "tampered"
    with pytest.raises(ReadOnlyError):
        msg.update(role="system")
    with pytest.raises(ReadOnlyError):
        del msg["role"]
    assert conv.system is not None
    with pytest.raises(ReadOnlyError):
        conv.system["content"] = "be verbose"
    with pytest.raises(TypeError):  # ReadOnlyError is a TypeError too
        conv.turns[0].messages[1].pop("content")
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv.turns[0].messages = ()  # type: ignore[misc]
    assert saved(conv) == before
    assert conv.turns[0].tokens(conv.counter) == tokens
    conv.send("next")
    assert server.last_request["messages"][0] == {"role": "system", "content": "be brief"}
    assert server.last_request["messages"][1]["content"] == [{"type": "text", "text": "hi"}]


def test_copies_of_history_messages_are_plain_and_editable() -> None:
    conv = conv_with(FakeChatServer())
    conv.extend([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    frozen = conv.turns[0].messages[0]
    for copied in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen)), conv.messages[0]):
        assert type(copied) is dict and type(copied["content"]) is list
        copied["content"].append({"type": "text", "text": "x"})
    shallow = copy.copy(frozen)
    shallow["content"] = "replaced"  # a plain top level
    assert frozen == {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    assert json.loads(json.dumps(frozen)) == frozen


def test_extend_copies_the_callers_objects() -> None:
    conv = conv_with(FakeChatServer())
    parts = [{"type": "text", "text": "hi"}]
    msg = {"role": "user", "content": parts}
    conv.extend([msg])
    parts[0]["text"] = "changed"
    msg["content"] = "changed"
    assert conv.messages[0]["content"] == [{"type": "text", "text": "hi"}]


# -- point 15: caches keyed by object, job results keyed per job ---------------------------------


class _FixedCounter:
    """Counts every message as ``per`` tokens."""

    name = "fixed"
    reply_priming = 3

    def __init__(self, per: int) -> None:
        self.per = per

    def count_text(self, text: str) -> int:
        return self.per

    def count_message(self, message: Mapping[str, Any]) -> int:
        return self.per

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        return 0


def test_token_cache_never_serves_a_new_counter_the_old_counts() -> None:
    h = History("sys")
    h.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    turn = h.turns[0]
    for i in range(200):
        # A new counter often lands at the address just freed; with id() keys it inherited
        # the old counts (107 tokens instead of 208 in the report).
        counter = _FixedCounter(per=i + 1)
        assert turn.tokens(counter) == 2 * (i + 1)
        assert turn.message_tokens(counter) == (i + 1, i + 1)
        assert h.system_tokens(counter) == i + 1
        del counter


def test_two_vector_recalls_in_one_pipeline_keep_their_own_results() -> None:
    a, b = VectorRecall(k=2), VectorRecall(k=2, collection="other_turns")
    h = History()
    h.append([{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "x"}])
    request = ContextRequest(
        history=h,
        pending=[{"role": "user", "content": "now"}],
        budget=Budget(4000, 500),
        counter=_FixedCounter(5),
        conversation_id="c",
        model="m",
    )
    jobs = Pipeline(a, b, Truncate()).prepare(request)
    keys = [j.key for j in jobs]
    assert len(keys) == 2 and len(set(keys)) == 2
    assert keys == [a.job_key, b.job_key]
    stores = Pipeline(a, b).observe("c", h.turns)
    assert len({j.key for j in stores}) == 2


def test_tool_error_echoing_a_key_is_redacted_before_the_model_sees_it() -> None:
    key = "tool-backend-secret-5555"

    def lookup(city: str) -> str:
        """Looks a city up.

        Args:
            city: The city.
        """
        raise PermissionError(f"backend refused key {key} (Bearer {key})")

    server = FakeChatServer().reply(
        None, tool_calls=[{"name": "lookup", "arguments": '{"city": "Rome"}'}]
    )
    server.reply("sorry")
    conv = Conversation(server.client(api_key=key), model="gpt-4o-mini")
    conv.send("weather?", tools=[lookup])
    tool_msg = conv.messages[2]
    assert tool_msg["role"] == "tool"
    assert "PermissionError" in tool_msg["content"] and REDACTED in tool_msg["content"]
    assert key not in conv.to_json()
    assert key not in json.dumps(server.requests)


def test_reply_with_lone_surrogate_in_a_tool_round_is_repaired_before_the_next_request() -> None:
    def f(x: str) -> str:
        """Echo.

        Args:
            x: Anything.
        """
        return x

    server = FakeChatServer().reply(
        "thinking \udc80", tool_calls=[{"name": "f", "arguments": '{"x": "\\udc80"}'}]
    )
    server.reply("done")
    conv = conv_with(server)
    conv.send("go", tools=[f])
    second = json.dumps(server.requests[1], ensure_ascii=False)
    second.encode("utf-8")  # no lone surrogate reached the wire
    assert "thinking \ufffd" in second
    saved(conv)


def test_summary_with_lone_surrogate_is_repaired() -> None:
    from convmem import Summary

    h = History()
    h.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    h.add_summary(Summary(text="facts \ud800", covers=(0,)))
    assert h.summaries[0].text == "facts \ufffd"
    h.to_json().encode("utf-8")


@pytest.mark.parametrize("when", [math.nan, math.inf, 1e300, -1.0, True, "now"])
def test_append_refuses_absurd_created_at(when: Any) -> None:
    h = History()
    with pytest.raises(UsageError, match="created_at must be a Unix time"):
        h.append([{"role": "user", "content": "a"}], created_at=when)
    assert h.turns == ()


def test_async_conversation_validates_the_same_way() -> None:
    import asyncio

    from convmem import AsyncConversation

    async def main() -> None:
        server = FakeChatServer().reply("odd \ud800")
        conv = AsyncConversation(server.async_client(), model="gpt-4o-mini", conversation_id="a")
        with pytest.raises(InvalidMessageError, match="expected a list of message dicts"):
            await conv.extend(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidMessageError, match="unknown role"):
            await conv.extend([{"role": {}, "content": "x"}])
        await conv.send("hi")
        assert conv.messages[-1]["content"] == "odd \ufffd"
        with pytest.raises(ReadOnlyError):
            conv.turns[0].messages[0]["content"] = "x"
        data = conv.to_json()
        data.encode("utf-8")
        with pytest.raises(InvalidHistoryError, match="belongs to conversation 'a'"):
            await AsyncConversation.from_json(server.async_client(), data, conversation_id="b")
        again = await AsyncConversation.from_json(server.async_client(), data, conversation_id="a")
        assert again.messages == conv.messages
        with pytest.raises(UsageError, match="max_tool_rounds"):
            AsyncConversation(server.async_client(), model="gpt-4o-mini", max_tool_rounds="8")

    asyncio.run(main())


def test_cookbook_tool_message_with_name_is_accepted() -> None:
    h = History()
    h.append(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "1"},
        ]
    )
    with pytest.raises(InvalidMessageError, match="only assistant messages have refusal"):
        h.append([{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}])


def test_placeholder_keys_are_not_redacted_from_ordinary_words() -> None:
    remember_secret("test")
    remember_secret("ollama")
    assert redact("the test against ollama failed") == "the test against ollama failed"
