"""The package's shape: what ``import convmem`` loads, module size and purpose, the bench's imports.

Issue 9: the library must not pay for its benchmark, the benchmark must be something a user
could write (public API only), each module holds one concept (and says which in its docstring),
and renamed names keep a deprecation alias for one release.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import convmem

PACKAGE = Path(convmem.__file__).parent
BENCH = PACKAGE / "bench"

# Issue 9.3 says "no module over ~600 lines": about 600, so a few lines over do not fail.
MAX_LINES = 650
# Over the limit when this test was written, with the work that owns them. The allowance is for
# splits under way (issue 9.3), not a place to park big modules: drop an entry once it is split.
BEING_SPLIT: set[str] = set()

# What a plain `import convmem` must leave out: the benchmark and what only it (or an extra) needs.
HEAVY = (
    "convmem.bench",
    "convmem.cli",
    "langchain_core",
    "llama_index",
    "chromadb",
    "sentence_transformers",
    "torch",
    "numpy",
    "tqdm",
    "matplotlib",
)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_importing_convmem_loads_no_benchmark_code_or_dependencies() -> None:
    # A fresh interpreter: this test process has long imported the bench for other tests.
    code = "import json, sys, convmem; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = json.loads(out)
    assert "convmem" in loaded and "convmem.conversation" in loaded
    offending = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert offending == []


def test_no_module_is_over_about_600_lines_except_those_being_split() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in BEING_SPLIT}
    assert too_big == {}


def test_every_module_opens_with_a_docstring_saying_its_job() -> None:
    missing = []
    for path in _modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.splitlines()[0].split()) < 4:
            missing.append(str(path.relative_to(PACKAGE)))
    assert missing == []


def _public_names(module: str) -> set[str]:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is not None:
        return set(names)
    return {n for n in vars(mod) if not n.startswith("_")}


def _bench_import_problems(path: Path) -> list[str]:
    problems = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 1:
                problems.append(f"line {node.lineno}: relative import into the library")
                continue
            module = node.module or ""
            if node.level == 1:
                module = f"convmem.bench.{module}" if module else "convmem.bench"
            if not module.startswith("convmem") or module.startswith("convmem.bench"):
                continue
            if any(part.startswith("_") for part in module.split(".")):
                problems.append(f"line {node.lineno}: private module {module}")
                continue
            public = _public_names(module)
            for alias in node.names:
                if alias.name not in public:
                    problems.append(f"line {node.lineno}: {module}.{alias.name} is not public")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("convmem") and any(
                    p.startswith("_") for p in alias.name.split(".")
                ):
                    problems.append(f"line {node.lineno}: private module {alias.name}")
        elif isinstance(node, ast.Attribute):
            # obj._private on anything but the bench's own objects (self/cls).
            attr = node.attr
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if attr.startswith("_") and not attr.startswith("__") and not own:
                problems.append(f"line {node.lineno}: private attribute .{attr}")
    return problems


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_uses_only_the_public_api(path: Path) -> None:
    assert _bench_import_problems(path) == []


def test_the_public_api_check_catches_private_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from ..conversation import Conversation\n"
        "from convmem.tokens import _count_text\n"
        "from convmem.bench import speed\n"
        "x = conv._core\n"
    )
    found = _bench_import_problems(bad)
    assert len(found) == 3
    assert "relative import" in found[0]
    assert "_count_text is not public" in found[1]
    assert "._core" in found[2]


MOVED = [
    ("convmem.bench.speed", "make_history", "convmem.bench.synth"),
    ("convmem.bench.speed", "measure", "convmem.bench.timing"),
    ("convmem.bench.speed", "measure_capped", "convmem.bench.timing"),
    ("convmem.bench.speed", "Samples", "convmem.bench.timing"),
    ("convmem.bench.speed", "SpeedReport", "convmem.bench.speedreport"),
    ("convmem.bench.speed", "CellResult", "convmem.bench.speedreport"),
    ("convmem.bench.speed", "format_report", "convmem.bench.speedreport"),
    ("convmem.bench.speed", "ROWS", "convmem.bench.speedreport"),
    ("convmem.bench.speed", "environment", "convmem.bench.machine"),
    ("convmem.bench.speed", "run_size", "convmem.bench.speedrows"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED, ids=lambda x: str(x))
def test_moved_names_keep_a_deprecation_alias(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_unknown_names_still_raise_attribute_error() -> None:
    from convmem.bench import speed

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            speed.nope  # noqa: B018
        # What stays in convmem.bench.speed resolves without a warning.
        assert callable(speed.run_speed) and callable(speed.main)


def test_tools_keeps_every_public_name() -> None:
    import convmem.tools

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in convmem.tools.__all__:
            assert getattr(convmem.tools, name) is not None
