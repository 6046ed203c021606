"""conv.plot(), the call log and convmem.plot.compare (matplotlib, Agg backend)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from convmem import Conversation, KeepAll, MissingExtraError, UsageError  # noqa: E402
from convmem.bench import generate_probe_set  # noqa: E402
from convmem.plot import (  # noqa: E402
    CallRecord,
    compare,
    fake_summary,
    history_tokens,
    plot_calls,
    replay,
)
from convmem.strategies import Pipeline, RollingSummary, Truncate  # noqa: E402
from convmem.testing import FakeChatServer  # noqa: E402


def summary_server(n: int = 200, *, fail_summaries: bool = False) -> FakeChatServer:
    """Chat calls get 'ok ...'; summariser calls an extract of their transcript (or a 500)."""
    server = FakeChatServer()

    def reply(body: dict[str, Any]) -> Any:
        first = body["messages"][0]["content"]
        if isinstance(first, str) and "keep the memory of a conversation" in first:
            if fail_summaries:
                import httpx2

                raise httpx2.ReadTimeout("summariser timed out")
            return fake_summary(body)
        return "ok " * 10

    server.respond_with(reply, times=n)
    return server


def summary_conv(server: FakeChatServer, **kw: Any) -> Conversation:
    kw.setdefault("strategy", Pipeline(RollingSummary(max_summary_tokens=64), Truncate()))
    return Conversation(
        server.client(), model="gpt-4o-mini", context_window=1000, reply_reserve=100, **kw
    )


def long_message(i: int) -> str:
    return f"message {i}: " + "words that fill the window " * 8


def test_call_log_records_every_call_and_plot_draws_it(tmp_path: Path) -> None:
    conv = summary_conv(summary_server(), system="You are terse.")
    plans = []
    for i in range(24):
        conv.send(long_message(i))
        plans.append(conv.last_plan)
    log = conv.call_log
    assert len(log) == 24 == conv.usage.calls
    assert [r.history_turns for r in log] == list(range(24))
    assert [r.prompt_tokens for r in log] == [p.reported_prompt_tokens for p in plans if p]
    assert all(r.reported for r in log)
    made = [i for i, p in enumerate(plans) if p is not None and p.summary_calls]
    assert made, "the summary never fired"
    assert [i for i, r in enumerate(log) if r.summary_calls] == made
    sizes = history_tokens(log, conv.history, conv.counter)
    assert sizes[0] == conv.history.system_tokens(conv.counter)
    assert all(a is not None and b is not None and b > a for a, b in itertools.pairwise(sizes))

    fig = conv.plot()
    ax = fig.axes[0]
    line = ax.lines[0]
    # Drawn in convmem's count, the unit of the history's size (the server may count otherwise).
    assert list(line.get_ydata()) == [p.estimated_tokens for p in plans if p]
    assert list(line.get_xdata()) == sizes
    # The whole-history reference line, and one marker per call that made a summary.
    assert any(ln.get_label() == "whole history (no strategy)" for ln in ax.lines)
    triangles = [c for c in ax.collections if len(c.get_offsets()) == len(made)]
    assert triangles
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "a summary was made" in labels
    out = tmp_path / "calls.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Returned from a notebook cell, the figure shows itself (it is made without pyplot).
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"

    turns_fig = conv.plot(x="turns", title="by turns")
    assert list(turns_fig.axes[0].lines[0].get_xdata()) == list(range(24))
    assert turns_fig.axes[0].get_title() == "by turns"


def test_failed_summaries_are_marked() -> None:
    conv = summary_conv(summary_server(fail_summaries=True))
    for i in range(16):
        conv.send(long_message(i))
    failed = [r for r in conv.call_log if r.summary_failures]
    assert failed
    fig = conv.plot()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "the summariser failed" in labels
    assert "a summary was made" not in labels


def test_calls_before_clear_are_not_drawn() -> None:
    conv = Conversation(
        FakeChatServer().respond_with(lambda body: "ok", times=10).client(),
        model="gpt-4o-mini",
        strategy=KeepAll(),
    )
    conv.send("one")
    conv.send("two")
    conv.clear()
    conv.send("three")
    sizes = history_tokens(conv.call_log, conv.history, conv.counter)
    # The first call saw an empty history (still true after clear()); the second saw a turn
    # that is gone, so it cannot be placed.
    assert sizes[0] == 0 and sizes[1] is None and sizes[2] is not None
    fig = conv.plot()
    assert len(fig.axes[0].lines[0].get_xdata()) == 2
    assert "(1 call before clear() not drawn)" in fig.axes[0].get_title()


def lookup(city: str) -> str:
    """Looks up the weather.

    Args:
        city: The city.
    """
    return f"sunny in {city}"


def test_whole_history_line_is_what_keep_all_sends() -> None:
    server = FakeChatServer().respond_with(lambda body: "fine, thanks " * 3, times=10)
    conv = Conversation(
        server.client(), model="gpt-4o-mini", system="You are terse.", strategy=KeepAll()
    )
    for i in range(6):
        conv.send(f"message {i}: " + "some words " * (3 + i), tools=[lookup])
    ax = conv.plot().axes[0]
    sent = ax.lines[0]
    whole = next(ln for ln in ax.lines if ln.get_label() == "whole history (no strategy)")
    assert list(whole.get_ydata()) == list(sent.get_ydata())
    assert list(sent.get_ydata()) == [r.estimated_tokens for r in conv.call_log]
    assert all(r.extra_tokens > r.sections["tools"] for r in conv.call_log)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="x must be"):
        plot_calls([], x="time")
    with pytest.raises(UsageError, match="needs the history"):
        plot_calls([])
    with pytest.raises(UsageError, match="at least one strategy"):
        compare([{"role": "user", "content": "hi"}], {}, context_window=1000)
    with pytest.raises(UsageError, match="every must be"):
        replay([], Truncate(), context_window=1000, every=0)
    with pytest.raises(UsageError, match="list of message dicts"):
        replay(42, Truncate(), context_window=1000)


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    conv = Conversation(FakeChatServer().client(), model="gpt-4o-mini")
    with pytest.raises(MissingExtraError, match=r"pip install 'convmem\[notebook\]'"):
        conv.plot()
    with pytest.raises(ImportError):
        compare([{"role": "user", "content": "hi"}], [Truncate()], context_window=1000)


def probe_messages(turns: int = 60) -> list[dict[str, str]]:
    return generate_probe_set(conversations=1, turns=turns, seed=0)[0].messages()


def test_replay_keeps_the_history_and_matches_live_previews() -> None:
    messages = [{"role": "system", "content": "You help."}, *probe_messages()]
    rep = replay(messages, Truncate(max_tokens=600), context_window=4096, every=2)
    assert [m for t in rep.history.turns for m in t.messages] == messages[1:]
    assert len(rep.records) == 15  # every second of the 30 user turns
    assert all(r.prompt_tokens <= 600 for r in rep.records)
    assert not rep.summaries
    # The same numbers a live conversation previews at that point.
    conv = Conversation(
        FakeChatServer().client(),
        model="gpt-4o-mini",
        system="You help.",
        context_window=4096,
        strategy=Truncate(max_tokens=600),
    )
    conv.extend(messages[1:21])
    assert conv.preview(messages[21]).corrected_tokens == rep.records[5].prompt_tokens


def test_compare_draws_each_strategy_and_summaries_fire() -> None:
    messages = probe_messages()
    fig = compare(
        messages,
        {
            "Truncate(700)": Truncate(max_tokens=700),
            "RollingSummary": Pipeline(RollingSummary(max_summary_tokens=64), Truncate()),
        },
        context_window=1200,
        reply_reserve=100,
    )
    trunc, summ = fig.replays
    assert [trunc.name, summ.name] == ["Truncate(700)", "RollingSummary"]
    assert summ.summaries and any(r.summary_calls for r in summ.records)
    assert max(r.prompt_tokens for r in trunc.records) <= 700
    assert max(r.prompt_tokens for r in summ.records) <= 1100
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["Truncate(700)", "RollingSummary", "whole history (no strategy)"]
    # The whole history grows past what either strategy sends.
    whole = next(ln for ln in ax.lines if ln.get_label() == "whole history (no strategy)")
    assert max(whole.get_ydata()) > 2 * max(r.prompt_tokens for r in summ.records)


def test_compare_sends_summaries_to_the_given_client() -> None:
    server = summary_server()
    conv = Conversation(FakeChatServer().client(), model="gpt-4o-mini", context_window=100_000)
    conv.extend(probe_messages(40))
    fig = compare(
        conv,
        [RollingSummary(max_summary_tokens=64)],
        context_window=1000,
        reply_reserve=100,
        client=server.client(),
    )
    (rep,) = fig.replays
    assert rep.summaries
    summariser_requests = [
        r for r in server.requests if "keep the memory" in str(r["messages"][0]["content"])
    ]
    assert len(summariser_requests) == len(rep.summaries)


def test_call_record_from_plan_counts_recall_and_summary() -> None:
    from convmem.plan import ContextPlan, Section, SummaryCall

    plan = ContextPlan(
        strategy="t",
        sections=[
            Section("recalled", [], 40, (1, 5)),
            Section("recent", [], 60, (9,)),
        ],
        turn_decisions=[],
        context_window=1000,
        reply_reserve=100,
        budget=900,
        estimated_tokens=103,
        corrected_tokens=110,
        summary_calls=[SummaryCall("m", ok=True), SummaryCall("m", ok=False, error="boom")],
    )
    from convmem.history import History

    history = History("sys")
    history.append([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    rec = CallRecord.from_plan(plan, history)
    assert (rec.turn_id, rec.history_turns, rec.prompt_tokens, rec.reported) == (1, 1, 110, False)
    assert (rec.summary_calls, rec.summary_failures, rec.recalled_turns) == (2, 1, 2)
    assert rec.sections == {"recalled": 40, "recent": 60}
    # No new message in the recent section here: what a call adds is the reply priming.
    assert (rec.estimated_tokens, rec.extra_tokens, rec.limit) == (103, 3, 842)


def test_bench_plot_labels_sit_by_their_own_marker_and_do_not_overlap() -> None:
    """The probe plot's summary row: filled (evidence) and hollow (answer keywords) triangles
    close together, each label by its own marker; crowded points keep labels apart."""
    from matplotlib.figure import Figure

    from convmem.bench.report import _Label, _place_labels

    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    points = [
        _Label(2200, 0.65, "summ 3k", "C3", 60, "up"),  # the filled point is the lower one
        _Label(2200, 0.68, "summ 3k kw", "C3", 60, "down"),
        _Label(1925, 0.85, "recall 2k", "C2", 60),
        _Label(2364, 0.90, "summ+rec 3k", "C4", 60),
        _Label(2818, 1.00, "recall 3k", "C2", 60),
        _Label(2939, 0.95, "trunc 3k", "C1", 60),
        _Label(3367, 1.00, "full", "C0", 140),
    ]
    # The filled point is below the hollow one: its label must go below, the other's above.
    points[0].prefer, points[1].prefer = "down", "up"
    for p in points:
        ax.scatter([p.x], [p.y], s=p.size)
    ax.set_ylim(-0.03, 1.05)
    fig.tight_layout()
    _place_labels(fig, ax, points)
    fig.canvas.draw()
    texts = {t.get_text(): t.get_window_extent() for t in ax.texts}
    assert set(texts) == {p.text for p in points}
    boxes = list(texts.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    filled = ax.transData.transform((2200, 0.65))
    hollow = ax.transData.transform((2200, 0.68))
    assert texts["summ 3k"].y1 <= filled[1]  # below its (lower) marker
    assert texts["summ 3k kw"].y0 >= hollow[1]  # above its (upper) marker
    axes = ax.get_window_extent()
    for box in boxes:
        assert axes.x0 <= box.x0 and box.x1 <= axes.x1, box
