"""Tests for the speed benchmark: structure and fairness of what it measures, never timings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from convmem.bench import speed, speedreport
from convmem.bench.speed import RecallResult, run_speed
from convmem.bench.speedreport import CellResult, Ratio, SizeResult, SpeedReport
from convmem.bench.synth import make_history
from convmem.bench.timing import measure, measure_capped
from convmem.errors import UsageError

SIZES = (100, 200)


@pytest.fixture(scope="module")
def report() -> SpeedReport:
    # LlamaIndex's buffer is quadratic: at 1,000 messages one call takes seconds.
    return run_speed(sizes=SIZES, repeats=2, cap_seconds=60.0)


# -- the generated history ----------------------------------------------------------------------


def test_history_is_deterministic_alternating_and_20_to_60_words() -> None:
    a = make_history(200, seed=3)
    assert a == make_history(200, seed=3)
    assert a != make_history(200, seed=4)
    assert [m["role"] for m in a[:4]] == ["user", "assistant", "user", "assistant"]
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(a))
    counts = [len(m["content"].split()) for m in a]
    assert min(counts) >= 20 and max(counts) <= 60
    assert len(set(counts)) > 20  # varied, not one length
    assert len({m["content"] for m in a}) == len(a)


@pytest.mark.parametrize("bad", [0, 1, 101, -2, True])
def test_history_rejects_odd_or_tiny_sizes(bad: int) -> None:
    with pytest.raises(UsageError):
        make_history(bad)


# -- run_speed ----------------------------------------------------------------------------------


def test_every_row_is_measured_at_every_size(report: SpeedReport) -> None:
    assert report.sizes == list(SIZES)
    assert [s.messages for s in report.results] == list(SIZES)
    for size in report.results:
        assert size.turns == size.messages // 2
        assert set(size.cells) == set(speedreport.ROWS)
        for row, cell in size.cells.items():
            assert cell.skipped is None, (row, cell.skipped)
            assert cell.row == row and cell.messages == size.messages
            assert cell.calls == 2 and not cell.capped
            assert cell.median_us is not None and cell.p95_us is not None
            assert cell.min_us is not None and cell.min_us <= cell.median_us <= cell.p95_us
            assert cell.kept_messages is not None and cell.kept_messages > 0
        for row in speedreport.CONVMEM_ROWS:
            assert size.cells[row].first_us is not None
        for row in speedreport.COMPETITOR_ROWS:
            assert size.cells[row].first_us is None
            ratio = size.ratios[row]
            assert ratio.value is not None and ratio.value > 0 and not ratio.lower_bound


def test_truncate_and_langchain_keep_about_the_same_messages(report: SpeedReport) -> None:
    # Same budget, same counting rules, same history: the two trims must agree (convmem also
    # reserves the 3 reply-priming tokens, so it may keep one turn less).
    for size in report.results:
        trunc = size.cells["truncate"].kept_messages
        lc = size.cells["langchain"].kept_messages
        assert trunc is not None and lc is not None
        assert abs(trunc - lc) <= 2, (size.messages, trunc, lc)
        assert trunc < size.messages  # the budget really trimmed something


def test_convmem_rows_build_what_they_claim(report: SpeedReport) -> None:
    for size in report.results:
        n = size.messages
        # KeepAll sends system + every message + the new one.
        assert size.cells["keep_all"].kept_messages == n + 2
        for row in ("rolling_summary", "pipeline"):
            notes = " ".join(size.cells[row].notes)
            assert "summary sent" in notes
            assert "due" not in notes  # the summariser would not be called: a pure build
        # The summary replaces older turns: fewer messages than plain truncation.
        piped, trunc = size.cells["pipeline"].kept_messages, size.cells["truncate"].kept_messages
        assert piped is not None and trunc is not None and piped < trunc
        assert size.history_tokens > speed.DEFAULT_BUDGET


def test_report_serialises_and_prints(report: SpeedReport) -> None:
    data = json.loads(report.to_json())
    assert data["budget"] == speed.DEFAULT_BUDGET
    assert [r["messages"] for r in data["results"]] == list(SIZES)
    assert set(data["results"][0]["cells"]) == set(speedreport.ROWS)
    assert "langchain" in data["results"][0]["ratios"]
    assert data["environment"]["cpu_count"]
    text = report.format_table()
    for label in speedreport.ROW_LABELS.values():
        assert label in text
    lines = text.splitlines()
    assert any(line.startswith("200 ") for line in lines) and "÷" in text


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        run_speed(sizes=(101,))
    with pytest.raises(UsageError):
        run_speed(sizes=(100,), budget=0)
    with pytest.raises(UsageError):
        run_speed(sizes=(100,), repeats=0)


# -- timing helpers -----------------------------------------------------------------------------


def test_measure_takes_the_requested_calls_and_records_kept() -> None:
    calls: list[int] = []

    def fn() -> list[int]:
        calls.append(1)
        return [1, 2, 3]

    samples = measure(fn, repeats=5)
    assert len(samples.times_ns) == 5 and len(calls) == 5
    assert samples.kept == 3 and not samples.capped and samples.error is None


def test_measure_capped_cuts_a_call_longer_than_the_cap() -> None:
    def slow() -> list[int]:
        time.sleep(30)
        return []

    t0 = time.perf_counter()
    samples = measure_capped(slow, repeats=3, cap_s=0.5)
    assert time.perf_counter() - t0 < 10
    assert samples.capped and samples.times_ns == []
    # The cut call ran from the child's start (after its set-up) to the cap.
    assert 0 < samples.unfinished_ns <= 0.6e9
    cell = speedreport.cell_result("llamaindex", 10, samples)
    assert cell.median_us is None
    assert cell.lower_bound_us == pytest.approx(samples.unfinished_ns / 1_000, abs=0.01)
    assert any("no call finished" in n for n in cell.notes)


def test_measure_capped_keeps_finished_calls_and_reports_errors() -> None:
    samples = measure_capped(lambda: [0] * 7, repeats=4, cap_s=30)
    assert len(samples.times_ns) == 4 and samples.kept == 7 and not samples.capped

    def boom() -> list[int]:
        raise RuntimeError("no tokenizer")

    failed = measure_capped(boom, repeats=2, cap_s=30)
    assert failed.error is not None and "no tokenizer" in failed.error
    assert speedreport.cell_result("langchain", 10, failed).skipped == failed.error


# -- ratios and targets -------------------------------------------------------------------------


def _size(trunc_us: float, lc: CellResult, li: CellResult) -> SizeResult:
    cells = {
        "truncate": CellResult("truncate", 10_000, calls=5, median_us=trunc_us),
        "langchain": lc,
        "llamaindex": li,
    }
    return SizeResult(10_000, 5_000, 0, cells, speedreport.ratios(cells))


def test_ratios_and_targets() -> None:
    lc = CellResult("langchain", 10_000, calls=3, median_us=600_000.0)
    li = CellResult("llamaindex", 10_000, capped=True, lower_bound_us=20_000_000.0)
    size = _size(300.0, lc, li)
    assert size.ratios["langchain"] == Ratio("langchain", 2000.0, False)
    assert size.ratios["llamaindex"] == Ratio("llamaindex", round(20_000_000 / 300, 1), True)
    rec = RecallResult(10_000, 4, 2_500, 384, "random", 8, 100, query_p50_ms=30, query_p95_ms=70)
    rep = SpeedReport([10_000], 4000, "cl100k_base", None, 0.5, 20.0, [size], recall=rec)
    targets = rep.targets()
    assert [t.met for t in targets] == [True, True, True, False]
    assert "LlamaIndex" in targets[2].name and targets[2].measured == "> 66,667×"
    assert "> 66,667×" in rep.format_table()

    slow = _size(2_000.0, CellResult("langchain", 10_000, calls=3, median_us=100_000.0), li)
    rep = SpeedReport([10_000], 4000, "cl100k_base", None, 0.5, 20.0, [slow])
    assert [t.met for t in rep.targets()] == [False, False, True]


def test_missing_competitor_gives_no_ratio() -> None:
    lc = CellResult("langchain", 10_000, skipped="langchain-core is not installed")
    li = CellResult("llamaindex", 10_000, calls=1, median_us=1e6)
    size = _size(300.0, lc, li)
    assert size.ratios["langchain"].value is None
    assert size.ratios["llamaindex"].value == pytest.approx(3333.3)


# -- command line -------------------------------------------------------------------------------


def test_main_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "speed.json"
    code = speed.main(
        [
            "--sizes",
            "100,0.2k",
            "--repeats",
            "1",
            "--no-recall",
            "--no-competitors",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["sizes"] == [100, 200] and data["recall"] is None
    assert data["results"][1]["cells"]["langchain"]["skipped"]
    printed = capsys.readouterr().out
    assert "Truncate" in printed and str(out) in printed


def test_main_rejects_bad_sizes(tmp_path: Path) -> None:
    assert speed.main(["--sizes", "101", "--no-recall", "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(SystemExit):
        speed.main(["--sizes", "lots"])


# -- recall -------------------------------------------------------------------------------------


@pytest.mark.recall
def test_recall_section_measures_queries_and_embeddings() -> None:
    rec = speed.run_recall(
        turns=300, other_conversations=2, other_turns=100, queries=6, excluded=10, embed_texts=16
    )
    assert rec.skipped is None, rec.skipped
    assert rec.query_p50_ms is not None and rec.query_p95_ms is not None
    assert rec.query_p95_ms >= rec.query_p50_ms > 0
    assert rec.query_excl_p50_ms is not None and rec.excluded == 10
    assert rec.unfiltered_p50_ms is not None and rec.unfiltered_p95_ms is not None
    # 300 stored turns: the HNSW index finds (nearly) the exact nearest ones; ids that did not
    # line up with the exact search's rows would give about k/300.
    assert rec.recall_at_k is not None and 0.9 <= rec.recall_at_k <= 1.0
    assert rec.embed_texts == 16 and rec.embed_texts_per_s is not None and rec.embed_texts_per_s > 0
    assert rec.embed_model == "all-MiniLM-L6-v2"
    assert "Recall" in speed._format_recall(rec)
