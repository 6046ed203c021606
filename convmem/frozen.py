"""Read-only views of what the history stores: dicts and lists that refuse changes.

The history is append-only, so the messages it hands out are :class:`FrozenDict` and
:class:`FrozenList` views (real ``dict`` and ``list`` objects for reading); :func:`freeze` makes
them and :func:`thaw` gives a plain, editable copy back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from .errors import ReadOnlyError

_READ_ONLY = (
    "the history is append-only: this is a read-only view (conv.messages or copy.deepcopy() "
    "give an editable copy; add messages with extend())"
)


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise ReadOnlyError(_READ_ONLY)


class FrozenDict(dict[str, Any]):
    """A message (or part of one) in the history: a ``dict`` that refuses changes.

    It is a real ``dict`` for reading (``isinstance``, ``json.dumps``, ``==`` all work);
    ``copy.copy``/``copy.deepcopy``/``pickle`` give plain, editable dicts.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return thaw(self)

    def __reduce__(self) -> Any:
        return (dict, (thaw(self),))


class FrozenList(list[Any]):
    """A list inside a history message (content parts, tool calls) that refuses changes."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return thaw(self)

    def __reduce__(self) -> Any:
        return (list, (thaw(self),))


def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-shaped value (what the history stores)."""
    kind = type(value)
    if kind is str or kind is FrozenDict or kind is FrozenList:
        return value
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList([freeze(v) for v in value])
    return value


def thaw(value: Any) -> Any:
    """A plain, editable deep copy of a (possibly frozen) JSON-shaped value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


__all__ = ["FrozenDict", "FrozenList", "freeze", "thaw"]
