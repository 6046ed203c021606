"""Counting prompt tokens the way the chat-completions API bills them, and learning the rest.

One concept per module:

- :mod:`~convmem.tokens.counting`: the :class:`TokenCounter` protocol and the billing rules
  (per-message overhead, names, tool calls, tool schemas, reply priming), over any text
  counter; :func:`heuristic_count` when there is no tokenizer.
- :mod:`~convmem.tokens.media`: images (OpenAI's tile rule, sizes read from headers) and audio.
- :mod:`~convmem.tokens.encodings`: tiktoken encodings, loaded once and offline, with their
  fallbacks; :class:`TiktokenCounter` and :func:`default_counter`.
- :mod:`~convmem.tokens.families`: per-family defaults for non-OpenAI tokenizers (CJK text
  above all), which tiktoken under-counts.
- :mod:`~convmem.tokens.calibration`: :class:`UsageCalibrator`, which learns from the server
  (its usage, its tokenize endpoint, its overflow errors) how far the estimates are.
"""

from __future__ import annotations

from .calibration import UsageCalibrator
from .counting import (
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_TOOL_CALL,
    TOKENS_PER_TOOL_CALL_ID,
    ConvmemTokenWarning,
    HeuristicCounter,
    TokenCounter,
    heuristic_count,
)
from .encodings import (
    ENCODING_LOAD_TIMEOUT,
    OFFLINE_ENCODING,
    TiktokenCounter,
    default_counter,
    encoding_name_for_model,
)
from .families import FamilyCounter
from .media import (
    AUDIO_ASSUMED_BYTES_PER_SECOND,
    AUDIO_TOKENS_PER_SECOND,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_IMAGE_TOKENS,
    IMAGE_BASE_TOKENS,
    IMAGE_LOW_TOKENS,
    IMAGE_TILE_TOKENS,
    audio_tokens,
    image_size,
    image_tokens,
)

__all__ = [
    "AUDIO_ASSUMED_BYTES_PER_SECOND",
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_IMAGE_TOKENS",
    "ENCODING_LOAD_TIMEOUT",
    "IMAGE_BASE_TOKENS",
    "IMAGE_LOW_TOKENS",
    "IMAGE_TILE_TOKENS",
    "OFFLINE_ENCODING",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "TOKENS_PER_TOOL_CALL",
    "TOKENS_PER_TOOL_CALL_ID",
    "ConvmemTokenWarning",
    "FamilyCounter",
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
