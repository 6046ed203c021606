"""What images and audio cost: OpenAI's tile rule, image and WAV headers read without a library.

Only the headers of ``data:`` URLs are decoded (a prefix of the base64), so counting a large
image stays cheap; sizes that cannot be read fall back to documented defaults.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import urllib.parse

from ..errors import UsageError

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

_HEADER_PREFIX_CHARS = 96 * 1024


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


__all__ = [
    "AUDIO_ASSUMED_BYTES_PER_SECOND",
    "AUDIO_TOKENS_PER_SECOND",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_IMAGE_TOKENS",
    "IMAGE_BASE_TOKENS",
    "IMAGE_LOW_TOKENS",
    "IMAGE_TILE_TOKENS",
    "audio_tokens",
    "image_size",
    "image_tokens",
]
