"""HTML views for notebooks: a plan as a bar of the window and a strip of the history's turns.

``ContextPlan._repr_html_`` and the conversations' ``_repr_html_`` delegate here, so Jupyter,
VS Code and GitHub's notebook viewer show a plan as a picture rather than as text. The HTML uses
inline styles only (no ``<style>`` block, no JavaScript, no external resources): each of those
viewers sanitises notebook output differently, and inline styles and ``title`` hover texts survive
all of them. Every piece of text that comes from a message, a reason or a note is escaped.

The functions are public so the same views can be written to a file (``plan_html(plan)``) or
rendered to a PNG (:mod:`convmem.snapshot`); :mod:`convmem.planview` computes the numbers
the pictures are drawn from.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .messages import text_of
from .planview import (
    MAX_CELLS,
    Cell,
    Segment,
    _ranges,
    new_message_tokens,
    new_turn_id,
    turn_cells,
    window_segments,
)

if TYPE_CHECKING:
    from .plan import ContextPlan
    from .tokens import TokenCounter

#: Bar colours by part of the window (sections, then the parts that are not sent).
SEGMENT_COLORS: dict[str, str] = {
    "system": "#64748b",
    "tools": "#8b5cf6",
    "summary": "#f59e0b",
    "recalled": "#3b82f6",
    "recent": "#22c55e",
    "new": "#0f766e",
    "overhead": "#94a3b8",
    "free": "#f1f5f9",
    "reply": "#cbd5e1",
}
#: Strip colours by decision (the same hues as the sections that carry the turns).
DECISION_COLORS: dict[str, str] = {
    "kept": "#22c55e",
    "recalled": "#3b82f6",
    "summarised": "#f59e0b",
    "dropped": "#cbd5e1",
    "new": "#0f766e",
}
_OTHER_COLOR = "#e11d48"  # a section or decision this module does not know: make it stand out
_DARK = {"system", "tools", "recalled", "new", "overhead"}
#: Messages listed under "messages sent" (the first few and the newest ones).
MAX_MESSAGES = 60
MAX_MESSAGE_CHARS = 600

_BOX = (
    "font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif;"
    "font-size:12px;line-height:1.45;color:#111827;background:#ffffff;"
    "border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px;max-width:960px;"
    "box-sizing:border-box"
)
_MUTED = "color:#6b7280"


# -- HTML -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _swatch(color: str) -> str:
    return (
        f'<span style="display:inline-block;width:10px;height:10px;background:{color};'
        'border:1px solid #9ca3af;border-radius:2px;vertical-align:-1px;margin-right:4px">'
        "</span>"
    )


def _bar(segments: Sequence[Segment], total: int) -> str:
    parts: list[str] = []
    for seg in segments:
        if seg.tokens <= 0:
            continue
        color = SEGMENT_COLORS.get(seg.key, _OTHER_COLOR)
        share = 100.0 * seg.tokens / max(total, 1)
        text_color = "#ffffff" if seg.key in _DARK or seg.key not in SEGMENT_COLORS else "#111827"
        label = (
            f"{seg.label} {seg.tokens:,}"
            if share >= 14
            else (f"{seg.tokens:,}" if share >= 6 else "")
        )
        parts.append(
            f'<div data-segment="{_e(seg.key)}" data-tokens="{seg.tokens}" '
            f'title="{_e(seg.detail)}" style="flex:0 1 {share:.4f}%;min-width:3px;'
            f"background:{color};color:{text_color};overflow:hidden;white-space:nowrap;"
            "text-overflow:clip;font-size:11px;line-height:26px;padding:0 4px;"
            f'box-sizing:border-box">{_e(label)}</div>'
        )
    return (
        '<div style="display:flex;width:100%;height:26px;border:1px solid #9ca3af;'
        'border-radius:3px;overflow:hidden;margin:6px 0 4px 0;background:#f8fafc">'
        + "".join(parts)
        + "</div>"
    )


def _legend(segments: Sequence[Segment], window: int) -> str:
    items: list[str] = []
    for seg in segments:
        color = SEGMENT_COLORS.get(seg.key, _OTHER_COLOR)
        items.append(
            f'<span data-segment="{_e(seg.key)}" data-tokens="{seg.tokens}" '
            f'title="{_e(seg.detail)}" style="margin-right:14px;white-space:nowrap">'
            f"{_swatch(color)}{_e(seg.label)} <b>{seg.tokens:,}</b> "
            f'<span style="{_MUTED}">{100.0 * seg.tokens / max(window, 1):.1f}%</span></span>'
        )
    total = sum(s.tokens for s in segments)
    items.append(
        f'<span data-total="{total}" style="white-space:nowrap">= window <b>{total:,}</b></span>'
    )
    return f'<div style="font-size:11.5px;margin:2px 0 8px 0">{"".join(items)}</div>'


def _strip(plan: ContextPlan, cells: Sequence[Cell], new_id: int | None) -> str:
    if not cells and new_id is None:
        return f'<div style="{_MUTED}">no earlier turns</div>'
    per_turn = all(c.count == 1 for c in cells)
    gap = "1px" if per_turn and len(cells) <= 80 else "0"
    parts: list[str] = []
    for c in cells:
        if len(c.parts) == 1:
            action = c.parts[0][0]
            color = DECISION_COLORS.get(action, _OTHER_COLOR)
            inner = ""
            style = f"background:{color}"
        else:
            color = ""
            inner = "".join(
                f'<div style="flex:{n} 1 0;background:{DECISION_COLORS.get(a, _OTHER_COLOR)}">'
                "</div>"
                for a, n in c.parts
            )
            style = "display:flex;flex-direction:column"
        actions = ",".join(a for a, _ in c.parts)
        parts.append(
            f'<div data-turns="{c.first}-{c.last}" data-count="{c.count}" '
            f'data-actions="{_e(actions)}" title="{_e(c.title)}" '
            f'style="flex:{c.count} 1 0;min-width:2px;{style}">{inner}</div>'
        )
    if new_id is not None:
        flex = 1 if per_turn else max(1, sum(c.count for c in cells) // 100)
        parts.append(
            f'<div data-turns="{new_id}-{new_id}" data-count="1" data-actions="new" '
            f'title="{_e(f"turn {new_id}: the new message (sent)")}" '
            f'style="flex:{flex} 1 0;min-width:4px;background:{DECISION_COLORS["new"]}"></div>'
        )
    first = cells[0].first if cells else new_id
    last = new_id if new_id is not None else cells[-1].last
    axis = (
        f'<div style="display:flex;justify-content:space-between;font-size:10px;{_MUTED}">'
        f"<span>turn {first}</span><span>turn {last}</span></div>"
    )
    return (
        f'<div style="display:flex;width:100%;height:16px;gap:{gap};margin:4px 0 1px 0;'
        'border:1px solid #d1d5db;background:#ffffff">' + "".join(parts) + "</div>" + axis
    )


def _strip_legend(plan: ContextPlan, cells: Sequence[Cell], new_id: int | None) -> str:
    counts: dict[str, int] = {}
    for c in cells:
        for a, n in c.parts:
            counts[a] = counts.get(a, 0) + n
    order = ["kept", "recalled", "summarised", "dropped"]
    order += [a for a in counts if a not in order]
    items = [
        f'<span data-decision="{_e(a)}" data-count="{counts.get(a, 0)}" '
        f'style="margin-right:12px">{_swatch(DECISION_COLORS.get(a, _OTHER_COLOR))}'
        f"{_e(a)} {counts.get(a, 0):,}</span>"
        for a in order
    ]
    if new_id is not None:
        items.append(
            f'<span data-decision="new" data-count="1">{_swatch(DECISION_COLORS["new"])}'
            "new message</span>"
        )
    return f'<div style="font-size:11px">{"".join(items)}</div>'


def _message_html(msg: Mapping[str, Any]) -> str:
    role = str(msg.get("role", "?"))
    text = text_of(msg)
    calls = msg.get("tool_calls") or ()
    for call in calls:
        fn = call.get("function", {}) if isinstance(call, Mapping) else {}
        text += f"\n→ {fn.get('name')}({fn.get('arguments', '')})"
    if not text and isinstance(msg.get("content"), list):
        text = f"[{len(msg['content'])} content parts]"
    extra = len(text) - MAX_MESSAGE_CHARS
    if extra > 0:
        text = text[:MAX_MESSAGE_CHARS] + f" … ({extra:,} more characters)"
    return (
        '<div style="margin:2px 0;padding:2px 6px;border-left:3px solid #d1d5db">'
        f'<span style="font-weight:600;{_MUTED}">{_e(role)}</span> '
        f'<span style="white-space:pre-wrap">{_e(text)}</span></div>'
    )


def _messages_html(messages: Sequence[Mapping[str, Any]]) -> str:
    n = len(messages)
    if n <= MAX_MESSAGES:
        body = "".join(_message_html(m) for m in messages)
    else:
        head = 5
        tail = MAX_MESSAGES - head
        body = (
            "".join(_message_html(m) for m in messages[:head])
            + f'<div style="{_MUTED};margin:4px 0">… {n - head - tail:,} more messages …</div>'
            + "".join(_message_html(m) for m in messages[n - tail :])
        )
    return (
        f'<details style="margin-top:6px"><summary style="cursor:pointer;{_MUTED}">'
        f"the {n:,} messages sent</summary>{body}</details>"
    )


def plan_html(plan: ContextPlan, counter: TokenCounter | None = None) -> str:
    """A plan as HTML: the window bar with its legend, the turn strip, summary calls and notes.

    Args:
        plan: The plan.
        counter: Counts the new message apart from the recent turns (the conversation's counter;
            the default counter when None).

    Returns:
        A self-contained ``<div>`` with inline styles and no script.
    """
    segments = window_segments(plan, counter)
    window = plan.context_window
    total = max(window, sum(s.tokens for s in segments))
    reported = (
        f"{plan.reported_prompt_tokens:,}" if plan.reported_prompt_tokens is not None else "—"
    )
    head = (
        f'<div style="font-weight:600;font-size:13px">ContextPlan · {_e(plan.strategy)}</div>'
        f'<div style="{_MUTED}">~{plan.corrected_tokens:,} of {plan.budget:,} prompt tokens '
        f"(window {window:,}, {plan.reply_reserve:,} kept for the reply) · raw estimate "
        f"{plan.estimated_tokens:,} · server reported {reported}</div>"
    )
    over = plan.estimated_tokens - (plan.context_window - plan.reply_reserve)
    warn = (
        f'<div style="color:#b91c1c">the estimate is {over:,} tokens over the prompt budget</div>'
        if over > 0
        else ""
    )
    cells = turn_cells(plan)
    new_id = new_turn_id(plan)
    n_turns = sum(c.count for c in cells)
    strip_head = (
        f'<div style="margin-top:4px;font-weight:600">History: {n_turns:,} turn'
        f"{'' if n_turns == 1 else 's'}"
        f'<span style="font-weight:400;{_MUTED}"> · hover a cell for the decision and why'
        "</span></div>"
    )
    calls = ""
    if plan.summary_calls:
        items = []
        for c in plan.summary_calls:
            status = "ok" if c.ok else f"FAILED ({c.error})"
            covers = f", covers turns {_ranges(c.covers)}" if c.covers else ""
            items.append(
                f"<li>summary call to {_e(c.model)}: {_e(status)}, {c.prompt_tokens:,} + "
                f"{c.completion_tokens:,} tokens{_e(covers)}, {c.seconds:.2f} s</li>"
            )
        calls = f'<ul style="margin:6px 0 0 0;padding-left:18px">{"".join(items)}</ul>'
    notes = ""
    if plan.notes:
        notes = (
            '<ul style="margin:4px 0 0 0;padding-left:18px;color:#92400e">'
            + "".join(f"<li>note: {_e(n)}</li>" for n in plan.notes)
            + "</ul>"
        )
    return (
        f'<div class="convmem-plan" style="{_BOX}">'
        + head
        + warn
        + _bar(segments, total)
        + _legend(segments, window)
        + strip_head
        + _strip(plan, cells, new_id)
        + _strip_legend(plan, cells, new_id)
        + calls
        + notes
        + _messages_html(plan.messages)
        + "</div>"
    )


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _cost(conv: Any) -> float | None:
    """The conversation's cost so far (``usage.cost``; None when a model has no price)."""
    for owner in (conv, getattr(conv, "usage", None)):
        value = getattr(owner, "cost", None)
        if callable(value):
            value = value()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def conversation_html(conv: Any) -> str:
    """A conversation as HTML: who it talks to, how far it got, what it cost, its last plan.

    Works for :class:`~convmem.Conversation` and :class:`~convmem.AsyncConversation` (it reads
    attributes only, no call is made).
    """
    usage = conv.usage
    strategy = getattr(conv.strategy, "name", None) or type(conv.strategy).__name__
    cost = _cost(conv)
    summary_tokens = usage.summary_prompt_tokens + usage.summary_completion_tokens
    rows = [
        ("id", conv.conversation_id),
        ("model", conv.model),
        ("window", f"{conv.context_window:,} tokens ({conv.reply_reserve:,} kept for the reply)"),
        ("strategy", strategy),
        ("turns", f"{len(conv.history):,} ({len(conv.history.summaries):,} summaries)"),
        (
            "tokens so far",
            f"{usage.total_tokens:,}: {usage.prompt_tokens:,} prompt + "
            f"{usage.completion_tokens:,} completion in {_n(usage.calls, 'call')}; "
            f"{summary_tokens:,} in {_n(usage.summary_calls, 'summariser call')}",
        ),
        ("cost so far", "—" if cost is None else f"${cost:,.4f}"),
    ]
    table = "".join(
        f'<tr data-field="{_e(k)}"><th style="text-align:left;padding:1px 12px 1px 0;'
        f'font-weight:600;vertical-align:top">{_e(k)}</th>'
        f'<td style="text-align:left;padding:1px 0">{_e(v)}</td></tr>'
        for k, v in rows
    )
    plan = conv.last_plan
    last = (
        plan_html(plan, conv.counter)
        if plan is not None
        else f'<div style="{_MUTED}">no call yet: the last plan appears after the first call</div>'
    )
    return (
        f'<div class="convmem-conversation" style="{_BOX}">'
        f'<div style="font-weight:600;font-size:13px">{_e(type(conv).__name__)}</div>'
        '<table style="border-collapse:collapse;font-size:12px;margin:4px 0 8px 0;border:none;'
        f'background:transparent">{table}</table>'
        f'<div style="font-weight:600;margin-bottom:4px">last plan</div>{last}</div>'
    )


def html_page(fragment: str, title: str = "convmem") -> str:
    """A whole HTML document around a fragment (to open in a browser or render to PNG)."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title></head>"
        f'<body style="margin:12px;background:#ffffff">{fragment}</body></html>'
    )


__all__ = [
    "DECISION_COLORS",
    "MAX_CELLS",
    "SEGMENT_COLORS",
    "Cell",
    "Segment",
    "conversation_html",
    "html_page",
    "new_message_tokens",
    "plan_html",
    "turn_cells",
    "window_segments",
]
