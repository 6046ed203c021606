"""HTML views of plans and conversations (convmem.display), checked with a real HTML parser."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from _html import Node, assert_inert, parse

from convmem import AsyncConversation, Conversation
from convmem.display import (
    DECISION_COLORS,
    MAX_CELLS,
    SEGMENT_COLORS,
    conversation_html,
    html_page,
    plan_html,
    turn_cells,
    window_segments,
)
from convmem.plan import ContextPlan, DecisionSpan, Section, TurnDecision
from convmem.snapshot import find_chromium, html_to_png
from convmem.strategies import Pipeline, RollingSummary, Truncate, VectorRecall
from convmem.testing import FakeChatServer

SCRIPT = "<script>alert('x')</script>"
SYSTEM = 'You are terse. <b>Never</b> say "hi" & such.'


def lookup(city: str) -> str:
    """Looks up the weather.

    Args:
        city: The city.
    """
    return f"sunny in {city}"


def hash_embed(texts: list[str]) -> list[list[float]]:
    """A deterministic bag-of-words embedder: no model to load."""
    out = []
    for text in texts:
        v = [0.0] * 64
        for w in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
        norm = sum(x * x for x in v) ** 0.5 or 1.0
        out.append([x / norm for x in v])
    return out


def chat_server(n: int = 400) -> FakeChatServer:
    """Replies 'noted ...' to chat calls; answers summariser calls with a short list of facts."""
    server = FakeChatServer()

    def reply(body: dict[str, Any]) -> Any:
        first = body["messages"][0]["content"]
        if isinstance(first, str) and "keep the memory of a conversation" in first:
            return {
                "content": "- the user likes <b>bold</b> & the cat Miso",
                "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
            }
        return "noted " * 8

    server.respond_with(reply, times=n)
    return server


def turns_text(i: int) -> str:
    return f"message {i} about topic {i % 5} and the cat Miso {SCRIPT} " + "more words " * 6


@pytest.fixture(scope="module")
def full_conv() -> Conversation:
    """A conversation whose last plan has every section: system, tools, summary, recalled,
    recent and the new message."""
    pytest.importorskip("chromadb")
    strategy = Pipeline(
        RollingSummary(max_summary_tokens=64),
        VectorRecall(embedder=hash_embed, k=3, collection="test_display", min_score=0.0),
        Truncate(),
    )
    conv = Conversation(
        chat_server().client(),
        model="gpt-4o-mini",
        context_window=2000,
        reply_reserve=200,
        system=SYSTEM,
        strategy=strategy,
    )
    for i in range(30):
        conv.send(turns_text(i))
        conv.drain()
    conv.send("what about the cat Miso? " + SCRIPT, tools=[lookup])
    return conv


def bar(root: Node) -> list[Node]:
    """The bar's segments (the legend repeats the keys on <span>s)."""
    return [n for n in root.find_all(**{"data-segment": None}) if n.tag == "div"]


@pytest.mark.recall
def test_plan_html_has_every_section_and_totals_add_up(full_conv: Conversation) -> None:
    plan = full_conv.last_plan
    assert plan is not None
    assert {s.name for s in plan.sections} == {
        "system",
        "tools",
        "summary",
        "recalled",
        "recent",
    }
    root = parse(plan_html(plan, full_conv.counter))
    assert_inert(root)
    segs = {n.attrs["data-segment"]: int(n.attrs["data-tokens"]) for n in bar(root)}
    for key in ("system", "tools", "summary", "recalled", "recent", "new", "free", "reply"):
        assert segs.get(key, 0) > 0, key
    # The bar draws the parts in the order the messages are sent (recalled after the recent
    # turns, next to the new message).
    order = [n.attrs["data-segment"] for n in bar(root)]
    assert order.index("summary") < order.index("recent") < order.index("recalled")
    assert order.index("recalled") < order.index("new")
    roles = [m["role"] for m in plan.messages]
    recalled_at = next(i for i, m in enumerate(plan.messages) if "convmem-recalled" in str(m))
    assert recalled_at == len(roles) - 2  # just before the new message
    # The window adds up, and what is sent adds up to the plan's prompt tokens.
    assert sum(segs.values()) == plan.context_window
    sent = sum(v for k, v in segs.items() if k not in ("free", "reply"))
    assert sent == plan.corrected_tokens
    assert segs["reply"] == plan.reply_reserve
    total = root.find_all(**{"data-total": None})
    assert [int(t.attrs["data-total"]) for t in total] == [plan.context_window]
    # The legend shows the same numbers as the bar.
    legend = {
        n.attrs["data-segment"]: int(n.attrs["data-tokens"])
        for n in root.find_all(**{"data-segment": None})
        if n.tag == "span"
    }
    assert legend == segs
    # Hover text says what each part is.
    titles = {n.attrs["data-segment"]: n.attrs["title"] for n in bar(root)}
    assert "covers turns" in titles["summary"]
    assert "room kept for the reply" in titles["reply"]


@pytest.mark.recall
def test_plan_html_strip_matches_decisions(full_conv: Conversation) -> None:
    plan = full_conv.last_plan
    assert plan is not None
    root = parse(plan_html(plan))
    cells = root.find_all(**{"data-actions": None})
    history = [c for c in cells if c.attrs["data-actions"] != "new"]
    # The plan was made before its own turn was committed.
    assert sum(int(c.attrs["data-count"]) for c in history) == len(full_conv.history) - 1
    counts: dict[str, int] = {}
    for c in history:
        for action in c.attrs["data-actions"].split(","):
            counts[action] = counts.get(action, 0) + int(c.attrs["data-count"])
    assert counts.get("kept", 0) == len(plan.kept)
    assert counts.get("recalled", 0) == len(plan.recalled) > 0
    assert counts.get("summarised", 0) == len(plan.summarised) > 0
    # The new message is the last cell; recalled cells say their score.
    assert cells[-1].attrs["data-actions"] == "new"
    recalled = [c for c in history if c.attrs["data-actions"] == "recalled"]
    assert all(re.search(r"score \d\.\d{3}", c.attrs["title"]) for c in recalled)
    legend = {
        n.attrs["data-decision"]: int(n.attrs["data-count"])
        for n in root.find_all(**{"data-decision": None})
    }
    assert legend["recalled"] == len(plan.recalled)
    assert legend["summarised"] == len(plan.summarised)


@pytest.mark.recall
def test_message_text_is_escaped(full_conv: Conversation) -> None:
    plan = full_conv.last_plan
    assert plan is not None
    markup = plan_html(plan)
    assert "<script>" not in markup
    root = parse(markup)
    assert_inert(root)
    text = root.text()
    assert SCRIPT in text  # shown as text, in the messages sent
    assert "<b>Never</b>" in text  # the system prompt, as typed
    conv_root = parse(conversation_html(full_conv))
    assert_inert(conv_root)
    assert SCRIPT in conv_root.text()


def test_notes_and_reasons_are_escaped() -> None:
    plan = ContextPlan(
        strategy="Mine<img src=x onerror=alert(1)>",
        sections=[Section("recent", [{"role": "user", "content": "hi"}], 5, (3,))],
        turn_decisions=[TurnDecision(0, "recalled", 'score <"0.9">', 0.9)],
        spans=[DecisionSpan("dropped", "over <budget>", range(1, 3))],
        context_window=100,
        reply_reserve=10,
        budget=90,
        estimated_tokens=8,
        corrected_tokens=8,
        notes=["a <script>note</script>"],
    )
    root = parse(plan_html(plan))
    assert_inert(root)
    assert "a <script>note</script>" in root.text()
    assert "Mine<img src=x onerror=alert(1)>" in root.text()
    titles = [n.attrs["title"] for n in root.find_all(**{"data-actions": None})]
    assert 'turn 0: recalled, score 0.900 (score <"0.9">)' in titles
    assert "turn 1: dropped (over <budget>)" in titles


def plan_of(n_turns: int, decisions: list[TurnDecision], spans: list[DecisionSpan]) -> ContextPlan:
    return ContextPlan(
        strategy="test",
        sections=[
            Section("system", [{"role": "system", "content": "s"}], 4),
            Section(
                "recent",
                [{"role": "user", "content": "old"}, {"role": "user", "content": "new"}],
                20,
                (n_turns - 1, n_turns),
            ),
        ],
        turn_decisions=decisions,
        spans=spans,
        context_window=1000,
        reply_reserve=100,
        budget=900,
        estimated_tokens=27,
        corrected_tokens=27,
    )


def test_long_history_becomes_runs() -> None:
    n = 20_000
    plan = plan_of(
        n,
        [TurnDecision(n - 1, "kept", "recent"), TurnDecision(777, "recalled", "similar", 0.61)],
        [DecisionSpan("dropped", "over budget", range(0, n - 1))],
    )
    cells = turn_cells(plan)
    assert [c.parts for c in cells] == [
        (("dropped", 777),),
        (("recalled", 1),),
        (("dropped", n - 779),),
        (("kept", 1),),
    ]
    root = parse(plan_html(plan))
    strip = root.find_all(**{"data-actions": None})
    assert len(strip) == 5  # four runs and the new message
    assert "score 0.610" in strip[1].attrs["title"]
    segs = {n.attrs["data-segment"]: int(n.attrs["data-tokens"]) for n in bar(root)}
    assert sum(segs.values()) == 1000


def test_many_alternating_decisions_become_buckets() -> None:
    n = 5_000
    decisions = [
        TurnDecision(i, "kept" if i % 2 else "dropped", "test", None) for i in range(n - 1)
    ]
    plan = plan_of(n, decisions, [])
    cells = turn_cells(plan)
    assert len(cells) <= MAX_CELLS
    assert sum(c.count for c in cells) == n - 1
    assert all(dict(c.parts).keys() == {"kept", "dropped"} for c in cells[:-1])
    root = parse(plan_html(plan))
    strip = [c for c in root.find_all(**{"data-actions": None}) if c.attrs["data-actions"] != "new"]
    assert len(strip) == len(cells)
    assert sum(int(c.attrs["data-count"]) for c in strip) == n - 1
    # A bucket draws each decision as a band (nested divs), so mixed buckets stay visible.
    assert all(len([k for k in c.children if isinstance(k, Node)]) == 2 for c in strip[:-1])


def test_small_history_one_cell_per_turn_and_no_new_message_when_continuing() -> None:
    plan = plan_of(3, [TurnDecision(i, "kept", "recent") for i in range(4)], [])
    # The recent section's last id (3) is a committed turn here: no new-message segment.
    assert "new" not in {s.key for s in window_segments(plan)}
    assert len(turn_cells(plan)) == 4


def test_over_budget_plan_says_so() -> None:
    plan = plan_of(2, [TurnDecision(0, "kept", "recent")], [])
    plan.estimated_tokens = plan.corrected_tokens = 950
    root = parse(plan_html(plan))
    assert "over the prompt budget" in root.text()
    segs = {n.attrs["data-segment"]: int(n.attrs["data-tokens"]) for n in bar(root)}
    assert "free" not in segs
    assert sum(segs.values()) == 950 + 100


def test_conversation_html_before_and_after_calls() -> None:
    server = FakeChatServer().reply("hello there").reply("again")
    conv = Conversation(server.client(), model="gpt-4o-mini", strategy=Truncate(max_turns=4))
    root = parse(conv._repr_html_())
    assert_inert(root)
    fields = {n.attrs["data-field"]: n.text() for n in root.find_all(**{"data-field": None})}
    assert fields["id"].endswith(conv.conversation_id)
    assert "gpt-4o-mini" in fields["model"]
    assert "128,000 tokens" in fields["window"]
    assert "Truncate" in fields["strategy"]
    assert fields["cost so far"].endswith("$0.0000")  # gpt-4o-mini has a price, no call yet
    assert "no call yet" in root.text()
    conv.send("hi")
    conv.send("and again")
    root = parse(conv._repr_html_())
    fields = {n.attrs["data-field"]: n.text() for n in root.find_all(**{"data-field": None})}
    assert fields["turns"].startswith("turns2 ")
    usage = conv.usage
    assert f"{usage.total_tokens:,}:" in fields["tokens so far"]
    assert f"in {usage.calls} calls" in fields["tokens so far"]
    assert root.find_all(**{"class": "convmem-plan"})  # the last plan is inside
    conv.usage.cost_nanousd = 12_340_000  # as if the calls had cost $0.01234
    root = parse(conv._repr_html_())
    fields = {n.attrs["data-field"]: n.text() for n in root.find_all(**{"data-field": None})}
    assert fields["cost so far"].endswith("$0.0123")
    # A model with no price: the cost is unknown, never a guess.
    other = Conversation(
        FakeChatServer().reply("ok").client(), model="my-model", context_window=4096
    )
    other.send("hi")
    fields = {
        n.attrs["data-field"]: n.text()
        for n in parse(other._repr_html_()).find_all(**{"data-field": None})
    }
    assert fields["cost so far"].endswith("—")


async def test_async_conversation_html() -> None:
    server = FakeChatServer().reply("hello")
    conv = AsyncConversation(server.async_client(), model="gpt-4o-mini", context_window=4096)
    await conv.send("hi " + SCRIPT)
    root = parse(conv._repr_html_())
    assert_inert(root)
    assert "AsyncConversation" in root.text()
    assert SCRIPT in root.text()
    assert conv.last_plan is not None
    assert parse(conv.last_plan._repr_html_()).find_all(**{"class": "convmem-plan"})


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="needs the OS package chromium")
def test_plan_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    server = chat_server()
    conv = Conversation(
        server.client(),
        model="gpt-4o-mini",
        context_window=1000,
        reply_reserve=100,
        system=SYSTEM,
        strategy=Pipeline(RollingSummary(max_summary_tokens=64), Truncate()),
    )
    for i in range(14):
        conv.send(turns_text(i))
    assert conv.last_plan is not None and conv.last_plan.summarised
    out = html_to_png(html_page(plan_html(conv.last_plan)), tmp_path / "plan.png", height=480)
    image = Image.open(out).convert("RGB")
    assert image.size == (1000, 480)
    colors = {c for _, c in image.getcolors(maxcolors=1 << 24) or []}

    def rgb(hex_color: str) -> tuple[int, int, int]:
        return tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

    # The bar and the strip were painted: the section and decision colours are on the page.
    for hex_color in (
        SEGMENT_COLORS["summary"],
        SEGMENT_COLORS["recent"],
        SEGMENT_COLORS["new"],
        DECISION_COLORS["summarised"],
    ):
        assert rgb(hex_color) in colors, hex_color
