"""Sentence embeddings through ONNX Runtime: sentence-transformers' model, faster.

On this project's 2-core machine all-MiniLM-L6-v2 embeds one short query in about 17 ms with
PyTorch, 8-10 ms with ONNX Runtime on the same single thread, and 6 ms with the weights of its
inner layers in int8 (``convmem bench recall`` reports the backend in use;
``CONVMEM_EMBED_BACKEND`` chooses). The float graph's vectors agree with sentence-transformers'
to within 2e-7; the int8 graph's have a cosine of 0.988 at worst and 0.995 on average with them
(310 chat messages), close enough that a store written through any backend is read by the
others (on LoCoMo the int8 graph kept 0.888/0.932 of the evidence at 2k/4k tokens where the
float graph kept 0.890/0.935). ``onnxruntime`` is already installed with Chroma.

:class:`OnnxEmbedder` runs a sentence-transformers model directory whose modules are a
Transformer, a mean or CLS :class:`Pooling` and optionally :class:`Normalize` (the shape of
all-MiniLM-L6-v2 and most sentence-transformers models): the tokenizer comes from the
directory's ``tokenizer.json`` (the ``tokenizers`` library, no torch), the network from an ONNX
graph exported once from the directory's weights and kept in a cache directory::

    embed = OnnxEmbedder.from_directory(path)       # exports on first use, then loads
    fast = OnnxEmbedder.from_directory(path, quantized=True)  # the int8 graph
    vectors = embed(["the cat sat on the mat"])

The export needs ``torch``, ``transformers`` and ``onnx``; the int8 graph is made from the float
one by ONNX Runtime's dynamic quantisation (MatMul weights per output channel, the first and
last layers left in float; no calibration data) and kept only if its vectors of
:data:`CHECK_TEXTS` stay within :data:`QUANTIZED_MIN_COSINE` of the float graph's. Loading a
cached graph needs neither torch nor ``onnx``. The cache directory is ``$CONVMEM_CACHE_DIR``,
else ``$XDG_CACHE_HOME/convmem``, else ``~/.cache/convmem``; a graph is written to a temporary
file and renamed, so processes exporting at once never see half a file. When the directory
cannot be written the graph stays in memory for the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
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

#: Bumped when the int8 recipe changes (which MatMuls, how), so old int8 graphs are not used.
_INT8_RECIPE = 1
#: Where a node of an exported transformer names its layer ("/encoder/layer.3/...").
_LAYER = re.compile(r"layers?[._/](\d+)[./]")

#: An int8 graph is kept only if its vector of every :data:`CHECK_TEXTS` text has at least this
#: cosine with the float graph's (all-MiniLM-L6-v2: 0.988 at worst, 0.995 on average).
QUANTIZED_MIN_COSINE = 0.97

#: Texts both graphs embed when an int8 graph is made: short and long, other scripts, numbers.
CHECK_TEXTS: tuple[str, ...] = (
    "hi",
    "The cat sat on the mat.",
    "What was the name of the restaurant you suggested last May?",
    "Melanie: I went camping with the kids last weekend at the lake!",
    "The invoice total is 1,284.50 EUR, due on 2024-03-15 (ref. INV-0042).",
    "我们明天去北京吧，天气很好。",
    "emoji 🎉 and accents: café, naïve, Zürich",
    "def add(a, b):\n    return a + b",
    "Can you remind me what my sister said about the budget two weeks ago? " * 6,
)


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


def quantized_graph(layout: ModelLayout) -> bytes | Path:
    """The int8 graph for ``layout``: a cached file, or made now from the float graph.

    Made by ONNX Runtime's dynamic quantisation (the weights of each MatMul to int8 per output
    channel, activations quantised at run time) of every encoder layer but the first and the
    last, which carry most of the rounding error (all-MiniLM-L6-v2 over 310 chat messages:
    cosine with the float vectors 0.988 at worst and 0.995 on average, against 0.976 and
    0.991 with every layer quantised, for 6 ms a query instead of 4.5), and checked: both
    graphs embed :data:`CHECK_TEXTS`, and the int8 graph is kept (as
    ``<float graph>-int8-r<recipe>.onnx``) only if every cosine is at least
    :data:`QUANTIZED_MIN_COSINE`.

    Raises:
        UnsupportedModel: The float graph cannot be had (see :func:`exported_graph`), the
            quantisation failed, or its vectors drift further than allowed. A drift is
            remembered (a ``.rejected`` file beside, with the reason), so later loads go to the
            float graph without quantising again.
    """
    digest = _weights_digest(layout)
    name = f"{layout.directory.name or 'model'}-{digest}-int8-r{_INT8_RECIPE}.onnx"
    folder = cache_directory() / "onnx"
    path = folder / name
    rejected = folder / f"{name}.rejected"
    if path.is_file():
        return path  # the float graph is not needed (nor exported again if it was removed)
    if rejected.is_file():
        reason = rejected.read_text(encoding="utf-8", errors="replace").strip()
        raise UnsupportedModel(reason or "its int8 graph was rejected earlier")
    float_graph = exported_graph(layout)
    writable = isinstance(float_graph, Path)
    try:
        # A private folder: the quantiser writes a scratch file beside its input.
        scratch = tempfile.mkdtemp(prefix=".int8-", dir=folder if writable else None)
    except OSError:
        writable = False
        scratch = tempfile.mkdtemp(prefix="convmem-int8-")
    try:
        source = Path(scratch) / "float.onnx"
        target = Path(scratch) / name
        try:
            if isinstance(float_graph, Path):
                try:
                    source.symlink_to(float_graph.resolve())
                except OSError:  # a file system without symbolic links
                    shutil.copyfile(float_graph, source)
            else:
                source.write_bytes(float_graph)
        except OSError as exc:
            raise UnsupportedModel(f"no room to make the int8 graph: {exc}") from exc
        _quantize(source, target)
        drift = _drift(layout, float_graph, target)
        if drift is not None:
            if writable:
                with contextlib.suppress(OSError):
                    marker = Path(scratch) / "rejected"
                    marker.write_text(drift + "\n", encoding="utf-8")
                    os.chmod(marker, 0o644)
                    os.replace(marker, rejected)
            raise UnsupportedModel(drift)
        if not writable:
            return target.read_bytes()
        os.chmod(target, 0o644)  # the cache is for every user
        try:
            os.replace(target, path)  # atomic: a process loading at once sees all or nothing
        except OSError:
            return target.read_bytes()
        return path
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _QuantiserAdvice(logging.Filter):
    """Drops the quantiser's advice to pre-process the model (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "quantization" not in record.pathname.replace("\\", "/")


def _quantize(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise UnsupportedModel(f"int8 quantisation needs onnx: {exc}") from exc
    root = logging.getLogger()
    advice = _QuantiserAdvice()
    # logging.warning() on a root logger without handlers would configure logging for the
    # whole process (basicConfig); a placeholder handler keeps the user's setup as it was.
    placeholder = logging.NullHandler() if not root.handlers else None
    root.addFilter(advice)
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        quantize_dynamic(
            source,
            target,
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=_inner_layer_matmuls(source),
        )
    except Exception as exc:  # the quantiser's failures are many and version-specific
        raise UnsupportedModel(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
    finally:
        root.removeFilter(advice)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _inner_layer_matmuls(graph: Path) -> list[str] | None:
    """The MatMul nodes of every layer but the first and the last; None (all of them) when the
    graph's node names do not say which layer a node is in."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    layers: dict[str, int] = {}
    for node in model.graph.node:
        found = _LAYER.search(node.name) if node.op_type == "MatMul" else None
        if found is not None:
            layers[node.name] = int(found.group(1))
    if len(set(layers.values())) < 3:
        return None
    edges = {min(layers.values()), max(layers.values())}
    return [name for name, layer in layers.items() if layer not in edges]


def _drift(layout: ModelLayout, float_graph: bytes | Path, int8_graph: Path) -> str | None:
    """Why the int8 graph's vectors are too far from the float graph's, or None."""
    exact = OnnxEmbedder(layout, float_graph, batch_size=len(CHECK_TEXTS))
    fast = OnnxEmbedder(layout, int8_graph, quantized=True)
    worst, text = min(
        (sum(x * y for x, y in zip(a, b, strict=True)), t)
        for a, b, t in zip(exact(CHECK_TEXTS), fast(CHECK_TEXTS), CHECK_TEXTS, strict=True)
    )
    if worst >= QUANTIZED_MIN_COSINE:
        return None
    return (
        f"its int8 vectors drift from the float graph's: cosine {worst:.3f} < "
        f"{QUANTIZED_MIN_COSINE} on {text[:40]!r}"
    )


class OnnxEmbedder:
    """An :class:`~convmem.embed.Embedder` running a sentence-transformers model in ONNX Runtime.

    Vectors are L2-normalised, as :class:`~convmem.embed.SentenceTransformerEmbedder`'s are:
    from the float graph equal to them up to float rounding, from the int8 graph within
    :data:`QUANTIZED_MIN_COSINE` of them. Texts are sorted by length and encoded in batches,
    so a batch pads to its own longest text.

    Args:
        layout: The model (see :func:`read_layout`).
        graph: The graph, as a file path or bytes (see :func:`exported_graph` and
            :func:`quantized_graph`).
        batch_size: Texts per forward pass.
        threads: ONNX Runtime's intra-op threads (1 by default: a query is faster on one
            thread than two threads fighting an LLM server for the cores).
        quantized: Says ``graph`` is the int8 one. Its activations are quantised per forward
            pass, so a text's vector would depend on the other texts of its batch: texts are
            then encoded one per pass (``batch_size`` is 1), which was also faster here (86
            texts/s against 69 in batches of 64: no padding).

    Raises:
        UsageError: ``batch_size`` or ``threads`` is not a positive int.
        UnsupportedModel: ONNX Runtime or the tokenizer could not load the model.
    """

    def __init__(
        self,
        layout: ModelLayout,
        graph: bytes | Path,
        *,
        batch_size: int = 64,
        threads: int = 1,
        quantized: bool = False,
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
        self.quantized = bool(quantized)
        self._batch_size = 1 if quantized else batch_size
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
        cls,
        directory: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        threads: int = 1,
        quantized: bool = False,
    ) -> OnnxEmbedder:
        """Reads, exports (or finds the cached export of) and loads a model directory.

        Args:
            directory: A sentence-transformers model directory.
            batch_size / threads: As for the constructor.
            quantized: Load the int8 graph (made and checked on first use) instead of the
                float one.

        Raises:
            UnsupportedModel: See :func:`read_layout`, :func:`exported_graph` and
                :func:`quantized_graph`.
        """
        layout = read_layout(directory)
        graph = quantized_graph(layout) if quantized else exported_graph(layout)
        return cls(layout, graph, batch_size=batch_size, threads=threads, quantized=quantized)

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
        int8 = ", quantized=True" if self.quantized else ""
        return f"OnnxEmbedder({name!r}, batch_size={self._batch_size}{int8})"


__all__ = [
    "CHECK_TEXTS",
    "QUANTIZED_MIN_COSINE",
    "ModelLayout",
    "OnnxEmbedder",
    "UnsupportedModel",
    "cache_directory",
    "quantized_graph",
    "read_layout",
]
