"""The ``convmem`` command line (convmem.cli), run in-process."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import convmem.bench
import convmem.cli as cli
from convmem import demo
from convmem.cli import PROBE, build_parser, main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "bench" in out and "demo" in out
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("probe", "locomo", "speed"):
        assert name in out
    assert main(["bench", "probe", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--no-summary" in out and "--quick" in out and "--summarizer-base-url" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "probe", "--budgets", "abc"], "--budgets"),
        (["bench", "probe", "--budgets", "0"], "positive"),
        (["bench", "probe", "--conversations", "0"], "--conversations"),
        (["bench", "locomo"], "--data"),
        (["bench", "nope"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error" in err and needle in err


def test_usage_errors_found_at_run_time_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "locomo", "--data", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "probe", "--turns", "5", "--no-recall", "--no-summary"]) == 2
    assert "turns=5" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["bench", "locomo", "--data", str(bad), "--no-recall", "--no-summary"]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
    argv = ["bench", "probe", "--quick", "--no-recall", "--summarizer-model", "m", "--out"]
    assert main([*argv, str(tmp_path)]) == 2
    assert "--summarizer-base-url" in capsys.readouterr().err


def test_budgets_parse() -> None:
    args = build_parser().parse_args(["bench", "locomo", "--data", "x", "--budgets", "8k,2000, 4k"])
    assert args.budgets == (2000, 4000, 8000)


def test_plain_bench_runs_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def fake_bench(args: argparse.Namespace, command: str) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(cli, "_bench", fake_bench)
    assert main(["bench"]) == 0
    (args,) = seen
    assert args.bench == "probe" and args.conversations == PROBE.conversations
    assert args.turns is None and args.budgets is None and not args.quick


def test_speed_is_dispatched_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    stub = types.ModuleType("convmem.bench.speed")
    stub.__spec__ = importlib.machinery.ModuleSpec("convmem.bench.speed", None)
    stub.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "convmem.bench.speed", stub)
    monkeypatch.setattr(convmem.bench, "speed", stub, raising=False)
    assert main(["bench", "speed", "--quick", "--help"]) == 3
    assert calls == [["--quick", "--help"]]


def test_speed_missing_is_a_clear_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["bench", "speed"]) == 1
    assert "not part of this installation" in capsys.readouterr().err


def test_summarizer_from_an_endpoint_is_described() -> None:
    args = build_parser().parse_args(
        [
            "bench",
            "probe",
            "--summarizer-base-url",
            "http://127.0.0.1:9/v1",
            "--summarizer-model",
            "qwen-mini",
            "--summarizer-api-key",
            "k",
            "--max-summary-tokens",
            "100",
        ]
    )
    with cli._summarizer(args, needed=True) as summarizer:
        assert summarizer.model == "qwen-mini"
        assert summarizer.description == "qwen-mini at http://127.0.0.1:9/v1"
        assert summarizer.max_summary_tokens == 100
        assert str(summarizer.client.base_url).startswith("http://127.0.0.1:9/v1")
    with cli._summarizer(args, needed=False) as nothing:
        assert nothing is None


def _run_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    out = tmp_path / "results"
    argv = ["bench", "probe", "--quick", "--no-summary", "--no-progress", "--out", str(out), *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "strategy" in printed and "Truncate" in printed and "full history" in printed
    # The prompt-cache columns, the price they use, and the target checked at each budget.
    assert (
        "cacheable" in printed and "cached $/1k q" in printed and "gpt-4o-mini's price" in printed
    )
    assert "\nTargets\n" in printed and "Truncate, sliding window" in printed
    for suffix in ("json", "csv", "md"):
        assert (out / f"probe.{suffix}").is_file()
    assert (out / "probe.png").is_file() == ("--no-plot" not in extra)
    data: dict[str, Any] = json.loads((out / "probe.json").read_text())
    assert data["command"] == "convmem " + " ".join(argv)
    assert data["summarizer"] is None
    return data


def test_probe_end_to_end_without_recall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _run_probe(tmp_path, capsys, "--no-recall", "--no-plot")
    assert [r["key"] for r in data["rows"]] == ["full"] + [
        f"{k}-{b}" for k in ("truncate", "sliding") for b in PROBE.quick_budgets
    ]
    assert data["settings"]["probe_turns"] == PROBE.quick_turns
    full = data["rows"][0]
    assert full["evidence_recall"] == 1.0
    assert data["rows"][1]["mean_tokens"] <= PROBE.quick_budgets[0]
    rows = {r["key"]: r for r in data["rows"]}
    small = PROBE.quick_budgets[0]  # truncation is at work for most of the replay
    assert (
        rows[f"truncate-{small}"]["cacheable_share"] > rows[f"sliding-{small}"]["cacheable_share"]
    )


@pytest.mark.recall
def test_probe_quick_no_summary_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented quick run: loads the packaged embedding model and an in-memory Chroma."""
    data = _run_probe(tmp_path, capsys)
    keys = [r["key"] for r in data["rows"]]
    assert keys == ["full"] + [
        f"{k}-{b}" for k in ("truncate", "sliding", "recall") for b in PROBE.quick_budgets
    ]
    assert data["settings"]["embedder"].startswith("all-MiniLM-L6-v2")
    for row in data["rows"]:
        if row["budget"]:
            assert row["mean_tokens"] <= row["budget"]


def test_demo_with_fake_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fake"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant: ") == len(demo.DEMO_MESSAGES)
    assert out.count("ContextPlan[") == len(demo.DEMO_MESSAGES)
    assert "summary call" in out and "summarised turn" in out
    assert "summariser: 1 call(s)" in out


def test_demo_fake_answers_only_from_what_was_sent() -> None:
    """The fake recites a fact only when the last call's messages carry it."""
    from convmem import Conversation

    seen: list[Conversation] = []
    original = Conversation.send

    def spy(self: Conversation, *a: object, **kw: object) -> object:
        seen.append(self)
        return original(self, *a, **kw)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Conversation, "send", spy)
        assert demo.run(fake=True, out=out) == 0
    conv = seen[-1]
    assert conv.last_plan is not None
    sent = demo._request_text(conv.last_plan.messages)
    answer = conv.messages[-1]["content"]
    for fact, value in demo.find_facts(sent).items():
        assert value in answer, fact
    for fact in set(demo.FACTS) - set(demo.find_facts(sent)):
        assert "I don't know" in answer, fact
    # With a working summariser no turn falls through: every fact reached the last call.
    assert set(demo.find_facts(sent)) == set(demo.FACTS)
    assert not any(d.action == "dropped" for d in conv.last_plan.decisions)


def test_demo_fake_summariser_keeps_only_what_it_was_sent() -> None:
    assert demo.fake_summary("user: I'm Ada and I live in Lisbon.") == (
        "- The user's name is Ada.\n- The user lives in Lisbon."
    )
    assert "budget" not in demo.fake_summary("user: I'm Ada.")
    assert demo.fake_final_answer("The user's name is Ada.") == (
        "From what I can see: your name is Ada, I don't know where you live, "
        "and I don't know your budget."
    )
