"""Benchmark report output: a plain-text table, Markdown, JSON, CSV and a PNG plot.

All functions take a :class:`~convmem.bench.results.BenchReport`. :func:`write_report` writes
``<name>.json``, ``<name>.csv``, ``<name>.md`` and ``<name>.png`` into a directory.
matplotlib is imported only by :func:`write_plot` (Agg backend, no display needed).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convmem import MissingExtraError
from convmem.bench.caching import PRICE_MODEL, cache_targets, cost_per_1000, price
from convmem.bench.results import BenchReport, RowResult, savings

_SHORT_CATEGORY = {
    "multi-hop": "multi-hop",
    "open-domain": "open-dom.",
    "single-hop": "single-hop",
    "adversarial": "advers.",
    "correction": "correct.",
    "preference": "pref.",
}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _int(value: float) -> str:
    return f"{round(value):,}"


def _budget(row: RowResult) -> str:
    return "-" if row.spec.budget is None else f"{row.spec.budget:,}"


def _has_stale(report: BenchReport) -> bool:
    return any(r.stale_only() is not None for r in report.rows)


def _has_summary(report: BenchReport) -> bool:
    return any(r.spec.uses_summary for r in report.rows)


def table_rows(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    """The table as a header and rows of cell strings (shared by the text and Markdown forms).

    Columns: strategy, budget, tokens per call, savings vs the full history, the cacheable share
    of the replayed calls' prompt tokens and the prompt cost of 1,000 questions without and with
    prompt caching (at :data:`~convmem.bench.caching.PRICE_MODEL`'s price, see
    :mod:`convmem.bench.caching`), evidence recall per category, evidence recall overall, share
    of questions with all evidence, answer-keyword recall, stale-only share (when some question
    has a corrected fact), summariser calls and tokens (when a row summarises), wall seconds.
    """
    stale = _has_stale(report)
    summary = _has_summary(report)
    at = price()
    header = [
        "strategy",
        "budget",
        "tokens/call",
        "savings",
        "cacheable",
        "$/1k q",
        "cached $/1k q",
    ]
    header += [_SHORT_CATEGORY.get(c, c) for c in report.categories]
    header += ["evidence", "all ev.", "answer kw"]
    if stale:
        header.append("stale only")
    if summary:
        header += ["dropped, not summarised", "summ. calls", "summ. tokens"]
    header.append("wall s")
    full = report.full_tokens
    rows: list[list[str]] = []
    for r in report.rows:
        saved = savings(r.mean_tokens, full)
        cells = [
            r.spec.label,
            _budget(r),
            _int(r.mean_tokens),
            "-" if saved is None or r.spec.kind == "full" else f"{saved:.0%}",
        ]
        money = cost_per_1000(r.mean_tokens, r.cacheable_share, at)
        cells += [
            "-" if r.cacheable_share is None else f"{r.cacheable_share:.0%}",
            f"{money.without_cache:.2f}",
            f"{money.with_cache:.2f}" if r.cacheable_share is not None else "-",
        ]
        cells += [_share(r.evidence_recall(c)) for c in report.categories]
        cells += [_share(r.evidence_recall()), _share(r.all_evidence()), _share(r.keyword_recall())]
        if stale:
            cells.append(_share(r.stale_only()))
        if summary:
            if r.spec.uses_summary:
                failed = f" ({r.summary_failures} failed)" if r.summary_failures else ""
                cells += [
                    _share(r.not_summarised()),
                    f"{r.summary_calls}{failed}",
                    f"{r.summary_tokens:,}",
                ]
            else:
                cells += ["-", "-", "-"]
        cells.append(f"{r.wall_seconds:.1f}")
        rows.append(cells)
    return header, rows


def format_table(report: BenchReport) -> str:
    """The table as aligned plain text (text columns left, numbers right)."""
    header, rows = table_rows(report)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_markdown_table(report: BenchReport) -> str:
    """The table in GitHub Markdown."""
    header, rows = table_rows(report)
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def notes(report: BenchReport) -> list[str]:
    """Plain sentences that explain the table (what ran, what the columns mean)."""
    s = report.settings
    out = [
        f"Dataset: {report.dataset}; {s.get('turns', '?')} messages, "
        f"{s.get('questions', '?')} questions.",
        f"Tokens: {s.get('token_counter', '?')}, mean prompt tokens per question "
        "(context + question); savings vs the full history.",
        "Evidence: share of each question's evidence turns sent verbatim (kept or recalled), "
        "by category and overall; 'all ev.': share of questions with all their evidence sent.",
        "Answer kw: share of the gold answer's content words found in the context (the only "
        "credit a summary gets: summarised turns are not 'sent').",
    ]
    at = price()
    out.append(
        "Cacheable: share of prompt tokens in a prefix shared with the previous call (what a "
        "provider's prompt cache can serve), over the calls a live chat makes during the replay "
        "(one per user turn, previewed before the turn is added). $/1k q: prompt cost of 1,000 "
        f"questions at the row's tokens/call, at {PRICE_MODEL}'s price (${at.input:g} per million "
        f"input tokens, ${at.cached_input:g} cached; convmem.pricing); cached: with the cacheable "
        "share at the cached price. Summariser calls and replies are not included."
    )
    if "roles" in s:
        out.append(f"Roles: {s['roles']}.")
    if _has_stale(report):
        out.append(
            "Stale only: share of corrected facts whose context holds the old value without "
            "the new one (the newer value must win)."
        )
    if report.summarizer is not None:
        out.append(
            f"Summariser: {report.summarizer}; max_summary_tokens="
            f"{s.get('max_summary_tokens')}, summary rows use a window of budget + "
            f"{s.get('reply_reserve')} tokens and summarise at 70% of it."
        )
        out.append(
            "Dropped, not summarised: share of evidence turns that a summary row neither sent "
            "nor covered by its summary (0 while the summariser works; the plan's notes say why "
            "otherwise)."
        )
        if any(r.summary_reused for r in report.rows):
            out.append(
                "Identical summariser requests (the summary with and without recall) were "
                "answered once; summariser calls, tokens and wall s count them as if made."
            )
    if "embedder" in s:
        out.append(
            f"Recall: {s['embedder']}, {_recall_budget(s)}; each text is embedded once per "
            "run, so the first recall row's wall s includes embedding them all."
        )
    out.append(
        f"Run time {report.seconds:.1f} s (of which {report.setup_seconds:.1f} s loading the "
        "embedding model)."
    )
    return out


def targets(report: BenchReport) -> list[str]:
    """The issue's prompt-cache target checked at each budget (empty without both a default
    and a sliding-window ``Truncate`` row at some budget): lines after a ``Targets`` heading."""
    checks = cache_targets(report)
    if not checks:
        return []
    return ["Targets", *(f"  {c.describe()}" for c in checks)]


def _recall_budget(settings: Mapping[str, Any]) -> str:
    """How the recall rows chose how much to recall: a fixed k, or the split policy."""
    k = settings.get("recall_k")
    if k is not None:
        return f"k={k}"
    return f"split={settings.get('recall_split') or 'default_recall_budget'} (no fixed k)"


def to_markdown(report: BenchReport) -> str:
    """A Markdown section: the command, the table and its notes (what the README shows)."""
    parts = [f"## convmem bench: {report.name}", ""]
    if report.command:
        parts += ["```", report.command, "```", ""]
    parts += [format_markdown_table(report), ""]
    parts += [f"- {n}" for n in notes(report)]
    lines = targets(report)
    if lines:
        parts += ["", f"{lines[0]}:", *(f"- {line.strip()}" for line in lines[1:])]
    return "\n".join(parts) + "\n"


def to_json(report: BenchReport, *, questions: bool = True) -> str:
    """The report as JSON, with its Markdown table under ``"markdown"``."""
    data = report.to_dict(questions=questions)
    data["markdown"] = format_markdown_table(report)
    data["notes"] = notes(report)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_csv(report: BenchReport) -> str:
    """One CSV line per row, every metric and every category as its own column."""
    full = report.full_tokens
    fields = [
        "key",
        "strategy",
        "label",
        "budget",
        "questions",
        "mean_tokens",
        "savings",
        "evidence_recall",
        "all_evidence",
        "keyword_recall",
        "stale_only",
        "not_summarised",
    ]
    for c in report.categories:
        fields += [f"evidence_recall[{c}]", f"all_evidence[{c}]", f"keyword_recall[{c}]"]
    fields += [
        "summary_calls",
        "summary_failures",
        "summary_prompt_tokens",
        "summary_completion_tokens",
        "summary_reused",
        "summary_seconds",
        "wall_seconds",
        "replayed_calls",
        "replayed_prompt_tokens",
        "replayed_shared_tokens",
        "cacheable_share",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in report.rows:
        d = r.to_dict(report.categories, full)
        row = {k: d.get(k) for k in fields if k in d}
        row["label"] = r.spec.label
        for c in report.categories:
            by = d["by_category"][c]
            row[f"evidence_recall[{c}]"] = by["evidence_recall"]
            row[f"all_evidence[{c}]"] = by["all_evidence"]
            row[f"keyword_recall[{c}]"] = by["keyword_recall"]
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


_MARKERS = {
    "full": "*",
    "truncate": "o",
    "recall": "s",
    "summary": "^",
    "summary+recall": "D",
    "sliding": "v",
}
_SHORT_KIND = {
    "full": "full",
    "truncate": "trunc",
    "sliding": "sliding",
    "recall": "recall",
    "summary": "summ",
    "summary+recall": "summ+rec",
}
# Where a label may sit around its point: (dx, dy) in points and the text's alignment.
_PLACES = {
    "right": (7, 0, "left", "center"),
    "upright": (5, 5, "left", "bottom"),
    "downright": (5, -5, "left", "top"),
    "left": (-7, 0, "right", "center"),
    "upleft": (-5, 5, "right", "bottom"),
    "downleft": (-5, -5, "right", "top"),
    "up": (0, 8, "center", "bottom"),
    "down": (0, -8, "center", "top"),
}
_ORDER = {
    None: ("right", "upright", "downright", "left", "upleft", "downleft", "up", "down"),
    # The upper of two points of one row labels above it, the lower below: each label then sits
    # on its own marker's side and cannot be read as the other's.
    "up": ("upright", "upleft", "up"),
    "down": ("downright", "downleft", "down"),
}


@dataclass
class _Label:
    x: float
    y: float
    text: str
    color: str
    size: float  # marker area (points^2), to keep labels off the marker
    prefer: str | None = None


def _place_labels(fig: Any, ax: Any, labels: Sequence[_Label], fontsize: float = 7) -> None:
    """Annotates each point with its label where it overlaps nothing already drawn.

    Tries the positions around the point in order and takes the first that overlaps no other
    label, marker or the legend and stays inside the axes (else the one that overlaps least).
    """
    fig.canvas.draw()
    px = fig.dpi / 72.0
    box = ax.get_window_extent()
    legend = ax.get_legend()
    taken: list[tuple[float, float, float, float]] = []
    if legend is not None:
        lb = legend.get_window_extent()
        taken.append((lb.x0, lb.y0, lb.x1, lb.y1))
    points = [(ax.transData.transform((lab.x, lab.y)), lab) for lab in labels]
    for (cx, cy), lab in points:
        r = (lab.size**0.5) / 2 * px + 1
        taken.append((cx - r, cy - r, cx + r, cy + r))

    def overlap(
        a: tuple[float, float, float, float], b: tuple[float, float, float, float]
    ) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    for (cx, cy), lab in points:
        w = 0.6 * fontsize * len(lab.text) * px
        h = 1.25 * fontsize * px
        r = (lab.size**0.5) / 2 * px
        best: tuple[float, str, tuple[float, float, float, float]] | None = None
        for name in _ORDER[lab.prefer]:
            dx, dy, ha, va = _PLACES[name]
            ox = cx + dx * px + (r if dx > 0 else -r if dx < 0 else 0)
            oy = cy + dy * px + (r if dy > 0 else -r if dy < 0 else 0)
            x0 = ox if ha == "left" else ox - w if ha == "right" else ox - w / 2
            y0 = oy if va == "bottom" else oy - h if va == "top" else oy - h / 2
            rect = (x0, y0, x0 + w, y0 + h)
            own = (cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
            score = sum(overlap(rect, t) for t in taken if t != own)
            outside = (
                max(0.0, box.x0 - rect[0])
                + max(0.0, rect[2] - box.x1)
                + max(0.0, box.y0 - rect[1])
                + max(0.0, rect[3] - box.y1)
            )
            score += outside * h * 4
            if best is None or score < best[0]:
                best = (score, name, rect)
            if score == 0:
                break
        assert best is not None
        _, name, rect = best
        dx, dy, ha, va = _PLACES[name]
        shift = (lab.size**0.5) / 2
        ax.annotate(
            lab.text,
            (lab.x, lab.y),
            textcoords="offset points",
            xytext=(
                dx + (shift if dx > 0 else -shift if dx < 0 else 0),
                dy + (shift if dy > 0 else -shift if dy < 0 else 0),
            ),
            ha=ha,
            va=va,
            fontsize=fontsize,
            color=lab.color,
        )
        taken.append(rect)


def write_plot(report: BenchReport, path: str | os.PathLike[str]) -> Path:
    """A PNG of mean tokens per call (x, log scale) against evidence recall (y).

    One labelled point per strategy and budget; summary rows also get a hollow point for their
    answer-keyword recall, since their evidence lives in the summary.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("the benchmark plot", "bench", "matplotlib") from exc
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        seen: set[str] = set()
        labels: list[_Label] = []
        for r in report.rows:
            x = max(r.mean_tokens, 1.0)
            y = r.evidence_recall()
            if y is None:
                continue
            color = f"C{list(_MARKERS).index(r.spec.kind)}"
            label = r.spec.label if r.spec.kind not in seen else None
            seen.add(r.spec.kind)
            full = r.spec.kind == "full"
            ax.scatter(
                [x],
                [y],
                marker=_MARKERS[r.spec.kind],
                color=color,
                s=140 if full else 60,
                label=label,
                zorder=3 if full else 2,
            )
            text = _SHORT_KIND[r.spec.kind]
            if r.spec.budget is not None:
                text += f" {r.spec.budget / 1000:g}k"
            kw = r.keyword_recall()
            # Only where the summary adds something: an equal point would hide the first.
            hollow = r.spec.uses_summary and kw is not None and abs(kw - y) > 0.005
            if hollow and kw is not None:
                ax.scatter(
                    [x],
                    [kw],
                    marker=_MARKERS[r.spec.kind],
                    facecolors="none",
                    edgecolors=color,
                    s=60,
                )
                up = kw > y
                labels.append(_Label(x, y, text, color, 60, "down" if up else "up"))
                labels.append(_Label(x, kw, f"{text} kw", color, 60, "up" if up else "down"))
            else:
                labels.append(_Label(x, y, text, color, 140 if full else 60))
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator

        plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="both", labelsize=8)
        ax.set_xlabel("mean prompt tokens per call (log scale)")
        ax.set_ylabel("evidence recall (share of evidence turns sent)")
        ax.set_ylim(-0.03, 1.05)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"convmem bench {report.name}: {report.dataset}", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        if _has_summary(report):
            fig.text(
                0.01,
                0.01,
                "hollow: answer-keyword recall of summary rows",
                fontsize=7,
                color="0.4",
            )
        fig.tight_layout()
        _place_labels(fig, ax, labels)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def write_report(
    report: BenchReport, out_dir: str | os.PathLike[str], *, plot: bool = True
) -> dict[str, Path]:
    """Writes ``<name>.json``, ``<name>.csv``, ``<name>.md`` and ``<name>.png``.

    Args:
        report: The report.
        out_dir: The directory (created if missing).
        plot: Also write the PNG.

    Returns:
        The paths written, by kind (``"json"``, ``"csv"``, ``"md"``, ``"png"``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / f"{report.name}.json",
        "csv": out / f"{report.name}.csv",
        "md": out / f"{report.name}.md",
    }
    paths["json"].write_text(to_json(report), encoding="utf-8")
    paths["csv"].write_text(to_csv(report), encoding="utf-8")
    paths["md"].write_text(to_markdown(report), encoding="utf-8")
    if plot:
        paths["png"] = write_plot(report, out / f"{report.name}.png")
    return paths


__all__ = [
    "format_markdown_table",
    "format_table",
    "notes",
    "table_rows",
    "to_csv",
    "to_json",
    "to_markdown",
    "write_plot",
    "write_report",
]
