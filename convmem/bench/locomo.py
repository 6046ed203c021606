"""Load LoCoMo (Maharana et al., 2024) into :class:`~convmem.bench.data.BenchConversation`.

LoCoMo is licensed CC BY-NC 4.0, so convmem ships no copy: pass the path of ``locomo10.json``
(snap-research/locomo, ``data/locomo10.json``) or of a subset with the same schema.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from typing import Any

from convmem.bench.data import (
    BenchConversation,
    BenchQuestion,
    BenchTurn,
    Role,
    content_words,
)
from convmem.errors import UsageError

CATEGORY_NAMES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}

# The "D" is optional because the data has "D:11:26" (meaning D11:26); searching rather than
# matching also splits "D8:6; D9:17" and "D9:1 D4:4 D4:6" and finds nothing in a bare "D".
_EVIDENCE_RE = re.compile(r"D?(\d+):(\d+)")
_SESSION_RE = re.compile(r"session_(\d+)")


def parse_evidence(raw: str) -> tuple[str, ...]:
    """Every dialogue id inside one LoCoMo evidence string, normalised to ``"D<s>:<t>"``.

    Args:
        raw: One entry of a question's ``evidence`` list, possibly malformed.

    Returns:
        The ids in order, e.g. ``"D8:6; D9:17"`` gives ``("D8:6", "D9:17")``, ``"D:11:26"``
        gives ``("D11:26",)``, ``"D30:05"`` gives ``("D30:5",)`` and ``"D"`` gives ``()``.
    """
    return tuple(f"D{int(s)}:{int(t)}" for s, t in _EVIDENCE_RE.findall(raw))


def render_turn(speaker: str, text: str, caption: str | None) -> str:
    """A LoCoMo turn as message content: ``"Speaker: text"`` plus ``" [image: caption]"``."""
    line = f"{speaker}: {text.strip()}"
    if caption:
        line += f" [image: {caption.strip()}]"
    return line


def session_header(session: int, date: str | None) -> str:
    """The line before a session's first turn, e.g. ``"(session 3, 1:56 pm on 8 May, 2023)"``."""
    return f"(session {session}, {date})" if date else f"(session {session})"


_DATE_RE = re.compile(
    r"(\d{1,2}):(\d{2})\s*(am|pm)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})", re.I
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
        start=1,
    )
}


def parse_session_date(raw: str | None) -> float | None:
    """A LoCoMo session date ("1:56 pm on 8 May, 2023") as Unix time (read as UTC).

    Returns:
        The time, or None when the text is missing or not in that form.
    """
    if not raw:
        return None
    m = _DATE_RE.search(raw)
    if m is None:
        return None
    hour, minute, half, day, month_name, year = m.groups()
    month = _MONTHS.get(month_name.lower())
    if month is None:
        return None
    h = int(hour) % 12 + (12 if half.lower() == "pm" else 0)
    try:
        when = datetime(int(year), month, int(day), h, int(minute), tzinfo=timezone.utc)
    except ValueError:
        return None
    return when.timestamp()


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UsageError(f"not LoCoMo data: {where} has no {key!r}")
    return obj[key]


def _load_conversation(sample: Any, index: int) -> BenchConversation:
    if not isinstance(sample, dict):
        raise UsageError(f"not LoCoMo data: conversation {index} is not an object")
    conv_id = str(sample.get("sample_id") or f"conv-{index}")
    where = f"conversation {conv_id}"
    dialogue = _require(sample, "conversation", where)
    qa = _require(sample, "qa", where)
    roles: dict[str, Role] = {
        str(_require(dialogue, "speaker_a", where)): "user",
        str(_require(dialogue, "speaker_b", where)): "assistant",
    }

    # Sessions are numbered keys; some files also hold date keys for sessions that have no turns
    # (conv-26 dates sessions 20-35 but has 19), so iterate over the turn lists, in number order.
    sessions = sorted(int(m.group(1)) for k in dialogue if (m := _SESSION_RE.fullmatch(k)))
    turns: list[BenchTurn] = []
    by_dia_id: dict[str, int] = {}
    for s in sessions:
        raw_date = dialogue.get(f"session_{s}_date_time")
        date = str(raw_date).strip() if raw_date else None
        start = parse_session_date(date)
        for j, raw in enumerate(dialogue[f"session_{s}"]):
            speaker = str(_require(raw, "speaker", f"{where} session {s} turn {j + 1}"))
            if speaker not in roles:
                raise UsageError(
                    f"{where} session {s}: speaker {speaker!r} is neither speaker_a nor speaker_b"
                )
            caption = raw.get("blip_caption") or None
            text = render_turn(speaker, str(raw.get("text", "")), caption)
            if j == 0:
                # Temporal questions are answered from session dates ("yesterday" in a session
                # dated 8 May), so the date must be in the text the model sees, not only here.
                text = f"{session_header(s, date)}\n{text}"
            parsed = parse_evidence(str(raw.get("dia_id", "")))
            source_id = parsed[0] if parsed else f"D{s}:{j + 1}"
            by_dia_id.setdefault(source_id, len(turns))
            turns.append(
                BenchTurn(
                    turn_id=len(turns),
                    role=roles[speaker],
                    text=text,
                    session=s,
                    date=date,
                    source_id=source_id,
                    image_caption=caption.strip() if caption else None,
                    # A minute per message keeps the turns of a session in order.
                    timestamp=None if start is None else start + 60.0 * j,
                )
            )

    questions = tuple(_load_question(q, by_dia_id, where) for q in qa)
    return BenchConversation(conversation_id=conv_id, turns=tuple(turns), questions=questions)


def _answer_text(value: Any) -> str | None:
    # Some gold answers are JSON numbers (2022, 3); the metric works on text.
    return None if value is None else str(value)


def _load_question(raw: Any, by_dia_id: dict[str, int], where: str) -> BenchQuestion:
    question = str(_require(raw, "question", f"{where} qa"))
    category_num = _require(raw, "category", f"{where} qa {question!r}")
    try:
        category = CATEGORY_NAMES[int(category_num)]
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"{where}: unknown LoCoMo category {category_num!r}") from None

    resolved: dict[int, None] = {}
    unresolved: dict[str, None] = {}
    for entry in raw.get("evidence") or ():
        for dia_id in parse_evidence(str(entry)):
            if dia_id in by_dia_id:
                resolved.setdefault(by_dia_id[dia_id], None)
            else:
                unresolved.setdefault(dia_id, None)

    answer = _answer_text(raw.get("answer"))
    return BenchQuestion(
        question=question,
        answer=answer,
        category=category,
        evidence_turn_ids=tuple(resolved),
        unresolved_evidence=tuple(unresolved),
        answer_keywords=content_words(answer) if answer is not None else (),
        adversarial_answer=_answer_text(raw.get("adversarial_answer")),
    )


def load_locomo(path: str | os.PathLike[str]) -> list[BenchConversation]:
    """Load a LoCoMo file (``locomo10.json`` or a subset) as benchmark conversations.

    Roles: ``speaker_a`` becomes ``"user"`` and ``speaker_b`` ``"assistant"``. LoCoMo is a chat
    between two people, but the chat API has only these two conversational roles, and the
    questions are asked afterwards as the next user message; any fixed mapping would do, and this
    one keeps each person on one role across sessions. Each turn's text keeps the speaker's name
    (``"Caroline: ..."``), so nothing is lost by the mapping.

    Within a session speakers alternate. A session may start with either speaker, so across a
    session boundary two consecutive turns can share a role (5-17 times per conversation). They
    are kept as separate turns, not merged: the chat API accepts consecutive same-role messages,
    and one turn per ``dia_id`` keeps evidence ids exact.

    Rendering: ``"Speaker: text"`` plus ``" [image: <blip_caption>]"`` for image turns (a third
    of the evidence is only in captions); each session's first turn starts with a line
    ``"(session N, <date>)"`` because temporal questions need the dates in the context.
    :attr:`BenchTurn.date` also holds the session date for every turn.

    Known data faults are absorbed: malformed evidence strings are parsed with
    :func:`parse_evidence`; ids that name no turn go to
    :attr:`BenchQuestion.unresolved_evidence`; empty evidence lists stay empty; numeric answers
    become strings. Adversarial questions (category 5) have ``answer=None`` and their misleading
    answer in ``adversarial_answer``; the two that also carry an ``answer`` keep it.

    Args:
        path: Path to the JSON file.

    Returns:
        The conversations in file order.

    Raises:
        UsageError: If the file is not LoCoMo-shaped JSON (missing keys, an unknown speaker or
            category).
        OSError: If the file cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{os.fspath(path)!r} is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise UsageError(f"{os.fspath(path)!r}: expected a JSON list of conversations")
    return [_load_conversation(sample, i) for i, sample in enumerate(data)]


__all__ = [
    "CATEGORY_NAMES",
    "load_locomo",
    "parse_evidence",
    "parse_session_date",
    "render_turn",
    "session_header",
]
