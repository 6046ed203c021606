"""Time expressions in a message ("last May", "two weeks ago", "on 8 May, 2023") as time ranges.

:class:`~convmem.strategies.VectorRecall` favours past turns stored in a time the new message
mentions. :func:`time_ranges` finds the expressions and turns them into half-open ranges of
Unix time, with some slack on each side (people are vague about dates, and a thing is often
talked about a day or two after it happened). Calendar arithmetic is in UTC; relative
expressions count back from ``reference`` (recall passes the time of the conversation's newest
turn, so an imported log is read as of its own last day)::

    time_ranges("what did I do last May?", reference=time.time())
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "couple of": 2,
    "a couple of": 2, "few": 3, "a few": 3, "several": 3,
}  # fmt: skip
_NUM_RE = r"\d{1,3}|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_DAY = 86_400.0

# "8 May, 2023", "8th of May 2023", "May 8, 2023", "May 8th", "May 2023", "last May", "in May"
_DAY_MONTH = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})\b\.?(?:,?\s+(\d{{4}}))?", re.I
)
_MONTH_DAY = re.compile(
    rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*(?:am|pm|:))(?:,?\s+(\d{{4}}))?",
    re.I,
)
_MONTH_YEAR = re.compile(rf"\b({_MONTH_RE})\.?,?\s+(\d{{4}})\b", re.I)
_MONTH_ALONE = re.compile(
    rf"\b(last|this|in|during|since|of|early|late|mid)\s+({_MONTH_RE})\b", re.I
)
_YEAR = re.compile(r"\b(?:in|of|during|since|year)\s+((?:19|20)\d{2})\b", re.I)
_AGO = re.compile(rf"\b({_NUM_RE})\s+(day|week|month|year)s?\s+ago\b", re.I)
_LAST = re.compile(r"\b(last|this|past|previous)\s+(week|weekend|month|year)\b", re.I)
_YESTERDAY = re.compile(r"\b(yesterday|today|tonight|this morning|last night)\b", re.I)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _stamp(dt: datetime) -> float:
    return dt.timestamp()


def _month_range(year: int, month: int, slack_days: float = 3) -> tuple[float, float]:
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    last = calendar.monthrange(year, month)[1]
    end = start + timedelta(days=last)
    return (_stamp(start) - slack_days * _DAY, _stamp(end) + slack_days * _DAY)


def _day_range(year: int, month: int, day: int, slack_days: float = 2) -> tuple[float, float]:
    start = datetime(year, month, day, tzinfo=timezone.utc)
    return (_stamp(start) - slack_days * _DAY, _stamp(start) + (1 + slack_days) * _DAY)


def _latest_year(month: int, ref: datetime, *, strictly_before: bool) -> int:
    """The year of the most recent ``month`` at (or before) the reference."""
    if month < ref.month or (month == ref.month and not strictly_before):
        return ref.year
    return ref.year - 1


def _number(word: str) -> int:
    word = word.lower()
    return int(word) if word.isdigit() else _NUMBER_WORDS.get(word, 1)


def time_ranges(text: str, reference: float) -> list[tuple[float, float]]:
    """The time ranges that ``text`` mentions, as ``(start, end)`` Unix times.

    Understood: full dates ("8 May, 2023", "May 8th 2023", "May 8"), months with or without a
    year ("May 2023", "last May", "in May" = the latest May at or before the reference),
    years ("in 2022"), "N days/weeks/months/years ago" (digits or words), "last/this
    week/weekend/month/year", "yesterday", "today", "last night". Each range has slack
    (about two days around a date, three around a month, half the unit around "N ... ago").

    Args:
        text: The message.
        reference: "Now" for relative expressions (Unix time).

    Returns:
        Ranges in the order found; empty when the text names no time.
    """
    ref = _utc(reference)
    out: list[tuple[float, float]] = []
    spans: list[tuple[int, int]] = []

    def free(m: re.Match[str]) -> bool:
        return all(m.end() <= a or m.start() >= b for a, b in spans)

    def take(m: re.Match[str], rng: tuple[float, float]) -> None:
        spans.append((m.start(), m.end()))
        out.append(rng)

    for m in _DAY_MONTH.finditer(text):
        day, month = int(m.group(1)), _MONTHS[m.group(2).lower()]
        year = int(m.group(3)) if m.group(3) else _latest_year(month, ref, strictly_before=False)
        if 1 <= day <= calendar.monthrange(year, month)[1]:
            take(m, _day_range(year, month, day))
    for m in _MONTH_DAY.finditer(text):
        if not free(m):
            continue
        month, day = _MONTHS[m.group(1).lower()], int(m.group(2))
        year = int(m.group(3)) if m.group(3) else _latest_year(month, ref, strictly_before=False)
        if 1 <= day <= calendar.monthrange(year, month)[1]:
            take(m, _day_range(year, month, day))
    for m in _MONTH_YEAR.finditer(text):
        if free(m):
            take(m, _month_range(int(m.group(2)), _MONTHS[m.group(1).lower()]))
    for m in _MONTH_ALONE.finditer(text):
        if not free(m):
            continue
        if m.group(2).lower() == "may" and m.group(1).lower() not in ("last", "in", "during"):
            continue  # "this may be", "of may" are too often the verb
        month = _MONTHS[m.group(2).lower()]
        year = _latest_year(month, ref, strictly_before=m.group(1).lower() == "last")
        take(m, _month_range(year, month))
    for m in _YEAR.finditer(text):
        if free(m):
            year = int(m.group(1))
            start = datetime(year, 1, 1, tzinfo=timezone.utc)
            end = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
            take(m, (_stamp(start) - 7 * _DAY, _stamp(end) + 7 * _DAY))
    for m in _AGO.finditer(text):
        n, unit = _number(m.group(1)), m.group(2).lower()
        days = {"day": 1, "week": 7, "month": 30.44, "year": 365.25}[unit] * n
        half = max(1.0, {"day": 1, "week": 3.5, "month": 15, "year": 182}[unit])
        centre = reference - days * _DAY
        take(m, (centre - half * _DAY, centre + half * _DAY))
    for m in _LAST.finditer(text):
        which, unit = m.group(1).lower(), m.group(2).lower()
        back = 0 if which == "this" else 1
        if unit in ("week", "weekend"):
            monday = (ref - timedelta(days=ref.weekday())).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            start = monday - timedelta(weeks=back)
            if unit == "weekend":
                start += timedelta(days=4)  # Friday to Monday
                end = start + timedelta(days=4)
            else:
                end = start + timedelta(weeks=1)
            take(m, (_stamp(start) - _DAY, _stamp(end) + 2 * _DAY))
        elif unit == "month":
            month, year = ref.month - back, ref.year
            if month < 1:
                month, year = 12, year - 1
            take(m, _month_range(year, month))
        else:
            year = ref.year - back
            start = datetime(year, 1, 1, tzinfo=timezone.utc)
            end = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
            take(m, (_stamp(start), _stamp(end)))
    for m in _YESTERDAY.finditer(text):
        word = m.group(1).lower()
        midnight = ref.replace(hour=0, minute=0, second=0, microsecond=0)
        if word in ("yesterday", "last night"):
            midnight -= timedelta(days=1)
        take(m, (_stamp(midnight) - 0.5 * _DAY, _stamp(midnight) + 1.5 * _DAY))
    return out


def in_ranges(ts: float, ranges: list[tuple[float, float]]) -> bool:
    """Whether ``ts`` falls in any of ``ranges``."""
    return any(a <= ts < b for a, b in ranges)


__all__ = ["in_ranges", "time_ranges"]
