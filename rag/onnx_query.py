"""Fast single-question embedding: the model's transformer run by ONNX Runtime.

One short question through the default model costs ~45 ms in torch on 2 cores and
~19 ms in ONNX Runtime, with the same vector (cosine 1.000000 on the seed questions).
The forward pass of a 20-token input is bound by reading 85 MB of fp32 weights, which
ORT's kernels do with far less per-operation overhead than eager torch. For batches
torch is faster (1,116 vs 795 tokens/s on the seed chunks), so index builds stay on
torch and only :meth:`rag.embedding.Embedder.embed_query` comes here.

Only the transformer moves. For a model of the standard layout (``Transformer``, mean
or CLS ``Pooling``, optional ``Normalize``: e5, bge, ...) tokenization and pooling are
done here with ``tokenizers`` and numpy (:class:`StandardQueryEncoder`), so a command
that only embeds questions never imports torch or sentence-transformers; any other
layout keeps the sentence-transformers model's own modules (:class:`OnnxQueryEncoder`).

The export is made once per model (by fingerprint) under ``<cache_dir>/onnx/``, its
weights in a separate ``.data`` file that ONNX Runtime maps instead of parsing (a
session opens in ~0.1 s instead of ~2 s), and checked against torch before it is
used; the check's result is kept beside it (``verified.json``), so later processes
open the export without loading torch. If anything fails, the embedder keeps using
torch and logs why. The embedder asks for it on its first question (or when a server
warms it), never for an index build.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

from rag.progress import step

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
_VERIFIED = "verified.json"
# An .onnx graph file above this size holds its weights inline (the old cache format).
_INLINE_WEIGHTS_BYTES = 50_000_000


class QueryEncoder(Protocol):
    """What :class:`rag.embedding.Embedder` needs of a question encoder."""

    path: Path

    def encode(self, text: str, prompt: str) -> npt.NDArray[np.float32]:
        """The sentence embedding of ``prompt + text`` (float32 ``[dim]``)."""
        ...


def open_session(path: Path, threads: int) -> Any:
    """An ORT CPU session over ``path``; ``threads`` 0 lets ORT pick (one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    # Like OMP_WAIT_POLICY=PASSIVE for torch (rag.embedding.configure_runtime): no spinning
    # threads that would hold the core a web worker or an index build needs. Costs <1 ms a query.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@functools.cache
def load_tokenizer(path: Path) -> Tokenizer:
    """The ``tokenizers`` tokenizer of a ``tokenizer.json``, parsed once per process (~1 s).

    Shared (the question encoder and the reader read the same e5 vocabulary), so callers
    never change its truncation or padding: they truncate an ``Encoding`` themselves.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class StandardPipeline:
    """What sentence-transformers does around the transformer of a standard-layout model."""

    tokenizer_file: Path
    max_seq_length: int
    pooling: Literal["mean", "cls"]
    normalize: bool
    dim: int
    prompts: tuple[tuple[str, str], ...] = ()
    """The model's configured prompts (``config_sentence_transformers.json``), as pairs."""


_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def standard_pipeline(model_dir: Path) -> StandardPipeline | None:
    """The pipeline of a ``Transformer`` + mean/CLS ``Pooling`` (+ ``Normalize``) model; else ``None``."""
    try:
        modules = _read_json(model_dir / "modules.json")
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if modules[0].get("path", "") not in ("", "."):
            return None
        pool = _read_json(model_dir / modules[1]["path"] / "config.json")
        modes = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v]
        if len(modes) != 1 or modes[0] not in _POOLING_MODES or not pool.get("include_prompt", True):
            return None
        st_config = _read_json(model_dir / "sentence_bert_config.json")
        if st_config.get("do_lower_case") or not st_config.get("max_seq_length"):
            return None
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            return None
        configured: dict[str, Any] = {}
        if (model_dir / "config_sentence_transformers.json").is_file():
            configured = _read_json(model_dir / "config_sentence_transformers.json").get("prompts") or {}
        return StandardPipeline(
            tokenizer_file=tokenizer_file,
            max_seq_length=int(st_config["max_seq_length"]),
            pooling="mean" if _POOLING_MODES[modes[0]] == "mean" else "cls",
            normalize=len(kinds) == 3,
            dim=int(pool["word_embedding_dimension"]),
            prompts=tuple((str(k), v) for k, v in configured.items() if isinstance(v, str)),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


class StandardQueryEncoder:
    """Embeds one text with ORT, tokenized by ``tokenizers`` and pooled in numpy: no torch."""

    def __init__(self, path: Path, pipeline: StandardPipeline, threads: int) -> None:
        self.session = open_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(pipeline.tokenizer_file)
        self.pipeline = pipeline
        self.path = path

    def encode(self, text: str, prompt: str) -> npt.NDArray[np.float32]:
        """The model's sentence embedding of ``prompt + text`` (float32 ``[dim]``)."""
        tok = self.tokenizer
        enc = tok.encode(prompt + text, add_special_tokens=False)
        # What truncation=True does for one sequence: cut the text, then add the specials.
        enc.truncate(self.pipeline.max_seq_length - tok.num_special_tokens_to_add(False))
        enc = tok.post_process(enc)
        columns = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        feeds = {name: np.asarray([columns[name]], dtype=np.int64) for name in self.input_names}
        hidden = np.asarray(self.session.run(None, feeds)[0][0], dtype=np.float32)
        vec = hidden.mean(axis=0) if self.pipeline.pooling == "mean" else hidden[0]
        if self.pipeline.normalize:
            vec = vec / np.float32(max(float(np.linalg.norm(vec)), 1e-12))
        out: npt.NDArray[np.float32] = vec.astype(np.float32)
        return out


class OnnxQueryEncoder:
    """Embeds one text at a time with ORT running the transformer of ``model``."""

    def __init__(self, model: SentenceTransformer, path: Path, threads: int) -> None:
        self.session = open_session(path, max(1, threads))
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


def save_with_external_weights(source: Path, dest: Path) -> None:
    """Write the ONNX model ``source`` to ``dest`` with its weights in ``<dest>.data``.

    ONNX Runtime maps an external weights file instead of parsing it: a 470 MB model
    opens in ~0.1 s instead of ~2 s. Both files are written in a temporary folder and
    moved into place weights first, so a reader never sees a graph without its weights.
    """
    import onnx

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        model = onnx.load(str(source))
        data_name = f"{dest.name}.data"
        onnx.save_model(
            model,
            str(tmp / dest.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        for path in tmp.iterdir():
            path.chmod(0o644)  # a model cache is shared read-only, like the converted model
        os.replace(tmp / data_name, dest.parent / data_name)
        os.replace(tmp / dest.name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def has_inline_weights(path: Path) -> bool:
    """True for an ``.onnx`` file in the old one-file format (slow to open)."""
    return path.stat().st_size > _INLINE_WEIGHTS_BYTES


def _export(model: SentenceTransformer, dest: Path) -> None:
    """Write the first module's transformer to ``dest`` as ONNX (weights beside it), atomically."""
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
    (dest.parent / _VERIFIED).unlink(missing_ok=True)
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
        save_with_external_weights(Path(tmp), dest)  # a killed export never leaves a truncated model
    finally:
        Path(tmp).unlink(missing_ok=True)


def _agrees_with_torch(encoder: QueryEncoder, model: SentenceTransformer) -> float:
    """Lowest cosine between ORT and torch embeddings of the probe texts."""
    reference = model.encode(list(_PROBES), prompt="query: ", convert_to_numpy=True, show_progress_bar=False)
    worst = 1.0
    for text, ref in zip(_PROBES, reference, strict=True):
        vec = encoder.encode(text, "query: ")
        cos = float(vec @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref)))
        worst = min(worst, cos)
    return worst


def onnx_path(cache_dir: Path, fingerprint: str) -> Path:
    """Where the export of the model with ``fingerprint`` is cached (its weights: ``<path>.data``)."""
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "onnx" / key / "model.onnx"


def _export_failures() -> tuple[type[BaseException], ...]:
    """What exporting, opening or running the ONNX model can raise (onnxruntime is importable).

    ONNX Runtime's own errors (a damaged file, an unsupported graph) derive from
    ``Exception`` directly; the exporter raises ``RuntimeError`` (``OnnxExporterError``),
    ``TypeError``/``ValueError`` for inputs it can't trace, ``ImportError`` when the
    ``onnx`` package is missing; disk trouble is an ``OSError``; a model whose tokenizer
    yields other inputs than the export fails with ``KeyError``. ``onnx.load`` of a
    damaged file raises protobuf's ``DecodeError`` (a ``ValueError``... or not, by version).
    """
    from google.protobuf.message import DecodeError
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return (
        OSError,
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        ImportError,
        DecodeError,
        ort_state.Fail,
        ort_state.InvalidArgument,
        ort_state.InvalidGraph,
        ort_state.InvalidProtobuf,
        ort_state.NoSuchFile,
        ort_state.NotImplemented,
        ort_state.RuntimeException,
    )


def _make_encoder(
    model: SentenceTransformer, path: Path, threads: int, pipeline: StandardPipeline | None
) -> QueryEncoder:
    if pipeline is not None:
        return StandardQueryEncoder(path, pipeline, threads)
    return OnnxQueryEncoder(model, path, threads)


def _open_or_export(
    model: SentenceTransformer, path: Path, threads: int, pipeline: StandardPipeline | None = None
) -> QueryEncoder:
    """The encoder over the cached export at ``path``, exporting first if it is missing or damaged."""
    if path.exists():
        try:
            if has_inline_weights(path):  # the one-file format of earlier versions: slow to open
                with step("问题编码器转为快速加载格式（只需一次）：%s", path, done="转换完成"):
                    save_with_external_weights(path, path)
            return _make_encoder(model, path, threads, pipeline)
        except _export_failures() as exc:  # a damaged cache file: make it again
            log.warning("Cached ONNX export %s is unreadable (%s): exporting again", path, exc)
    with step("首次使用：把问题编码器导出为 ONNX（只需一次，约半分钟）：%s", path, done="问题编码器已导出"):
        _export(model, path)
    return _make_encoder(model, path, threads, pipeline)


def _export_identity(path: Path) -> dict[str, int]:
    """Size and mtime of the export's files: a new export makes an old check void."""
    out: dict[str, int] = {}
    for file in (path, path.with_name(f"{path.name}.data")):
        stat = file.stat()
        out[f"{file.name}:size"] = stat.st_size
        out[f"{file.name}:mtime_ns"] = stat.st_mtime_ns
    return out


def _record_check(path: Path, worst: float, pipeline: StandardPipeline | None) -> None:
    """Remember that the export at ``path`` agreed with torch (for :func:`open_verified_encoder`)."""
    if pipeline is None:
        return  # only the standard pipeline opens without torch
    record = {"min_cosine": worst, "pipeline": "standard", "files": _export_identity(path)}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path.parent / _VERIFIED)
    except OSError as exc:  # a read-only cache only costs the check next time
        log.info("Cannot record the ONNX check in %s (%s)", path.parent, exc)


def open_verified_encoder(
    fingerprint: str, cache_dir: Path, pipeline: StandardPipeline, threads: int = 0
) -> StandardQueryEncoder | None:
    """The standard-pipeline encoder over an export already checked against torch, else ``None``.

    Needs neither torch nor sentence-transformers: what a ``rag search`` on a warm cache
    uses. ``None`` (nothing logged) when there is no checked export yet or it cannot be
    opened; the caller then takes the full path, :func:`load_onnx_query_encoder`.
    """
    path = onnx_path(cache_dir, fingerprint)
    if not (path.parent / _VERIFIED).is_file():
        return None
    try:
        import onnxruntime  # noqa: F401

        record = _read_json(path.parent / _VERIFIED)
        if (
            record.get("pipeline") != "standard"
            or float(record.get("min_cosine", 0.0)) < _MIN_COSINE
            or record.get("files") != _export_identity(path)
        ):
            return None
        return StandardQueryEncoder(path, pipeline, threads)
    except ImportError:
        return None
    except _export_failures() as exc:
        log.info("Checked ONNX export %s cannot be opened (%s): checking again", path, exc)
        return None


def load_onnx_query_encoder(
    model: SentenceTransformer,
    fingerprint: str,
    cache_dir: Path,
    threads: int,
    pipeline: StandardPipeline | None = None,
) -> QueryEncoder | None:
    """The ORT encoder for ``model``, exported on first use under ``cache_dir``, checked against torch.

    With ``pipeline`` (the model's :func:`standard_pipeline`) the encoder tokenizes and
    pools without torch, and a passed check is recorded for :func:`open_verified_encoder`.
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
        encoder = _open_or_export(model, path, threads, pipeline)
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
    _record_check(path, worst, pipeline)
    return encoder
