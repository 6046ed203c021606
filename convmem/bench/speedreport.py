"""The speed benchmark's results: per-cell figures, ratios against the competitors, the report.

:class:`SpeedReport` holds what one ``convmem bench speed`` run measured (one
:class:`SizeResult` per history size, one :class:`CellResult` per row), checks the targets, and
prints itself as aligned tables (:func:`format_report`) or JSON. :func:`cell_result` turns raw
timings into a cell and :func:`ratios` compares the competitors with ``Truncate``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from convmem.bench.timing import Samples, percentile

if TYPE_CHECKING:
    from convmem.bench.speed import RecallResult

ROWS: tuple[str, ...] = (
    "truncate",
    "rolling_summary",
    "pipeline",
    "keep_all",
    "langchain",
    "llamaindex",
)
ROW_LABELS: dict[str, str] = {
    "truncate": "Truncate",
    "rolling_summary": "RollingSummary",
    "pipeline": "Pipeline(RS+Trunc)",
    "keep_all": "KeepAll",
    "langchain": "LangChain trim",
    "llamaindex": "LlamaIndex get",
}
CONVMEM_ROWS = ROWS[:4]
COMPETITOR_ROWS = ROWS[4:]


@dataclass
class CellResult:
    """One row at one history size.

    Attributes:
        row: One of :data:`ROWS`.
        messages: History size, in messages.
        calls: Timed calls (warm-up and first call excluded).
        median_us: Median per-call time, in microseconds (None when no call finished).
        p95_us: 95th percentile, in microseconds.
        min_us: Fastest call, in microseconds.
        first_us: convmem only: the first call on the history, which counts the turns it reads.
        kept_messages: Messages the call returned (system prompt included where the library
            holds it; LlamaIndex's buffer holds none).
        seconds: Wall time of the cell, setup excluded.
        capped: The time cap stopped the cell before it had the calls it wanted.
        lower_bound_us: When no call finished within the cap: the call takes longer than this.
        skipped: Why the row was not measured (a library not installed, an error).
        notes: What the reader should know about this cell.
    """

    row: str
    messages: int
    calls: int = 0
    median_us: float | None = None
    p95_us: float | None = None
    min_us: float | None = None
    first_us: float | None = None
    kept_messages: int | None = None
    seconds: float = 0.0
    capped: bool = False
    lower_bound_us: float | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ROW_LABELS.get(self.row, self.row)


@dataclass
class Ratio:
    """How many times slower a competitor is than convmem's ``Truncate`` at one size.

    Attributes:
        competitor: ``"langchain"`` or ``"llamaindex"``.
        value: Competitor median / Truncate median (None if either is missing).
        lower_bound: True when the competitor finished no call within the cap, so ``value``
            is computed from the cap: the real ratio is larger.
    """

    competitor: str
    value: float | None
    lower_bound: bool = False


@dataclass
class SizeResult:
    """Every row at one history size.

    Attributes:
        messages: History size, in messages (``turns`` user/assistant pairs).
        turns: Turns in the history.
        history_tokens: Tokens of the whole history as sent (system prompt included).
        cells: Results by row name.
        ratios: By competitor name.
    """

    messages: int
    turns: int
    history_tokens: int
    cells: dict[str, CellResult]
    ratios: dict[str, Ratio]


@dataclass
class Target:
    """One target from the benchmark issue, and whether this run met it."""

    name: str
    measured: str
    met: bool | None


@dataclass
class SpeedReport:
    """Everything one speed run measured.

    Attributes:
        sizes: History sizes, in messages.
        budget: Prompt budget in tokens (Truncate, LangChain, LlamaIndex).
        encoding: The tokenizer every row counts with.
        repeats: Calls per cell, or None when auto-scaled to about ``cell_seconds``.
        cell_seconds: Target time per convmem cell when auto-scaled.
        cap_seconds: Time cap per competitor cell.
        results: One per size.
        recall: The recall section, or None when not run.
        environment: Python, platform, CPU count, load averages, library versions.
        seconds: Wall time of the whole run.
    """

    sizes: list[int]
    budget: int
    encoding: str
    repeats: int | None
    cell_seconds: float
    cap_seconds: float
    results: list[SizeResult]
    recall: RecallResult | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def cell(self, messages: int, row: str) -> CellResult:
        """The result of ``row`` at history size ``messages``.

        Raises:
            KeyError: That size or row was not measured.
        """
        for size in self.results:
            if size.messages == messages:
                return size.cells[row]
        raise KeyError(messages)

    def targets(self) -> list[Target]:
        """The issue's targets, checked against this run (only those it measured)."""
        out: list[Target] = []
        at_10k = [s for s in self.results if s.messages == 10_000]
        if at_10k:
            size = at_10k[0]
            trunc = size.cells["truncate"]
            if trunc.median_us is not None:
                out.append(
                    Target(
                        "Truncate context build at 10k messages well under 1 ms",
                        _fmt_us(trunc.median_us),
                        trunc.median_us < 1_000,
                    )
                )
            for name, ratio in size.ratios.items():
                if ratio.value is None:
                    continue
                out.append(
                    Target(
                        f"Truncate >= 100x faster than {ROW_LABELS[name]} at 10k",
                        _fmt_ratio(ratio),
                        ratio.value >= 100,
                    )
                )
        rec = self.recall
        if rec is not None and rec.query_p95_ms is not None and rec.stored_turns >= 10_000:
            out.append(
                Target(
                    f"recall query p95 under 50 ms at {rec.stored_turns:,} turns",
                    f"{rec.query_p95_ms:.1f} ms",
                    rec.query_p95_ms < 50,
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (times in microseconds, recall in milliseconds)."""
        data = asdict(self)
        data["targets"] = [asdict(t) for t in self.targets()]
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def format_table(self) -> str:
        """The report as aligned text tables."""
        return format_report(self)


def cell_result(row: str, messages: int, samples: Samples) -> CellResult:
    """The figures of one cell from its raw timings (times in microseconds)."""
    cell = CellResult(row=row, messages=messages, seconds=round(samples.seconds, 3))
    cell.kept_messages = samples.kept
    cell.capped = samples.capped
    if samples.error is not None:
        cell.skipped = samples.error
    times = sorted(t / 1_000 for t in samples.times_ns)
    cell.calls = len(times)
    if times:
        cell.median_us = round(statistics.median(times), 2)
        cell.p95_us = round(percentile(times, 0.95), 2)
        cell.min_us = round(times[0], 2)
    elif samples.capped and samples.unfinished_ns:
        cell.lower_bound_us = round(samples.unfinished_ns / 1_000, 2)
    if samples.capped:
        done = f"{cell.calls} call(s) finished" if cell.calls else "no call finished"
        cell.notes.append(f"stopped by the time cap: {done}")
    return cell


def ratios(cells: dict[str, CellResult]) -> dict[str, Ratio]:
    """Each competitor row against the ``truncate`` row of the same size."""
    base = cells["truncate"].median_us
    out: dict[str, Ratio] = {}
    for row in COMPETITOR_ROWS:
        cell = cells.get(row)
        if cell is None or cell.skipped is not None or not base:
            out[row] = Ratio(row, None)
        elif cell.median_us is not None:
            out[row] = Ratio(row, round(cell.median_us / base, 1))
        elif cell.lower_bound_us is not None:
            out[row] = Ratio(row, round(cell.lower_bound_us / base, 1), lower_bound=True)
        else:
            out[row] = Ratio(row, None)
    return out


def _fmt_us(us: float) -> str:
    if us < 1_000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1_000:.1f} ms"
    return f"{us / 1_000_000:.2f} s"


def format_cell(cell: CellResult) -> str:
    """A cell's median as short text (``*`` cut by the cap, ``> `` a lower bound)."""
    if cell.skipped is not None:
        return "skipped"
    if cell.median_us is not None:
        return _fmt_us(cell.median_us) + ("*" if cell.capped else "")
    if cell.lower_bound_us is not None:
        return "> " + _fmt_us(cell.lower_bound_us)
    return "-"


def _fmt_ratio(ratio: Ratio) -> str:
    if ratio.value is None:
        return "-"
    text = f"{ratio.value:,.0f}×" if ratio.value >= 10 else f"{ratio.value:.1f}×"
    return ("> " + text) if ratio.lower_bound else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_report(report: SpeedReport) -> str:
    """The report as aligned text: medians and ratios, then per-cell details, then recall."""
    env = report.environment
    lines = [
        f"convmem speed benchmark: per-call context build (no network), budget "
        f"{report.budget:,} tokens, {report.encoding} (offline)",
        f"python {env.get('python')}, {env.get('cpu_count')} CPUs, load average "
        f"{env.get('load_average')} at start, {env.get('load_average_end')} at end; "
        f"{report.seconds:.0f} s",
        "",
        "Median per call (* = cut short by the time cap; > = no call finished within it)",
    ]
    header = ["messages", *(ROW_LABELS[r] for r in ROWS), "LangChain ÷ Trunc", "LlamaIndex ÷ Trunc"]
    rows = [
        [
            f"{size.messages:,}",
            *(format_cell(size.cells[r]) if r in size.cells else "-" for r in ROWS),
            *(_fmt_ratio(size.ratios[r]) for r in COMPETITOR_ROWS),
        ]
        for size in report.results
    ]
    lines += _table(header, rows)
    lines += ["", "Details (first = first call on the history, which counts the turns it reads)"]
    header = ["messages", "row", "calls", "median", "p95", "first call", "kept msgs", "notes"]
    detail: list[list[str]] = []
    for size in report.results:
        for r in ROWS:
            cell = size.cells.get(r)
            if cell is None:
                continue
            notes = cell.skipped if cell.skipped is not None else "; ".join(cell.notes)
            detail.append(
                [
                    f"{size.messages:,}",
                    cell.label,
                    str(cell.calls),
                    format_cell(cell) if cell.skipped is None else "skipped",
                    _fmt_us(cell.p95_us) if cell.p95_us is not None else "-",
                    _fmt_us(cell.first_us) if cell.first_us is not None else "-",
                    str(cell.kept_messages) if cell.kept_messages is not None else "-",
                    notes,
                ]
            )
    lines += _table(header, detail, left=2)
    rec = report.recall
    if rec is not None:
        lines += ["", rec.format_text()]
    targets = report.targets()
    if targets:
        lines += ["", "Targets"]
        for t in targets:
            verdict = "met" if t.met else ("NOT met" if t.met is False else "?")
            lines.append(f"  {t.name}: {t.measured} -> {verdict}")
    return "\n".join(lines)


__all__ = [
    "COMPETITOR_ROWS",
    "CONVMEM_ROWS",
    "ROWS",
    "ROW_LABELS",
    "CellResult",
    "Ratio",
    "SizeResult",
    "SpeedReport",
    "Target",
    "cell_result",
    "format_cell",
    "format_report",
    "ratios",
]
