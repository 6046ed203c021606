"""The numbers a plan's picture is drawn from: the window split into parts, the turn strip's cells.

:mod:`convmem.display` draws them as HTML; they are plain data, so other views (a terminal, a
report) can draw them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import ContextPlan
    from .tokens import TokenCounter

_LABELS = {
    "system": "system",
    "tools": "tools",
    "summary": "summary",
    "recalled": "recalled",
    "recent": "recent turns",
    "new": "new message",
    "overhead": "overhead",
    "free": "unused",
    "reply": "room for the reply",
}
#: Up to this many history turns, the strip has one cell per turn; beyond it, one cell per run of
#: equal decisions, and when even the runs are too many, one cell per bucket of turns.
MAX_CELLS = 300


@dataclass(frozen=True)
class Segment:
    """One part of the window bar.

    Attributes:
        key: ``system``, ``tools``, ``summary``, ``recalled``, ``recent``, ``new`` (the new
            message), ``overhead`` (reply priming), ``free`` (budget not used), ``reply`` (room
            kept for the reply), or the name of a section this module does not know.
        label: The legend text.
        tokens: Tokens of the part (convmem's estimate, like the plan's sections).
        detail: Hover text.
    """

    key: str
    label: str
    tokens: int
    detail: str = ""


@dataclass(frozen=True)
class Cell:
    """One cell of the turn strip: a turn, a run of turns with one decision, or a bucket.

    Attributes:
        first: The first turn id in the cell.
        last: The last turn id in the cell.
        parts: ``(decision, turns)`` pairs, in order of first appearance.
        title: Hover text (decision, reason, score).
    """

    first: int
    last: int
    parts: tuple[tuple[str, int], ...]
    title: str

    @property
    def count(self) -> int:
        return sum(n for _, n in self.parts)


# -- numbers ---------------------------------------------------------------------------------


def new_message_tokens(plan: ContextPlan, counter: TokenCounter | None = None) -> int:
    """Tokens of the turn being made (the new user message and its tool rounds so far).

    The plan counts them inside its ``recent`` section; they are counted again here, with
    ``counter`` (the conversation's) or the default one, to split the section for display. The
    result never exceeds the section.
    """
    recent = plan.section("recent")
    if recent is None or new_turn_id(plan) is None:
        return 0  # e.g. the call continues the last committed turn: no new message
    start = None
    for i in range(len(recent.messages) - 1, -1, -1):
        if recent.messages[i].get("role") == "user":
            start = i
            break
    if start is None:
        return 0
    if counter is None:
        from .tokens import default_counter

        counter = default_counter("gpt-4o-mini")
    tokens = sum(counter.count_message(m) for m in recent.messages[start:])
    return min(tokens, recent.tokens)


def window_segments(plan: ContextPlan, counter: TokenCounter | None = None) -> list[Segment]:
    """The window split into its parts, in the order the bar draws them.

    Sections are counted with convmem's estimate; when the conversation has learnt a correction
    from the server's usage (``plan.corrected_tokens != plan.estimated_tokens``), they are
    scaled by it, so the sent parts add up to ``plan.corrected_tokens`` — the same unit as the
    window. With the unused budget and the room for the reply, the parts add up to
    ``plan.context_window`` (more, when the prompt is over budget).
    """
    sections = {s.name: s for s in plan.sections}
    # (key, label, tokens, (what, where)): the hover text is "what: N tokens, where"
    parts: list[tuple[str, str, int, tuple[str, str]]] = []

    def add(key: str, tokens: int, what: str, where: str = "", label: str | None = None) -> None:
        parts.append((key, label or _LABELS.get(key, key), tokens, (what, where)))

    if "system" in sections:
        add("system", sections["system"].tokens, "system prompt")
    if "tools" in sections:
        add("tools", sections["tools"].tokens, "tool schemas")
    if "summary" in sections:
        s = sections["summary"]
        covers = f", covers turns {_ranges(s.turn_ids)}" if s.turn_ids else ""
        add("summary", s.tokens, "summary", covers)
    # In the order the messages are sent: the recalled section goes after the recent turns,
    # next to the new message (the stable prefix first, for prompt caches).
    new = new_message_tokens(plan, counter)
    recent = sections.get("recent")
    if recent is not None:
        kept = recent.turn_ids[:-1] if new else recent.turn_ids
        ids = f", turns {_ranges(kept)}" if kept else ""
        add("recent", recent.tokens - new, "recent turns", ids)
    if "recalled" in sections:
        s = sections["recalled"]
        ids = f", turns {_ranges(s.turn_ids)}" if s.turn_ids else ""
        add("recalled", s.tokens, "recalled turns", ids)
    if recent is not None and new:
        add("new", new, "new message", f", turn {recent.turn_ids[-1]}")
    known = {"system", "tools", "summary", "recalled", "recent"}
    for sec in plan.sections:
        if sec.name not in known:
            add(sec.name, sec.tokens, sec.name, label=sec.name)
    overhead = plan.estimated_tokens - sum(p[2] for p in parts)
    if overhead > 0:
        add("overhead", overhead, "reply priming and message framing")
    sent = plan.estimated_tokens
    scale = ""
    if plan.corrected_tokens != plan.estimated_tokens and plan.estimated_tokens > 0:
        ratio = plan.corrected_tokens / plan.estimated_tokens
        scaled = _largest_remainder([p[2] * ratio for p in parts], plan.corrected_tokens)
        parts = [(k, lab, n, w) for (k, lab, _, w), n in zip(parts, scaled, strict=True)]
        sent = plan.corrected_tokens
        scale = f"; convmem's estimate ×{ratio:.3f}, the correction learnt from server usage"
    free = plan.context_window - plan.reply_reserve - sent
    if free > 0:
        add("free", free, "unused prompt budget")
    add("reply", plan.reply_reserve, "room kept for the reply")
    window = max(plan.context_window, 1)
    return [
        Segment(
            key,
            label,
            tokens,
            f"{what[0]}: {tokens:,} tokens{what[1]}"
            + f" ({tokens / window:.1%} of the window"
            + (scale if key not in ("free", "reply") else "")
            + ")",
        )
        for key, label, tokens, what in parts
    ]


def _largest_remainder(values: Sequence[float], total: int) -> list[int]:
    """Rounds non-negative values to ints that add up to ``total``."""
    ints = [int(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: values[i] - ints[i], reverse=True)
    for i in order[: max(0, total - sum(ints))]:
        ints[i] += 1
    return ints


def new_turn_id(plan: ContextPlan) -> int | None:
    """The id of the turn being made when the plan sends a new message (else None).

    The recent section ends with it; unlike the history's turns it has no decision.
    """
    recent = plan.section("recent")
    if recent is None or not recent.turn_ids:
        return None
    last = recent.turn_ids[-1]
    return last if last > _max_decided(plan) else None


def _max_decided(plan: ContextPlan) -> int:
    top = max((d.turn_id for d in plan.turn_decisions), default=-1)
    for span in plan.spans:
        ids = span.turn_ids
        if isinstance(ids, range):
            if len(ids):
                top = max(top, ids[-1] if ids.step > 0 else ids[0])
        elif ids:
            top = max(top, max(ids))
    return top


def _entries(plan: ContextPlan) -> list[tuple[int, str, str, float | None]]:
    """``(turn id, decision, reason, score)`` for every history turn, by id (spans expanded)."""
    out: dict[int, tuple[str, str, float | None]] = {}
    for span in plan.spans:
        for i in span.turn_ids:
            out[i] = (span.action, span.reason, None)
    for d in plan.turn_decisions:
        out[d.turn_id] = (d.action, d.reason, d.score)
    return [(i, *out[i]) for i in sorted(out)]


def _turn_title(i: int, action: str, reason: str, score: float | None) -> str:
    text = f"turn {i}: {action}"
    if score is not None:
        text += f", score {score:.3f}"
    return f"{text} ({reason})" if reason else text


def turn_cells(plan: ContextPlan, *, max_cells: int = MAX_CELLS) -> list[Cell]:
    """The cells of the turn strip for the plan's history (the new message not included)."""
    entries = _entries(plan)
    if len(entries) <= max_cells:
        return [Cell(i, i, ((a, 1),), _turn_title(i, a, r, s)) for i, a, r, s in entries]
    runs: list[list[tuple[int, str, str, float | None]]] = []
    for entry in entries:
        if runs and runs[-1][-1][1] == entry[1]:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    if len(runs) <= max_cells:
        return [_run_cell(run) for run in runs]
    size = -(-len(entries) // max_cells)
    return [_bucket_cell(entries[k : k + size]) for k in range(0, len(entries), size)]


def _run_cell(run: list[tuple[int, str, str, float | None]]) -> Cell:
    first, action = run[0][0], run[0][1]
    if len(run) == 1:
        _, a, r, s = run[0]
        return Cell(first, first, ((a, 1),), _turn_title(first, a, r, s))
    reasons = list(dict.fromkeys(r for _, _, r, _ in run if r))
    shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    title = f"turns {first}-{run[-1][0]}: {action} ({len(run):,} turns)"
    if shown:
        title += f" ({shown})"
    scored = [(i, s) for i, _, _, s in run if s is not None]
    if scored:
        title += "; scores " + ", ".join(f"turn {i}: {s:.3f}" for i, s in scored[:8])
    return Cell(first, run[-1][0], ((action, len(run)),), title)


def _bucket_cell(bucket: list[tuple[int, str, str, float | None]]) -> Cell:
    counts: dict[str, int] = {}
    for _, a, _, _ in bucket:
        counts[a] = counts.get(a, 0) + 1
    first, last = bucket[0][0], bucket[-1][0]
    title = f"turns {first}-{last}: " + ", ".join(f"{a} {n:,}" for a, n in counts.items())
    scored = [(i, a, s) for i, a, _, s in bucket if a in ("recalled",)]
    if scored:
        shown = ", ".join(
            f"turn {i}" + (f" ({s:.3f})" if s is not None else "") for i, _, s in scored[:8]
        )
        title += f"; recalled: {shown}" + (", ..." if len(scored) > 8 else "")
    return Cell(first, last, tuple(counts.items()), title)


def _ranges(ids: Sequence[int]) -> str:
    from .plan import _ranges as ranges

    return ranges(list(ids))


__all__ = [
    "MAX_CELLS",
    "Cell",
    "Segment",
    "new_message_tokens",
    "new_turn_id",
    "turn_cells",
    "window_segments",
]
