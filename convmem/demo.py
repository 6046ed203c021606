"""``convmem demo``: a short conversation that prints each call's plan.

It runs on the local llama.cpp model, or with ``--fake`` on scripted replies. The fake is honest:
its summariser writes down only the facts that appear in the transcript it was sent, and its
answer to the last question recites only the facts that appear in the messages that call sent.
So whatever the demo prints, the plan above it shows where it came from, and a fact a strategy
lost shows up as "I don't know" rather than being papered over by a script.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

DEMO_SYSTEM = "You are a friendly travel assistant. Answer in one or two short sentences."
DEMO_MESSAGES = (
    "Hi! I'm Ada. I live in Lisbon and I'm planning a trip to Japan in April.",
    "My budget is about 3000 euros, and I love hiking and ramen.",
    "Can you suggest a rough plan for ten days?",
    "Remind me: what is my name, where do I live, and what is my budget?",
)
#: Scripted replies to all but the last message (the last one is answered from what was sent).
DEMO_FAKE_REPLIES = (
    "Nice to meet you! April is cherry-blossom season, a lovely time to visit Japan, "
    "though trains and hotels fill up early, so book ahead.",
    "That is plenty for ten days of mountain trails, onsen towns and noodle bars, "
    "even with a rail pass and a couple of nicer dinners.",
    "Tokyo for three days, the Kumano Kodo trail for four, then Kyoto and Osaka for "
    "temples, markets and late-night ramen.",
)
#: Small enough that the rolling summary fires by the fourth message.
DEMO_WINDOW = 224
DEMO_REPLY_TOKENS = 64
DEMO_SUMMARY_TOKENS = 48

#: The facts the last question asks about, and how the fake finds each in a text.
FACTS: Mapping[str, re.Pattern[str]] = {
    "name": re.compile(r"\bI'?m (Ada)\b|\bnamed? (?:is )?(Ada)\b"),
    "home": re.compile(r"\blives? in (Lisbon)\b"),
    "budget": re.compile(r"\bbudget (?:is )?(?:about )?(\d[\d,]* euros)"),
}
#: Other facts the fake summariser keeps when it sees them.
_EXTRA_FACTS: Mapping[str, re.Pattern[str]] = {
    "trip": re.compile(r"\btrip to (Japan in April)\b"),
    "likes": re.compile(r"\blove (hiking and ramen)\b"),
}


def find_facts(text: str, patterns: Mapping[str, re.Pattern[str]] = FACTS) -> dict[str, str]:
    """The facts ``patterns`` find in ``text``: name → the matched value."""
    found = {}
    for name, pattern in patterns.items():
        match = pattern.search(text)
        if match:
            found[name] = next(g for g in match.groups() if g)
    return found


def fake_summary(transcript: str) -> str:
    """What the fake summariser writes: one line per fact found in what it was sent."""
    facts = find_facts(transcript, {**FACTS, **_EXTRA_FACTS})
    lines = {
        "name": "The user's name is {}.",
        "home": "The user lives in {}.",
        "trip": "Planning a trip to {}.",
        "budget": "The budget is about {}.",
        "likes": "Loves {}.",
    }
    kept = [lines[k].format(v) for k, v in facts.items()]
    return "\n".join(f"- {line}" for line in kept) or "- No durable facts yet."


def fake_final_answer(sent: str) -> str:
    """The fake's answer to the last question, from the facts in the messages sent."""
    facts = find_facts(sent)
    parts = [
        f"your name is {facts['name']}" if "name" in facts else "I don't know your name",
        f"you live in {facts['home']}" if "home" in facts else "I don't know where you live",
        f"your budget is about {facts['budget']}"
        if "budget" in facts
        else "I don't know your budget",
    ]
    return f"From what I can see: {parts[0]}, {parts[1]}, and {parts[2]}."


def _request_text(messages: Sequence[Mapping[str, Any]]) -> str:
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    # Quoted past text carries a line mark; the facts are read from the words themselves.
    return re.sub(r"(?m)^│ ", "", "\n".join(texts))


def run(*, fake: bool, out: Any = None) -> int:
    """Runs the demo, printing each reply and plan to ``out`` (default stdout)."""
    from .conversation import Conversation
    from .localserver import SMOLLM2_CONTEXT_WINDOW
    from .strategies import Pipeline, RollingSummary, Truncate
    from .tokens import TiktokenCounter

    out = out or sys.stdout
    with _client(fake=fake) as (client, model, label):
        print(f"convmem demo: {label}; window {DEMO_WINDOW} tokens, summary at 70%\n", file=out)
        conv = Conversation(
            client,
            model=model,
            system=DEMO_SYSTEM,
            context_window=DEMO_WINDOW,
            counter=TiktokenCounter(encoding="cl100k_base"),
            # Only the conversation's window is made small; the summariser (the same model) reads
            # its input with the server's whole window, so the turns left behind fit in it.
            strategy=Pipeline(
                RollingSummary(
                    max_summary_tokens=DEMO_SUMMARY_TOKENS, summarizer_window=SMOLLM2_CONTEXT_WINDOW
                ),
                Truncate(),
            ),
        )
        for text in DEMO_MESSAGES:
            reply = conv.send(text, max_tokens=DEMO_REPLY_TOKENS, temperature=0)
            answer = (reply.choices[0].message.content or "").strip()
            print(f"user:      {text}", file=out)
            print(f"assistant: {answer}", file=out)
            print(conv.last_plan, file=out)
            print(file=out)
        usage = conv.usage
        print(
            f"usage: {usage.calls} calls, {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion tokens; summariser: {usage.summary_calls} "
            f"call(s), {usage.summary_prompt_tokens} + {usage.summary_completion_tokens} tokens",
            file=out,
        )
    return 0


@contextmanager
def _client(*, fake: bool) -> Iterator[tuple[Any, str, str]]:
    if fake:
        yield _fake_client(), "gpt-4o-mini", "scripted replies (convmem.testing.FakeChatServer)"
        return
    from .localserver import LocalModelServer

    print("starting the local model (llama.cpp, SmolLM2-135M-Instruct) ...", file=sys.stderr)
    with LocalModelServer() as server:
        yield server.client(), server.model, f"local llama.cpp server, {server.model}"


def _fake_client() -> Any:
    from .strategies.summary import DEFAULT_SUMMARY_PROMPT
    from .testing import FakeChatServer

    replies = iter(DEMO_FAKE_REPLIES)

    def answer(body: dict[str, Any]) -> str:
        messages = body.get("messages") or [{}]
        if messages[0].get("content") == DEFAULT_SUMMARY_PROMPT:
            return fake_summary(_request_text(messages[1:]))
        scripted = next(replies, None)
        return scripted if scripted is not None else fake_final_answer(_request_text(messages))

    server = FakeChatServer().respond_with(answer, times=2 * len(DEMO_MESSAGES))
    return server.client()
