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
        notes=[f"summariser failed ({OPENAI_401})"],
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
