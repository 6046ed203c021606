"""Pictures of what a strategy sends as a conversation grows (matplotlib, imported lazily).

``conv.plot()`` draws the prompt tokens of each call a conversation made against the size of its
history, with the calls that made a summary and the tokens of recalled turns marked, next to what
sending the whole history would have cost. :func:`compare` replays one history through several
strategies and draws them on one set of axes: the picture that answers "what does this strategy
save as my conversation grows?".

Every conversation keeps one small :class:`CallRecord` per API call in ``conv.call_log`` (numbers
only, no messages), which is what ``conv.plot()`` draws. :func:`replay` makes the same records by
replaying a history turn by turn (``extend``, ``prepare_next``, ``preview``): no chat call is
made, only the summariser calls a strategy asks for, which go to
:class:`~convmem.testing.FakeChatServer` (an extract of the transcript stands in for the
summary: right for token counts, not for content) or to the client you give.

matplotlib comes with ``pip install 'convmem[notebook]'``; the figures are made without pyplot,
so nothing is shown twice in a notebook and no display is needed.
"""

from __future__ import annotations

import bisect
import functools
import io
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError, UsageError

if TYPE_CHECKING:
    from .history import History, Summary
    from .plan import ContextPlan
    from .strategy import Strategy
    from .tokens import TokenCounter


@dataclass(frozen=True)
class CallRecord:
    """One call, as the plots draw it (a few numbers; the plan itself is not kept).

    Attributes:
        turn_id: The id the history's next turn had when the call was made: the call saw the
            committed turns with smaller ids.
        history_turns: How many committed turns the history held then.
        prompt_tokens: The call's prompt tokens: the server's ``usage.prompt_tokens`` when it
            reported them, else convmem's corrected estimate.
        reported: True when ``prompt_tokens`` came from the server.
        budget: The prompt budget of the call (window minus room for the reply).
        estimated_tokens: convmem's own count of the prompt. Plots draw this one: it is in the
            same unit as the history's size (the server's tokenizer may count differently).
        extra_tokens: What any call adds to the history, in convmem's count: the new message,
            tool schemas and reply priming (sending the whole history costs system + turns +
            this).
        limit: The budget in convmem's count (the budget divided by the learnt correction).
        sections: Estimated tokens by section (``system``, ``summary``, ``recalled``, ...).
        summary_calls: Summariser calls made for this call (failed ones included).
        summary_failures: Of those, the ones that failed.
        recalled_turns: Turns sent in the ``recalled`` section.
        created_at: Unix time.
    """

    turn_id: int
    history_turns: int
    prompt_tokens: int
    reported: bool
    budget: int
    sections: Mapping[str, int]
    estimated_tokens: int = 0
    extra_tokens: int = 0
    limit: int = 0
    summary_calls: int = 0
    summary_failures: int = 0
    recalled_turns: int = 0
    created_at: float = field(default_factory=time.time)

    @classmethod
    def from_plan(
        cls,
        plan: ContextPlan,
        history: History,
        counter: TokenCounter | None = None,
        *,
        extra_summary: bool | None = None,
    ) -> CallRecord:
        """The record of a call that sent ``plan`` with ``history`` as it was before the call.

        Args:
            plan: The call's plan.
            history: The history (its committed turns are what the call saw).
            counter: The conversation's counter (counts the new message apart from the recent
                turns; the default counter when None).
            extra_summary: A summary made for this call outside the plan (replays make it with
                ``prepare_next``): True when it succeeded, False when it was due and failed.
        """
        recalled = plan.section("recalled")
        calls = len(plan.summary_calls)
        failures = sum(1 for c in plan.summary_calls if not c.ok)
        if extra_summary is not None:
            calls += 1
            failures += 0 if extra_summary else 1
        from .planview import new_message_tokens

        reported = plan.reported_prompt_tokens is not None
        by_section = plan.tokens_by_section()
        framing = plan.estimated_tokens - sum(by_section.values())
        extra = new_message_tokens(plan, counter) + by_section.get("tools", 0) + max(framing, 0)
        ratio = plan.corrected_tokens / plan.estimated_tokens if plan.estimated_tokens else 1.0
        return cls(
            turn_id=history.next_turn_id,
            history_turns=len(history),
            prompt_tokens=(
                int(plan.reported_prompt_tokens)
                if plan.reported_prompt_tokens is not None
                else plan.corrected_tokens
            ),
            reported=reported,
            budget=plan.budget,
            sections=by_section,
            estimated_tokens=plan.estimated_tokens,
            extra_tokens=extra,
            limit=int(plan.budget / ratio) if ratio > 0 else plan.budget,
            summary_calls=calls,
            summary_failures=failures,
            recalled_turns=len(recalled.turn_ids) if recalled is not None else 0,
            created_at=plan.created_at,
        )


def history_tokens(
    records: Sequence[CallRecord],
    history: History,
    counter: TokenCounter,
    *,
    send_reasoning: bool = False,
) -> list[int | None]:
    """For each record, the tokens of the whole history the call could have sent.

    That is the system prompt and every committed turn before the call (each turn counted once,
    from the cache on the turn). None for a call whose turns are no longer in ``history``
    (e.g. after ``clear()``).
    """
    turns = history.turn_list()
    ids = [t.id for t in turns]
    prefix = [0]
    for t in turns:
        prefix.append(prefix[-1] + t.tokens(counter, send_reasoning=send_reasoning))
    system = history.system_tokens(counter)
    out: list[int | None] = []
    for r in records:
        k = bisect.bisect_left(ids, r.turn_id)
        out.append(system + prefix[k] if k == r.history_turns else None)
    return out


# -- replaying a history ---------------------------------------------------------------------


@dataclass
class Replay:
    """One strategy replayed over a history.

    Attributes:
        name: The label in the plot.
        records: One record per user turn replayed (every ``every``-th).
        history: The history the replay built (equal to the one replayed).
        counter: The counter the replay counted with.
        summaries: Summaries made.
    """

    name: str
    records: list[CallRecord]
    history: History
    counter: TokenCounter
    summaries: list[Summary] = field(default_factory=list)


def _turn_groups(source: Any) -> tuple[Any, list[list[dict[str, Any]]]]:
    """(system, messages grouped by turn) from a conversation, a History or a message list."""
    from .history import History
    from .messages import split_turns

    history = getattr(source, "history", source)
    if isinstance(history, History):
        return history.system, [list(t.messages) for t in history.turn_list()]
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        msgs = [dict(m) for m in source]
        system = None
        if msgs and msgs[0].get("role") in ("system", "developer"):
            system = msgs.pop(0)
        return system, [list(g) for g in split_turns(msgs)]
    raise UsageError(
        "replay/compare take a Conversation, a History or a list of message dicts, got "
        f"{type(source).__name__}"
    )


_TURN_LINE = re.compile(r"^\[turn \d+\] (User|Assistant): ", re.MULTILINE)


def fake_summary(body: Mapping[str, Any]) -> str:
    """A stand-in summary for a replay: the transcript's lines, cut to the summary's budget.

    It is as long as a real summariser may write (``max_tokens`` of the request, at ~3
    characters a token), so token figures are realistic; its content is only an extract.
    """
    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content") or "") for m in messages[1:] if isinstance(m, Mapping))
    lines = [_TURN_LINE.sub("", ln).strip() for ln in text.splitlines()]
    facts = "\n".join(f"- {ln}" for ln in lines if ln)
    limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256) * 3
    return facts[:limit] or "- (nothing to remember)"


def replay(
    source: Any,
    strategy: Strategy,
    *,
    context_window: int,
    reply_reserve: int | None = None,
    client: Any = None,
    model: str = "gpt-4o-mini",
    counter: TokenCounter | None = None,
    every: int = 1,
    name: str | None = None,
) -> Replay:
    """Replays a history turn by turn through a strategy, recording the call each turn would make.

    Before each user turn the summary a call would make is made (``prepare_next``), then the
    plan of a call with that user message is built (``preview``, no chat call), then the turn
    is appended as recorded. The replayed history is therefore exactly the one given, whatever
    the strategy.

    Args:
        source: A :class:`~convmem.Conversation`, a :class:`~convmem.history.History` or a list
            of message dicts (a leading system message is the system prompt).
        strategy: The strategy (a fresh one per replay: strategies may keep state).
        context_window: The window the replay budgets against.
        reply_reserve: Room kept for the reply (default: the conversation's default).
        client: Where summariser calls go (a strategy's own ``client=`` wins). None: a
            :class:`~convmem.testing.FakeChatServer` that answers with :func:`fake_summary`.
        model: The model name (it selects the token counter when ``counter`` is None).
        counter: The token counter.
        every: Record every ``every``-th user turn (1: all).
        name: The label (default: the strategy's name).

    Returns:
        The :class:`Replay`.

    Raises:
        UsageError: ``every`` is not a positive int, or ``source`` is not a history.
    """
    from .conversation import Conversation

    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UsageError(f"every must be a positive int, got {every!r}")
    system, groups = _turn_groups(source)
    if client is None:
        from .testing import FakeChatServer

        server = FakeChatServer()
        server.respond_with(fake_summary, times=len(groups) + 1)
        client = server.client()
    conv = Conversation(
        client,
        model=model,
        system=system,
        strategy=strategy,
        context_window=context_window,
        reply_reserve=reply_reserve,
        counter=counter,
    )
    records: list[CallRecord] = []
    made: list[Summary] = []
    users = 0
    try:
        for group in groups:
            if group and group[0].get("role") == "user":
                if users % every == 0:
                    summary = conv.prepare_next()
                    if summary is not None:
                        made.append(summary)
                    plan = conv.preview(group[0])
                    made_one = True if summary is not None else None
                    records.append(
                        CallRecord.from_plan(
                            plan, conv.history, conv.counter, extra_summary=made_one
                        )
                    )
                users += 1
            conv.extend(group)
    finally:
        conv.close()
    label = name or getattr(strategy, "name", None) or type(strategy).__name__
    return Replay(str(label), records, conv.history, conv.counter, made)


# -- drawing ---------------------------------------------------------------------------------


def _figure_class() -> Any:
    """The figure class plots use; raises the extra's ImportError without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError("convmem's plots", "notebook", "matplotlib") from exc
    return _shown_figure(Figure)


@functools.cache
def _shown_figure(figure: Any) -> Any:
    """A matplotlib ``Figure`` that shows itself as a PNG when a notebook cell returns it.

    Figures are made without pyplot (nothing is shown twice, no display is needed), so the
    notebook's matplotlib hook may not know them: ``_repr_png_`` lets IPython render them anyway.
    """

    class PlotFigure(figure):  # type: ignore[misc]
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png")
            return buf.getvalue()

    return PlotFigure


def _new_figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """(figure, axes): the given axes' figure, or a new figure made without pyplot."""
    figure = _figure_class()
    if ax is not None:
        return ax.figure, ax
    fig = figure(figsize=size, dpi=110)
    return fig, fig.add_subplot()


def _xs(
    records: Sequence[CallRecord], sizes: Sequence[int | None] | None, x: str
) -> list[float | None]:
    if x == "turns":
        return [float(r.history_turns) for r in records]
    if sizes is None:
        raise UsageError("x='tokens' needs the history (pass history= and counter=)")
    return [float(s) if s is not None else None for s in sizes]


def _whole_history(
    records: Sequence[CallRecord], xs: Sequence[float | None], sizes: Sequence[int | None]
) -> list[tuple[float, int]]:
    """Points of the whole-history line: what each call would have sent with no strategy."""
    return [
        (xv, size + r.extra_tokens)
        for xv, size, r in zip(xs, sizes, records, strict=True)
        if xv is not None and size is not None
    ]


def _draw(
    ax: Any,
    records: Sequence[CallRecord],
    xs: Sequence[float | None],
    *,
    label: str,
    color: str,
) -> None:
    pts = [(xv, r) for xv, r in zip(xs, records, strict=True) if xv is not None]
    if not pts:
        return
    px = [p[0] for p in pts]
    ys = [r.estimated_tokens for _, r in pts]
    ax.plot(px, ys, color=color, lw=1.6, label=label, zorder=3)
    # The budget moves a little while the correction from server usage is learnt: a step line.
    limits = [r.limit for _, r in pts]
    ax.plot(px, limits, color=color, ls=":", lw=1, drawstyle="steps-post", alpha=0.8, zorder=2)
    recalled = [r.sections.get("recalled", 0) for _, r in pts]
    if any(recalled):
        ax.fill_between(px, 0, recalled, color=color, alpha=0.18, lw=0, step="mid", zorder=1)
    ok = [(xv, r.estimated_tokens) for xv, r in pts if r.summary_calls > r.summary_failures]
    if ok:
        ax.scatter(
            *zip(*ok, strict=True),
            marker="^",
            s=46,
            color=color,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
        )
    failed = [(xv, r.estimated_tokens) for xv, r in pts if r.summary_failures]
    if failed:
        ax.scatter(*zip(*failed, strict=True), marker="x", s=46, color="#b91c1c", zorder=4)


def _finish(
    fig: Any,
    ax: Any,
    *,
    x: str,
    records: Sequence[CallRecord],
    reference: list[tuple[float, int]],
    title: str,
) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if reference:
        reference.sort()
        ax.plot(
            [p[0] for p in reference],
            [p[1] for p in reference],
            color="0.45",
            ls="--",
            lw=1.2,
            label="whole history (no strategy)",
            zorder=2,
        )
    handles, labels = ax.get_legend_handles_labels()
    if records:
        handles.append(Line2D([], [], color="0.6", ls=":", lw=1))
        labels.append("prompt budget")
    if any(r.summary_calls > r.summary_failures for r in records):
        handles.append(
            Line2D([], [], marker="^", ls="", color="0.5", markeredgecolor="black", markersize=7)
        )
        labels.append("a summary was made")
    if any(r.summary_failures for r in records):
        handles.append(Line2D([], [], marker="x", ls="", color="#b91c1c", markersize=7))
        labels.append("the summariser failed")
    if any(r.sections.get("recalled", 0) for r in records):
        handles.append(Patch(color="0.5", alpha=0.25))
        labels.append("of which recalled turns")
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.set_xlabel(
        "turns in the history" if x == "turns" else "tokens in the history (system + turns so far)"
    )
    ax.set_ylabel("prompt tokens of the call (convmem's count)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()


def plot_calls(
    records: Sequence[CallRecord],
    *,
    history: History | None = None,
    counter: TokenCounter | None = None,
    x: str = "tokens",
    label: str = "prompt sent",
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """Draws calls: prompt tokens against the history's size, summaries and recall marked.

    Args:
        records: The calls (``conv.call_log``).
        history: The history they were made on (for the history's size and the whole-history
            line); needed with ``x="tokens"``.
        counter: Its token counter.
        x: ``"tokens"`` (the history's size in tokens) or ``"turns"``.
        label: The legend label of the line.
        title: The title.
        ax: Draw into these matplotlib axes instead of a new figure.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'convmem[notebook]'``).
        UsageError: ``x`` is neither ``"tokens"`` nor ``"turns"``.
    """
    if x not in ("tokens", "turns"):
        raise UsageError(f"x must be 'tokens' or 'turns', got {x!r}")
    if x == "tokens" and (history is None or counter is None):
        raise UsageError("x='tokens' needs the history and its counter (history=, counter=)")
    fig, axes = _new_figure(ax, (8.0, 4.5))
    sizes = (
        history_tokens(records, history, counter)
        if history is not None and counter is not None
        else None
    )
    xs = _xs(records, sizes, x)
    _draw(axes, records, xs, label=label, color="C0")
    reference = _whole_history(records, xs, sizes) if sizes is not None else []
    skipped = sum(1 for xv in xs if xv is None)
    note = (
        f" ({skipped} call{'' if skipped == 1 else 's'} before clear() not drawn)"
        if skipped
        else ""
    )
    _finish(
        fig,
        axes,
        x=x,
        records=records,
        reference=reference,
        title=(title or f"{len(records) - skipped} calls drawn") + note,
    )
    return fig


def compare(
    source: Any,
    strategies: Mapping[str, Strategy] | Sequence[Strategy],
    *,
    context_window: int,
    reply_reserve: int | None = None,
    client: Any = None,
    model: str = "gpt-4o-mini",
    counter: TokenCounter | None = None,
    every: int = 1,
    x: str = "tokens",
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """Replays one history through several strategies and draws them on one set of axes.

    Args:
        source: A conversation, a :class:`~convmem.history.History` or a list of messages.
        strategies: ``{label: strategy}``, or strategies labelled by their ``name``. Give each
            its own instance (strategies may keep state, e.g. a recall collection).
        context_window: The window every replay budgets against.
        reply_reserve: Room kept for the reply.
        client: Where summariser calls go (default: a :class:`~convmem.testing.FakeChatServer`
            answering with :func:`fake_summary`).
        model: The model name (selects the default token counter).
        counter: The token counter (one for all, so the lines are comparable).
        every: Record every ``every``-th user turn.
        x: ``"tokens"`` or ``"turns"`` on the x axis.
        title: The title.
        ax: Draw into these axes instead of a new figure.

    Returns:
        The matplotlib ``Figure``; its ``replays`` attribute holds the :class:`Replay` of each
        strategy (the numbers drawn).

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'convmem[notebook]'``).
        UsageError: no strategies, or a bad argument.
    """
    from .tokens import default_counter

    if x not in ("tokens", "turns"):
        raise UsageError(f"x must be 'tokens' or 'turns', got {x!r}")
    items = (
        list(strategies.items())
        if isinstance(strategies, Mapping)
        else [(str(getattr(s, "name", type(s).__name__)), s) for s in strategies]
    )
    if not items:
        raise UsageError("compare needs at least one strategy")
    fig, axes = _new_figure(ax, (8.5, 4.8))  # fails early, before any replay, without matplotlib
    shared = counter if counter is not None else default_counter(model)
    replays = [
        replay(
            source,
            strategy,
            context_window=context_window,
            reply_reserve=reply_reserve,
            client=client,
            model=model,
            counter=shared,
            every=every,
            name=label,
        )
        for label, strategy in items
    ]
    reference: list[tuple[float, int]] = []
    for i, rep in enumerate(replays):
        sizes = history_tokens(rep.records, rep.history, rep.counter)
        xs = _xs(rep.records, sizes, x)
        _draw(axes, rep.records, xs, label=rep.name, color=f"C{i}")
        if i == 0:
            reference = _whole_history(rep.records, xs, sizes)
    _finish(
        fig,
        axes,
        x=x,
        records=[r for rep in replays for r in rep.records],
        reference=reference,
        title=title or f"{len(replays)} strategies, window {context_window:,} tokens",
    )
    fig.replays = replays
    return fig


__all__ = [
    "CallRecord",
    "Replay",
    "compare",
    "fake_summary",
    "history_tokens",
    "plot_calls",
    "replay",
]
