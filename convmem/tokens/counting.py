"""The counting rules: how a message, a tool list and a reply are billed, over any text counter.

A :class:`TokenCounter` counts one message at a time (so a history can cache each count and
never re-tokenise what did not change), tool schemas once per request, and the reply
priming the API adds once per request. The rules follow OpenAI's cookbook notebook "How to
count tokens with tiktoken" (openai-cookbook ``examples/How_to_count_tokens_with_tiktoken``),
whose formulas it reports as matching ``usage.prompt_tokens`` exactly for plain messages
and for its tool example; images and audio follow :mod:`convmem.tokens.media`. The text
counter underneath is a tiktoken encoding (:mod:`convmem.tokens.encodings`) or the
tokenizer-free :func:`heuristic_count`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from .media import (
    DEFAULT_IMAGE_TOKENS,
    IMAGE_LOW_TOKENS,
    _image_size_from_url,
    audio_tokens,
    image_tokens,
)

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

# Cookbook constants for tool schemas: (func_init, prop_init, prop_key, enum_init, enum_item,
# func_end). gpt-3.5-turbo and gpt-4 (cl100k_base) start each function with 10 tokens,
# gpt-4o and later with 7.
_ToolConstants = tuple[int, int, int, int, int, int]
_TOOLS_CL100K: _ToolConstants = (10, 3, 3, -3, 3, 12)
_TOOLS_O200K: _ToolConstants = (7, 3, 3, -3, 3, 12)

_SHORT_STRING = 64
_SHORT_CACHE_LIMIT = 4096
# Long texts that recur between calls (a summary, a recalled window, a tool result) are
# remembered too: a lookup hashes the string once, far cheaper than encoding it again. Bounded
# by total characters so a long conversation cannot grow it without end.
_LONG_CACHE_CHARS = 4_000_000


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
        self._long: dict[str, int] = {}
        self._long_chars = 0

    def _count_long(self, text: str) -> int:
        cached = self._long.get(text)
        if cached is None:
            cached = self._encode_len(text)
            if len(text) <= _LONG_CACHE_CHARS // 8:
                if self._long_chars + len(text) > _LONG_CACHE_CHARS:
                    self._long = {}
                    self._long_chars = 0
                self._long[text] = cached
                self._long_chars += len(text)
        return cached

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
        return self._count_long(text)

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
        - ``reasoning_content`` (or ``reasoning``) and ``refusal`` count as text when
          present: the message is counted as it will be sent, so strip what is not sent
          before counting.
        - ``audio`` (a reference to an earlier audio reply) is not counted: its length is
          not known here. Other keys are not rendered by the API and are not counted.

        Args:
            message: One chat message, in the wire format.

        Returns:
            The token count.
        """

        def text(value: Any) -> int:
            if not isinstance(value, str) or not value:
                return 0
            if len(value) <= _SHORT_STRING:
                return self.count_text(value)
            return self._count_long(value)

        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key in ("role", "reasoning_content", "reasoning", "refusal"):
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


__all__ = [
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "TOKENS_PER_TOOL_CALL_ID",
    "ConvmemTokenWarning",
    "HeuristicCounter",
    "TokenCounter",
    "heuristic_count",
]
