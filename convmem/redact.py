"""Redaction of secrets from text convmem writes (plan notes, warnings, saved JSON).

Provider error messages are copied into ``plan.notes`` and warnings so a user can see why a
summariser or recall job failed, and some providers echo the credential back ("Incorrect API key
provided: sk-proj-..."). :func:`redact` removes what looks like a credential before the text is
kept anywhere:

- the exact secrets it is given, and every secret remembered with :func:`remember_client` /
  :func:`remember_secret` (each conversation remembers its client's ``api_key``, and the
  summariser's client when it has its own, so a key of any shape is caught);
- ``Bearer <token>`` / ``Authorization: <token>`` values;
- OpenAI-style keys (``sk-...``, ``sk-proj-...``, ``sess-...``) and other provider key shapes
  (``AIza...`` Google keys, ``ghp_``/``gho_``/``github_pat_`` tokens, ``xox.-`` Slack tokens,
  ``hf_`` Hugging Face tokens, ``AKIA...`` AWS key ids);
- ``api_key=...`` / ``"api-key": "..."``-style assignments.

Each is replaced with ``[REDACTED]``. The shapes are deliberately broad: a false positive costs a
few characters of an error message, a false negative leaks a credential into a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

#: Shorter exact secrets are ignored: placeholders such as ``"test"``, ``"EMPTY"`` or
#: ``"ollama"`` (what local servers take) are not credentials, and removing them everywhere
#: would shred ordinary words in error messages.
MIN_SECRET_LENGTH = 8

# Secrets seen in this process (clients' api keys), newest last. They are in process memory
# anyway (on the clients); kept here so text written anywhere can be cleaned of them. Bounded.
_KNOWN: dict[str, None] = {}
_MAX_KNOWN = 256

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Authorization headers: "Bearer abc", "Authorization: Basic abc", "authorization=abc".
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{4,}"),
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:basic\s+|token\s+)?)[^\s\"',;}]{4,}"),
    # key=value / "key": "value" for api keys, tokens, secrets and passwords.
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token|auth[_-]?token|secret|password|passwd)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]{4,}"
    ),
    # Provider key shapes.
    re.compile(r"()\b(?:sk|rk|pk|sess)-[A-Za-z0-9_\-*.]{8,}"),
    re.compile(r"()\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"()\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"),
    re.compile(r"()\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"()\bxox[abprs]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"()\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"()\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Returns ``text`` with credentials replaced by ``[REDACTED]``.

    Args:
        text: Any text convmem is about to keep (an error message, a note, a warning).
        secrets: Exact strings to remove wherever they occur (e.g. the client's ``api_key``).
            Values shorter than :data:`MIN_SECRET_LENGTH`, and None, are ignored.

    Returns:
        The redacted text (the same object when nothing matched).
    """
    if not isinstance(text, str):
        text = str(text)
    for secret in (*secrets, *tuple(_KNOWN)):
        if isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def remember_secret(secret: str | None) -> None:
    """Adds a secret that :func:`redact` removes from then on (None and short values ignored)."""
    if isinstance(secret, str) and len(secret) >= MIN_SECRET_LENGTH:
        _KNOWN.pop(secret, None)
        _KNOWN[secret] = None
        while len(_KNOWN) > _MAX_KNOWN:
            del _KNOWN[next(iter(_KNOWN))]


def remember_client(client: Any) -> None:
    """Remembers an ``openai`` client's ``api_key`` for :func:`redact`."""
    for secret in client_secrets(client):
        remember_secret(secret)


def client_secrets(client: Any) -> list[str]:
    """The credentials an ``openai`` client carries (its ``api_key``), for :func:`redact`."""
    out: list[str] = []
    for attr in ("api_key", "_api_key"):
        value = getattr(client, attr, None)
        if isinstance(value, str) and value and value not in out:
            out.append(value)
    return out


def describe_error(error: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """``"TypeName: message"`` for an exception, redacted (what notes and warnings show)."""
    return redact(f"{type(error).__name__}: {error}", secrets)


__all__ = [
    "REDACTED",
    "client_secrets",
    "describe_error",
    "redact",
    "remember_client",
    "remember_secret",
]
