"""``convmem bench store`` runs end to end on small sizes and prints its table."""

from __future__ import annotations

import json
from typing import Any

from convmem.cli import main


def test_bench_store_prints_figures_for_each_store(
    tmp_path: Any, capsys: Any, pg_server: Any
) -> None:
    out = tmp_path / "store.json"
    code = main(
        [
            "bench",
            "store",
            "--commits",
            "5",
            "--appends",
            "5",
            "--processes",
            "1,2",
            "--turns",
            "60",
            "--stores",
            "sqlite,postgres",
            "--postgres",
            pg_server.conninfo,
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| store | commit p50 ms | commit p95 ms | appends/s x1 | appends/s x2 |" in printed
    rows = json.loads(out.read_text())
    assert [r["store"] for r in rows] == ["sqlite", "postgres"]
    for row in rows:
        assert 0 < row["commit_p50_ms"] <= row["commit_p95_ms"]
        assert set(row["appends_per_s"]) == {"1", "2"} and min(row["appends_per_s"].values()) > 0
        assert row["resume_turns"] == 60 and row["resume_conversation_ms"] > 0


def test_bench_store_bad_arguments(capsys: Any) -> None:
    assert main(["bench", "store", "--processes", "one"]) == 2
    assert "--processes" in capsys.readouterr().err
    assert main(["bench", "store", "--stores", "mongo"]) == 2
    assert "unknown store 'mongo'" in capsys.readouterr().err
