"""Synthetic chat text: seeded, deterministic conversations for the benchmarks to replay.

:func:`make_history` gives a chat of any length (user and assistant messages of 20 to 60
words); :func:`summary_text` a summary-shaped text to stand in for one a model made. The same
seed gives the same text on every machine, and nothing is downloaded.
"""

from __future__ import annotations

import random
from typing import Any

from convmem import UsageError

_OPENERS = ("", "", "Quick question.", "Also,", "By the way,", "Thanks!", "OK so", "Update:")
_SUBJECTS = (
    "my sister",
    "our team lead",
    "the landlord",
    "my dentist",
    "the new intern",
    "my neighbour Priya",
    "the project sponsor",
    "my flatmate Jonas",
    "the travel agent",
    "my manager",
)
_VERBS = (
    "booked",
    "moved",
    "cancelled",
    "recommended",
    "rescheduled",
    "asked about",
    "forgot about",
    "paid for",
    "compared prices for",
    "finally finished",
)
_OBJECTS = (
    "the flight to Lisbon",
    "a table for six at the Thai place",
    "the quarterly budget review",
    "the bike repair",
    "a sourdough recipe",
    "the 3 pm dentist appointment",
    "the hiking trip to Snowdon",
    "the car insurance renewal",
    "a birthday present for Tom",
    "the slides for Monday",
    "the broken dishwasher",
    "a Spanish evening course",
    "the hotel near the station",
    "the 12 kg parcel from Berlin",
)
_TIMES = (
    "last Tuesday",
    "yesterday evening",
    "this morning",
    "two weeks ago",
    "before the deadline",
    "after lunch",
    "on Friday",
    "in early March",
)
_REASONS = (
    "because the price went up by 40 euros",
    "since nobody else could make it",
    "so we can save some money",
    "because the weather looked bad",
    "to keep things simple",
    "after reading the reviews",
    "because the first option was fully booked",
)
_QUESTIONS = (
    "What do you think I should do?",
    "Can you remind me what we decided?",
    "Is that a reasonable plan?",
    "How long would that take?",
    "Are there better options?",
    "Should I tell the others?",
)
_LEADS = (
    "That sounds reasonable.",
    "Good idea.",
    "Here is what I would suggest.",
    "Based on what you said earlier,",
    "To summarise,",
    "One option is this:",
    "I understand.",
)
_ADVICE = (
    "you could ask {s} to confirm {o} by email",
    "it may be cheaper to handle {o} {t}",
    "I would check whether {s} still wants {o}",
    "keep a note of {o} so nothing is forgotten",
    "compare two or three offers for {o} first",
    "set a reminder for {o} a day before",
)


def _sentence(rng: random.Random, role: str) -> str:
    if role == "user":
        kind = rng.random()
        if kind < 0.2:
            return rng.choice(_QUESTIONS)
        s = rng.choice(_SUBJECTS)
        text = f"{s} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}"
        if kind < 0.6:
            text += f" {rng.choice(_REASONS)}"
        return text[0].upper() + text[1:] + "."
    advice = rng.choice(_ADVICE).format(
        s=rng.choice(_SUBJECTS), o=rng.choice(_OBJECTS), t=rng.choice(_TIMES)
    )
    return advice[0].upper() + advice[1:] + "."


def _text(rng: random.Random, role: str) -> str:
    """One message of 20 to 60 words."""
    target = rng.randint(20, 60)
    words: list[str] = []
    opener = rng.choice(_OPENERS) if role == "user" else rng.choice(_LEADS)
    if opener:
        words.extend(opener.split())
    while len(words) < target:
        words.extend(_sentence(rng, role).split())
    words = words[:target]
    text = " ".join(words)
    return text if text.endswith((".", "?", "!")) else text.rstrip(",:;") + "."


def make_history(messages: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A deterministic chat of ``messages`` alternating user/assistant messages, user first.

    Each message is 20 to 60 words of varied, chat-like English (plans, names, times, numbers).

    Args:
        messages: How many messages (even, at least 2).
        seed: The random seed; the same seed gives the same history.

    Returns:
        OpenAI message dicts, without a system message.

    Raises:
        UsageError: ``messages`` is odd or below 2.
    """
    if isinstance(messages, bool) or not isinstance(messages, int) or messages < 2:
        raise UsageError(f"a history needs at least 2 messages, got {messages!r}")
    if messages % 2:
        raise UsageError(f"sizes must be even (user/assistant pairs), got {messages}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(messages):
        role = "user" if i % 2 == 0 else "assistant"
        out.append({"role": role, "content": _text(rng, role)})
    return out


def summary_text(seed: int) -> str:
    """Fourteen "- fact" lines in the style of the history: what a summariser might return."""
    rng = random.Random(seed + 1)
    facts = [f"- {_sentence(rng, 'user')}" for _ in range(14)]
    return "\n".join(facts)


__all__ = ["make_history", "summary_text"]
