"""Counting for models whose tokenizer is not OpenAI's: CJK text priced per character.

tiktoken counts OpenAI's tokens exactly, and other tokenizers' Latin text within a steady
ratio that :class:`~convmem.tokens.calibration.UsageCalibrator` learns. CJK text is where
tokenizers differ most, and in both directions: Qwen's vocabulary packs 1.5-1.8 characters
into a token, SmolLM2's English-centred one spends 1.7 tokens per character,
while ``cl100k_base`` spends about one. A single ratio cannot serve a conversation that mixes
an English system prompt with Chinese turns, so :class:`FamilyCounter` prices CJK characters
apart, at the family's rate, and counts the rest with tiktoken.

The rate comes, best first, from the server's own tokenizer (measured by
:func:`convmem.providers.discover`), else from :data:`CJK_TOKENS_PER_CHAR` for the model's
family; OpenAI models and unknown families keep plain tiktoken.
"""

from __future__ import annotations

import math
import re

from .encodings import TiktokenCounter, _resolve_encoding

# CJK ideographs (and extension A, compatibility), kana, hangul, CJK punctuation and the
# full-width forms: the characters byte-level vocabularies price so differently.
_CJK = re.compile(
    r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+"
)

CJK_TOKENS_PER_CHAR: dict[str, float] = {
    # Alibaba Cloud's billing notes: one Qwen token is 1.5-1.8 Chinese characters on average;
    # the low end (more tokens) is taken.
    "qwen": 1 / 1.5,
    "qwq": 1 / 1.5,
    # DeepSeek's API docs: one Chinese character is about 0.6 token.
    "deepseek": 0.6,
    # Measured on the local llama.cpp server (SmolLM2-135M-Instruct GGUF) with
    # convmem.providers.CJK_PROBE: 120 tokens for 70 characters.
    "smollm2": 1.71,
}
"""Tokens per CJK character by model family (a name prefix), where known."""


def cjk_chars(text: str) -> int:
    """How many CJK characters ``text`` holds."""
    return sum(len(run) for run in _CJK.findall(text))


def tiktoken_latin_count(text: str) -> int:
    """cl100k tokens of ``text`` with its CJK runs left out (what :class:`FamilyCounter`
    counts with tiktoken)."""
    enc = _resolve_encoding("cl100k_base")
    stripped = _CJK.sub(" ", text)
    if enc is None:
        from .counting import heuristic_count

        return heuristic_count(stripped)
    return len(enc.encode_ordinary(stripped))


def family_cjk_rate(model: str | None) -> float | None:
    """The default tokens per CJK character for ``model``'s family, or None (plain tiktoken)."""
    if not model:
        return None
    name = model.strip().lower().rsplit("/", 1)[-1]
    for family in sorted(CJK_TOKENS_PER_CHAR, key=len, reverse=True):
        if name.startswith(family):
            return CJK_TOKENS_PER_CHAR[family]
    return None


class FamilyCounter(TiktokenCounter):
    """tiktoken for Latin text and code, a per-character rate for CJK text.

    ``count_text`` is ``ceil(latin_ratio * tiktoken(text without CJK) + cjk_per_char * CJK
    characters)``; the message and tool rules are those of every counter. Counts are cached
    per counter, so a new rate means a new counter (caches keyed on the old one stay valid).

    Args:
        model: The model (for its tiktoken encoding).
        cjk_per_char: Tokens per CJK character.
        latin_ratio: Multiplier on tiktoken's count of the rest.
        source: Where the rates came from, shown in :attr:`name` (``"family"``,
            ``"server"``).
    """

    def __init__(
        self,
        model: str | None,
        *,
        cjk_per_char: float,
        latin_ratio: float = 1.0,
        source: str = "family",
    ) -> None:
        super().__init__(model)
        self.cjk_per_char = float(cjk_per_char)
        self.latin_ratio = float(latin_ratio)
        base = self._encode_len
        latin, cjk = self.latin_ratio, self.cjk_per_char

        def encode_len(text: str) -> int:
            if text.isascii():
                n = base(text)
                return n if latin == 1.0 else math.ceil(n * latin)
            chars = 0
            for run in _CJK.findall(text):
                chars += len(run)
            if not chars:
                return math.ceil(base(text) * latin)
            rest = _CJK.sub(" ", text)
            return (
                math.ceil(base(rest) * latin + chars * cjk)
                if rest.strip()
                else (math.ceil(chars * cjk))
            )

        self._encode_len = encode_len
        self.name = (
            f"{self.name}+cjk{self.cjk_per_char:.2f}"
            + (f"*{self.latin_ratio:.2f}" if self.latin_ratio != 1.0 else "")
            + f"({source})"
        )

    def __repr__(self) -> str:
        return (
            f"FamilyCounter(model={self.model!r}, cjk_per_char={self.cjk_per_char:.3f}, "
            f"latin_ratio={self.latin_ratio:.3f})"
        )


__all__ = ["CJK_TOKENS_PER_CHAR", "FamilyCounter", "cjk_chars", "family_cjk_rate"]
