"""Argument checks shared by constructors, so a bad argument fails at construction.

Each function returns the value unchanged (so it can wrap an assignment) or raises
:class:`~convmem.errors.UsageError` naming the argument, what it must be and what it got. A
``bool`` is never accepted where a number is expected (``True`` is an ``int`` to Python, not to
a user who meant a count), and NaN or infinity never passes as a number.

    self.timeout = optional(positive_number, "RollingSummary(timeout=...)", timeout)
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import UsageError

T = TypeVar("T")

__all__ = [
    "chroma_collection_name",
    "finite_number",
    "non_empty_str",
    "non_negative_int",
    "number_in_range",
    "optional",
    "positive_int",
    "positive_number",
    "text_id",
]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(name: str, expected: str, value: Any) -> UsageError:
    return UsageError(f"{name} must be {expected}, got {_shown(value)}")


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite ``int``/``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(name: str, value: Any) -> int:
    """An ``int`` >= 1 (not a bool, not a string of digits)."""
    if not is_int(value) or value < 1:
        raise _fail(name, "a positive int", value)
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """An ``int`` >= 0 (not a bool)."""
    if not is_int(value) or value < 0:
        raise _fail(name, "an int >= 0", value)
    return int(value)


def finite_number(name: str, value: Any) -> float:
    """A finite int or float (not a bool, not NaN or infinity)."""
    if not is_number(value):
        raise _fail(name, "a finite number", value)
    return float(value)


def positive_number(name: str, value: Any) -> float:
    """A finite number > 0 (a timeout, a rate)."""
    if not is_number(value) or value <= 0:
        raise _fail(name, "a finite number > 0", value)
    return float(value)


def number_in_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> float:
    """A finite number with ``low <= value <= high`` (``low < value`` when ``low_open``)."""
    ok = is_number(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise _fail(name, f"a number in {bracket}{low}, {high}]", value)
    return float(value)


def non_empty_str(name: str, value: Any) -> str:
    """A non-empty ``str``."""
    if not isinstance(value, str) or not value:
        raise _fail(name, "a non-empty string", value)
    return value


def text_id(name: str, value: Any) -> str:
    """An id string (a conversation id): 1-256 printable characters, valid UTF-8."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 256
        or not value.isprintable()
        or any("\ud800" <= c <= "\udfff" for c in value)
    ):
        raise _fail(name, "a string of 1-256 printable characters", value)
    return value


# Chroma's rule (chromadb/api/validation: validate_collection_name): 3-512 characters of
# [a-zA-Z0-9._-], starting and ending with a letter or digit, no '..', not an IPv4 address.
_CHROMA_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]{1,510})[a-zA-Z0-9]")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def chroma_collection_name(name: str, value: Any) -> str:
    """A name Chroma accepts for a collection, checked before any Chroma client exists."""
    if (
        not isinstance(value, str)
        or not _CHROMA_NAME.fullmatch(value)
        or ".." in value
        or _IPV4.fullmatch(value)
    ):
        raise _fail(
            name,
            "a Chroma collection name: 3-512 characters of letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit, no '..', not an IP address",
            value,
        )
    return value


def optional(check: Callable[[str, Any], T], name: str, value: Any) -> T | None:
    """``None``, or a value that passes ``check``."""
    return None if value is None else check(name, value)


def renamed_keywords(
    owner: str, deprecated: dict[str, Any], renamed: dict[str, str], given: dict[str, Any]
) -> dict[str, Any]:
    """Accepts keywords renamed in a release (``renamed``: old name -> new name).

    Each old name used warns (DeprecationWarning) and its value replaces the new name's in
    ``given``, which is returned. Any other keyword in ``deprecated`` is a TypeError, as Python
    raises for an unknown keyword.
    """
    unknown = sorted(set(deprecated) - set(renamed))
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword argument(s) {unknown}")
    out = dict(given)
    for old, new in renamed.items():
        if old in deprecated:
            warnings.warn(
                f"{owner}({old}=...) is now {new}=... (the old name is removed in the next "
                "release)",
                DeprecationWarning,
                stacklevel=3,
            )
            out[new] = deprecated[old]
    return out
