"""Sentence embeddings through ONNX Runtime: the same vectors as sentence-transformers, faster.

On this project's 2-core machine all-MiniLM-L6-v2 embeds one short query in about 17 ms with
PyTorch and 8 ms with ONNX Runtime on the same single thread (``convmem bench recall`` reports
the backend in use; ``CONVMEM_EMBED_BACKEND=torch`` selects torch), and the vectors agree to
within 2e-7: a store written through either backend is read by the other. ``onnxruntime`` is
already installed with Chroma.

:class:`OnnxEmbedder` runs a sentence-transformers model directory whose modules are a
Transformer, a mean or CLS :class:`Pooling` and optionally :class:`Normalize` (the shape of
all-MiniLM-L6-v2 and most sentence-transformers models): the tokenizer comes from the
directory's ``tokenizer.json`` (the ``tokenizers`` library, no torch), the network from an ONNX
graph exported once from the directory's weights and kept in a cache directory::

    embed = OnnxEmbedder.from_directory(path)       # exports on first use, then loads
    vectors = embed(["the cat sat on the mat"])

The export needs ``torch``, ``transformers`` and ``onnx``; loading an exported graph needs
neither torch nor ``onnx``. The cache directory is ``$CONVMEM_CACHE_DIR``, else
``$XDG_CACHE_HOME/convmem``, else ``~/.cache/convmem``; a graph is written to a temporary file
and renamed, so processes exporting at once never see half a file. When the directory cannot
be written the graph stays in memory for the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

#: Bumped when the exported graph's inputs or outputs change, so old cached graphs are ignored.
_EXPORT_FORMAT = 1
_OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UnsupportedModel(Exception):
    """The model directory is not one :class:`OnnxEmbedder` can run (the reason is the text)."""


@dataclass(frozen=True)
class ModelLayout:
    """What :class:`OnnxEmbedder` reads from a sentence-transformers model directory.

    Attributes:
        directory: The model directory.
        weights: The weights file (``model.safetensors`` or ``pytorch_model.bin``).
        pooling: ``"mean"`` or ``"cls"``.
        max_seq_length: Tokens kept per text (longer texts are truncated, as
            sentence-transformers does).
        dimension: The vector length.
    """

    directory: Path
    weights: Path
    pooling: str
    max_seq_length: int
    dimension: int


def read_layout(directory: str | os.PathLike[str]) -> ModelLayout:
    """Reads a sentence-transformers directory and checks :class:`OnnxEmbedder` can run it.

    Args:
        directory: A local sentence-transformers model directory.

    Returns:
        The layout.

    Raises:
        UnsupportedModel: A file is missing, or a module, pooling mode or tokenizer is not one
            this runner implements.
    """
    root = Path(directory)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        bert = json.loads((root / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(
            f"no readable modules.json/sentence_bert_config.json: {exc}"
        ) from exc
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise UnsupportedModel(f"modules {kinds} (Transformer, Pooling[, Normalize] only)")
    if modules[0].get("path", "") not in ("", "."):
        raise UnsupportedModel("the Transformer module is not at the directory's top level")
    try:
        pool_path = root / str(modules[1].get("path", "1_Pooling")) / "config.json"
        pool = json.loads(pool_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"no readable pooling config: {exc}") from exc
    modes = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v is True]
    if modes == ["pooling_mode_mean_tokens"]:
        pooling = "mean"
    elif modes == ["pooling_mode_cls_token"]:
        pooling = "cls"
    else:
        raise UnsupportedModel(f"pooling {modes} (mean or CLS only)")
    if bert.get("do_lower_case"):
        raise UnsupportedModel("do_lower_case is set (the tokenizer file alone would not do it)")
    if not (root / "tokenizer.json").is_file():
        raise UnsupportedModel("no tokenizer.json (a fast tokenizer is needed)")
    weights = next(
        (root / n for n in ("model.safetensors", "pytorch_model.bin") if (root / n).is_file()),
        None,
    )
    if weights is None:
        raise UnsupportedModel("no model.safetensors or pytorch_model.bin")
    max_len = bert.get("max_seq_length")
    if not isinstance(max_len, int) or max_len < 1:
        raise UnsupportedModel(f"max_seq_length {max_len!r}")
    dim = pool.get("word_embedding_dimension")
    if not isinstance(dim, int) or dim < 1:
        raise UnsupportedModel(f"word_embedding_dimension {dim!r}")
    return ModelLayout(root, weights, pooling, max_len, dim)


def cache_directory() -> Path:
    """Where exported graphs are kept (see the module docstring)."""
    explicit = os.environ.get("CONVMEM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "convmem"


def _weights_digest(layout: ModelLayout) -> str:
    digest = hashlib.sha256()
    digest.update(f"format={_EXPORT_FORMAT};opset={_OPSET};".encode())
    for name in ("config.json", "tokenizer.json"):
        path = layout.directory / name
        if path.is_file():
            digest.update(path.read_bytes())
    # The weights by size and time, not content: hashing 90 MB cost 0.24 s at every load.
    info = layout.weights.stat()
    digest.update(f"{layout.weights.resolve()}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _export(layout: ModelLayout, target: Path) -> None:
    """Exports the Transformer module to an ONNX file (needs torch, transformers and onnx)."""
    try:
        import onnx  # noqa: F401 - torch's exporter needs it; fail here with a clear reason
        import torch
        import transformers
    except ImportError as exc:
        raise UnsupportedModel(f"exporting needs torch, transformers and onnx: {exc}") from exc

    from .embed import _quiet_loading

    with _quiet_loading():
        # Plain attention traces into ops ONNX Runtime fuses; SDPA's shape checks trace badly.
        model = transformers.AutoModel.from_pretrained(
            str(layout.directory), local_files_only=True, attn_implementation="eager"
        )
    model.eval()

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    sample = torch.ones((1, 4), dtype=torch.int64)
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    # The tracer warns about shape checks it records as constants; the graph is checked
    # against sentence-transformers on texts of every length in the tests instead.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Encoder(model),
            (sample, sample, torch.zeros_like(sample)),
            str(target),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
            opset_version=_OPSET,
            dynamo=False,
        )


def exported_graph(layout: ModelLayout) -> bytes | Path:
    """The ONNX graph for ``layout``: a cached file, or a fresh export (cached when possible).

    Raises:
        UnsupportedModel: No cached graph and the export failed or cannot run here.
    """
    name = f"{layout.directory.name or 'model'}-{_weights_digest(layout)}.onnx"
    folder = cache_directory() / "onnx"
    path = folder / name
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=folder)
        os.close(fd)
    except OSError:
        # A read-only cache: export to a scratch file and keep the graph in memory.
        with tempfile.TemporaryDirectory(prefix="convmem-onnx-") as scratch:
            target = Path(scratch) / name
            _export_or_explain(layout, target)
            return target.read_bytes()
    try:
        _export_or_explain(layout, Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is for every user
        os.replace(tmp, path)  # atomic: a process exporting at once sees all or nothing
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _export_or_explain(layout: ModelLayout, target: Path) -> None:
    try:
        _export(layout, target)
    except UnsupportedModel:
        raise
    except Exception as exc:  # the exporter's failures are many and version-specific
        raise UnsupportedModel(f"export failed: {type(exc).__name__}: {exc}") from exc


class OnnxEmbedder:
    """An :class:`~convmem.embed.Embedder` running a sentence-transformers model in ONNX Runtime.

    Vectors are L2-normalised, as :class:`~convmem.embed.SentenceTransformerEmbedder`'s are,
    and equal to them up to float rounding. Texts are sorted by length and encoded in batches,
    so a batch pads to its own longest text.

    Args:
        layout: The model (see :func:`read_layout`).
        graph: The exported graph, as a file path or bytes (see :func:`exported_graph`).
        batch_size: Texts per forward pass.
        threads: ONNX Runtime's intra-op threads (1 by default: a query is faster on one
            thread than two threads fighting an LLM server for the cores).

    Raises:
        UsageError: ``batch_size`` or ``threads`` is not a positive int.
        UnsupportedModel: ONNX Runtime or the tokenizer could not load the model.
    """

    def __init__(
        self, layout: ModelLayout, graph: bytes | Path, *, batch_size: int = 64, threads: int = 1
    ) -> None:
        for name, value in (("batch_size", batch_size), ("threads", threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive int, got {value!r}")
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise UnsupportedModel(f"needs onnxruntime, tokenizers and numpy: {exc}") from exc
        self._np = np
        self.layout = layout
        self._batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would spin and take the cores from an LLM server on this machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(graph) if isinstance(graph, Path) else graph
        try:
            self._session = ort.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(layout.directory / "tokenizer.json"))
        except Exception as exc:
            raise UnsupportedModel(f"could not load: {type(exc).__name__}: {exc}") from exc
        tokenizer.enable_truncation(max_length=layout.max_seq_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._feeds = [i.name for i in self._session.get_inputs()]
        # One encode at a time per embedder: the tokenizer's settings are shared state.
        self._lock = threading.Lock()

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike[str], *, batch_size: int = 64, threads: int = 1
    ) -> OnnxEmbedder:
        """Reads, exports (or finds the cached export of) and loads a model directory.

        Raises:
            UnsupportedModel: See :func:`read_layout` and :func:`exported_graph`.
        """
        layout = read_layout(directory)
        return cls(layout, exported_graph(layout), batch_size=batch_size, threads=threads)

    @property
    def dimension(self) -> int:
        """The length of every vector this embedder returns."""
        return self.layout.dimension

    @property
    def batch_size(self) -> int:
        """How many texts are encoded per forward pass."""
        return self._batch_size

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds ``texts`` into unit vectors.

        Args:
            texts: The texts to embed.

        Returns:
            One normalised vector per text, in order; ``[]`` for no texts.

        Raises:
            UsageError: ``texts`` is a single string or holds a non-string.
        """
        from .embed import _check_texts

        batch = _check_texts(texts)
        if not batch:
            return []
        np = self._np
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out: list[Any] = [None] * len(batch)
        with self._lock:
            for start in range(0, len(order), self._batch_size):
                chunk = order[start : start + self._batch_size]
                encodings = self._tokenizer.encode_batch([batch[i] for i in chunk])
                width = max(len(e.ids) for e in encodings)
                ids = np.zeros((len(chunk), width), dtype=np.int64)
                mask = np.zeros((len(chunk), width), dtype=np.int64)
                types = np.zeros((len(chunk), width), dtype=np.int64)
                for row, enc in enumerate(encodings):
                    n = len(enc.ids)
                    ids[row, :n] = enc.ids
                    mask[row, :n] = 1
                    types[row, :n] = enc.type_ids
                given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
                feeds = {name: given[name] for name in self._feeds}
                hidden = self._session.run(None, feeds)[0]
                if self.layout.pooling == "cls":
                    pooled = hidden[:, 0, :]
                else:
                    weights = mask[:, :, None].astype(hidden.dtype)
                    summed = (hidden * weights).sum(axis=1)
                    pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                pooled = pooled / np.clip(norms, 1e-12, None)
                for row, i in enumerate(chunk):
                    out[i] = pooled[row]
        return np.stack(out).astype(np.float32).tolist()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        name = self.layout.directory.name
        return f"OnnxEmbedder({name!r}, batch_size={self._batch_size})"


__all__ = ["ModelLayout", "OnnxEmbedder", "UnsupportedModel", "cache_directory", "read_layout"]
