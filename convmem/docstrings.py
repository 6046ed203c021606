"""Google-style docstrings read for tool schemas: a description and one text per parameter.

:func:`parse_docstring` is what :func:`convmem.toolschema.function_schema` uses to describe a
function and its parameters to the model; it is also importable from :mod:`convmem.tools`.
"""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]


_ARG_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
)
_SECTIONS = _ARG_SECTIONS | {
    "attributes",
    "example",
    "examples",
    "exceptions",
    "methods",
    "note",
    "notes",
    "other parameters",
    "raises",
    "references",
    "return",
    "returns",
    "see also",
    "todo",
    "warning",
    "warnings",
    "warns",
    "yield",
    "yields",
}
_SECTION_RE = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _unwrap_paragraphs(lines: list[str]) -> str:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into a description and per-parameter descriptions.

    The description is everything before the first section header (``Args:``,
    ``Returns:``, ...), with hard-wrapped lines joined and paragraphs kept. Parameter
    descriptions come from the ``Args:`` section (also ``Arguments:``, ``Parameters:``,
    ``Params:``, ``Keyword Args:``); an entry is ``name: text`` or ``name (type): text``,
    and more-indented lines continue it.

    Args:
        doc: The docstring, or None.

    Returns:
        ``(description, {parameter name: description})``; empty when there is no docstring.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        header = _SECTION_RE.match(line) if indent == 0 else None
        if header and header.group(1).strip().lower() in _SECTIONS:
            section = header.group(1).strip().lower()
            entry_indent, current = None, None
            continue
        if section is None:
            description.append(line)
            continue
        if section not in _ARG_SECTIONS or not line.strip():
            continue
        if entry_indent is None:
            entry_indent = indent
        if indent <= entry_indent:
            match = _ARG_RE.match(line.strip())
            if match:
                current = match.group(1)
                params[current] = match.group(2).strip()
                continue
            current = None
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return _unwrap_paragraphs(description), params
