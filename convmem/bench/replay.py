"""Replaying a benchmark conversation into a :class:`~convmem.Conversation`, one turn at a time.

:func:`turn_groups` groups a benchmark conversation's messages as convmem turns;
:func:`replay_conversation` adds them with ``conv.extend`` and returns where each benchmark
turn landed, which scoring needs to find a question's evidence in a plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convmem.bench.data import BenchConversation


def turn_groups(conversation: BenchConversation) -> list[list[int]]:
    """Benchmark turn indices grouped as convmem turns: each group starts at a user message.

    A conversation that opens with assistant messages gets them as a turn of their own (as
    ``History`` does); consecutive user messages are separate turns.
    """
    groups: list[list[int]] = []
    for turn in conversation.turns:
        if turn.role == "user" or not groups:
            groups.append([turn.turn_id])
        else:
            groups[-1].append(turn.turn_id)
    return groups


def replay_conversation(
    chat: Any,
    conversation: BenchConversation,
    *,
    prepare: bool = False,
    on_turn: Callable[[], None] | None = None,
    before_turn: Callable[[str], None] | None = None,
) -> list[int]:
    """Adds a benchmark conversation to a :class:`~convmem.Conversation`, one turn at a time.

    Each convmem turn (see :func:`turn_groups`) is added with ``chat.extend``; with
    ``prepare``, ``chat.prepare_next()`` follows each turn, so a summarising strategy makes its
    summaries when a live chat would.

    Args:
        chat: The conversation to fill (normally empty).
        conversation: What to add.
        prepare: Call ``prepare_next()`` after every turn.
        on_turn: Called after every turn (progress).
        before_turn: Called with the user message of every turn that has one, before the turn
            is added: where a live chat would make its call (the prompt-cache columns preview
            it).

    Returns:
        For each benchmark turn index, the id of the convmem turn that holds it.
    """
    turn_map = [0] * len(conversation.turns)
    for group in turn_groups(conversation):
        first = conversation.turns[group[0]]
        if before_turn is not None and first.role == "user":
            before_turn(first.text)
        touched = chat.extend(
            [
                {"role": conversation.turns[i].role, "content": conversation.turns[i].text}
                for i in group
            ],
            created_at=conversation.turns[group[-1]].timestamp,
        )
        turn_id = touched[-1].id
        for i in group:
            turn_map[i] = turn_id
        if prepare:
            chat.prepare_next()
        if on_turn is not None:
            on_turn()
    return turn_map


__all__ = ["replay_conversation", "turn_groups"]
