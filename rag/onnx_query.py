"""Fast single-question embedding: the model's transformer run by ONNX Runtime.

One short question through the default model costs ~45 ms in torch on 2 cores and
~19 ms in ONNX Runtime, with the same vector (cosine 1.000000 on the seed questions).
The forward pass of a 20-token input is bound by reading 85 MB of fp32 weights, which
ORT's kernels do with far less per-operation overhead than eager torch. For batches
torch is faster (1,116 vs 795 tokens/s on the seed chunks), so index builds stay on
torch and only :meth:`rag.embedding.Embedder.embed_query` comes here.

Only the transformer moves: tokenization, prompts, pooling and normalization are still
the sentence-transformers model's own modules, so any model with a standard
``Transformer`` first module (e5, bge, ...) works, whatever its pooling.

The export is made once per model (by fingerprint) under ``<cache_dir>/onnx/`` and
checked against torch before it is used; if anything fails, the embedder keeps using
torch and logs why. The embedder asks for it on its first question (or when a server
warms it), never for an index build.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# Texts that exercise prompts, scripts and lengths; the export must reproduce torch on all.
_PROBES = (
    "锦屏成立了什么联盟",
    "臺灣的讀者也會用繁體字提問嗎？",
    "What did the chamber of commerce set up in 2024?",
    "２０２４年３月，县工商联协商成立“基层站所+商会企业”创新服务联盟，为企业提供服务。" * 3,
)
_MIN_COSINE = 0.9999
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxQueryEncoder:
    """Embeds one text at a time with ORT running the transformer of ``model``."""

    def __init__(self, model: SentenceTransformer, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Like OMP_WAIT_POLICY=PASSIVE for torch (rag.embedding.configure_runtime): no spinning
        # threads that would hold the core a web worker or an index build needs. Costs <1 ms a query.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.model = model
        self.path = path

    def encode(self, text: str, prompt: str) -> npt.NDArray[np.float32]:
        """The model's sentence embedding of ``prompt + text`` (float32 ``[dim]``)."""
        import torch

        features: dict[str, Any] = self.model.preprocess([text], prompt=prompt)
        feeds = {name: features[name].numpy().astype(np.int64) for name in self.input_names}
        hidden = self.session.run(None, feeds)[0]
        features["token_embeddings"] = torch.from_numpy(hidden)
        with torch.inference_mode():
            for module in list(self.model)[1:]:
                features = module(features)
        return np.asarray(features["sentence_embedding"][0], dtype=np.float32)


def _export(model: SentenceTransformer, dest: Path) -> None:
    """Write the first module's transformer to ``dest`` as ONNX, atomically."""
    import torch

    hf_model: Any = model[0].auto_model  # a transformers PreTrainedModel
    accepted = set(inspect.signature(hf_model.forward).parameters)
    probe = model.preprocess(list(_PROBES[:2]), prompt="query: ")
    names = [n for n in _INPUTS if n in probe and n in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = hf_model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = hf_model(**dict(zip(names, tensors, strict=True))).last_hidden_state
            return hidden

    dynamic = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=dest.parent)
    os.close(fd)
    try:
        # The exporter warns about every traced branch of the model: noise for a user.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState().eval(),
                tuple(probe[n] for n in names),
                tmp,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, dest)  # a killed export never leaves a truncated model.onnx
    finally:
        Path(tmp).unlink(missing_ok=True)


def _agrees_with_torch(encoder: OnnxQueryEncoder, model: SentenceTransformer) -> float:
    """Lowest cosine between ORT and torch embeddings of the probe texts."""
    reference = model.encode(list(_PROBES), prompt="query: ", convert_to_numpy=True, show_progress_bar=False)
    worst = 1.0
    for text, ref in zip(_PROBES, reference, strict=True):
        vec = encoder.encode(text, "query: ")
        cos = float(vec @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref)))
        worst = min(worst, cos)
    return worst


def onnx_path(cache_dir: Path, fingerprint: str) -> Path:
    """Where the export of the model with ``fingerprint`` is cached."""
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "onnx" / key / "model.onnx"


def _export_failures() -> tuple[type[BaseException], ...]:
    """What exporting, opening or running the ONNX model can raise (onnxruntime is importable).

    ONNX Runtime's own errors (a damaged file, an unsupported graph) derive from
    ``Exception`` directly; the exporter raises ``RuntimeError`` (``OnnxExporterError``),
    ``TypeError``/``ValueError`` for inputs it can't trace, ``ImportError`` when the
    ``onnx`` package is missing; disk trouble is an ``OSError``; a model whose tokenizer
    yields other inputs than the export fails with ``KeyError``.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return (
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        ImportError,
        ort_state.Fail,
        ort_state.InvalidArgument,
        ort_state.InvalidGraph,
        ort_state.InvalidProtobuf,
        ort_state.NoSuchFile,
        ort_state.NotImplemented,
        ort_state.RuntimeException,
    )


def _open_or_export(model: SentenceTransformer, path: Path, threads: int) -> OnnxQueryEncoder:
    """The encoder over the cached export at ``path``, exporting first if it is missing or damaged."""
    if path.exists():
        try:
            return OnnxQueryEncoder(model, path, threads)
        except _export_failures() as exc:  # a damaged cache file: make it again
            log.warning("Cached ONNX export %s is unreadable (%s): exporting again", path, exc)
    t0 = time.perf_counter()
    _export(model, path)
    log.info("Exported the query encoder to %s in %.1f s", path, time.perf_counter() - t0)
    return OnnxQueryEncoder(model, path, threads)


def load_onnx_query_encoder(
    model: SentenceTransformer, fingerprint: str, cache_dir: Path, threads: int
) -> OnnxQueryEncoder | None:
    """The ORT encoder for ``model``, exported on first use under ``cache_dir``.

    ``None`` (with a logged reason) when ONNX Runtime is missing, the export fails or
    it disagrees with torch: any of those only costs speed, questions then go to torch.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnxruntime is not installed: questions are embedded with torch")
        return None
    path = onnx_path(cache_dir, fingerprint)
    try:
        encoder = _open_or_export(model, path, threads)
        worst = _agrees_with_torch(encoder, model)
    except _export_failures() as exc:
        log.warning("ONNX query encoder unavailable (%s): questions are embedded with torch", exc)
        return None
    if worst < _MIN_COSINE:
        log.warning(
            "ONNX query encoder differs from torch (cosine %.6f < %s): questions are embedded with torch",
            worst,
            _MIN_COSINE,
        )
        return None
    return encoder
