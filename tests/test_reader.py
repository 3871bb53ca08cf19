"""The trained reader: the training code path on a tiny subset, the shipped weights, answers.

No test trains the real model: training runs for a few steps on a handful of questions of
the real training files (``../shared/bench/train``), which exercises the same code as the
full run. Every answer test loads the weights shipped in ``rag/weights``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rag.reader import WEIGHTS_FILE, ReaderError, load_reader, read_manifest, sha256_file
from rag.settings import Settings

# Each test trains, exports or loads the reader: the slow lane.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "bench" / "train"
TRAIN_FILES = [TRAIN / "cmrc2018_train.json", TRAIN / "DRCD_test.json", TRAIN / "xquad.zh.json"]

needs_train_data = pytest.mark.skipif(
    not all(f.is_file() for f in TRAIN_FILES) and not os.environ.get("CI"),
    reason="the training sets are in ../shared/bench/train (always there in CI)",
)


@pytest.fixture(scope="module")
def base_model_dir(settings: Settings) -> Path:
    from rag.embedding import ensure_default_model

    return ensure_default_model(settings.cache_dir)


def _tiny_config(out: Path, base: Path, **extra: object):  # type: ignore[no-untyped-def]
    from rag.reader_training import TrainConfig

    return TrainConfig(
        data=TRAIN_FILES,
        out_dir=out,
        base_model_dir=base,
        limit_questions=4,
        max_windows=24,
        batch_size=8,
        threads=2,
        checkpoint_every=1,
        snapshot_every=16,
        **extra,  # type: ignore[arg-type]
    )


@needs_train_data
def test_train_reader_cli_runs_the_real_code_path(tmp_path: Path) -> None:
    """``rag train-reader`` on 6 questions per file: weights with a checksum, then the CMRC score."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rag",
            "train-reader",
            "--out",
            str(out),
            "--limit-questions",
            "6",
            "--max-windows",
            "16",
            "--batch-size",
            "8",
            "--threads",
            "2",
            "--eval-limit",
            "1",
            "--snapshot-every",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = out / "reader.safetensors"
    manifest = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == sha256_file(weights)
    assert manifest["windows"] == 16 and manifest["steps"] == 2
    assert "CMRC 2018 trial（给定标准段落）：F1" in proc.stdout, proc.stdout
    assert (out / "checkpoint.pt").is_file()
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [row["windows"] for row in curve] == [8, 16]


@needs_train_data
def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path, base_model_dir: Path) -> None:
    """Killed after step 1 and run again, training ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from rag.reader_training import train

    straight = train(_tiny_config(tmp_path / "straight", base_model_dir))

    class Stop(Exception):
        pass

    def stop_after_first(step: int, total: int, loss: float) -> None:
        if step == 1:
            raise Stop

    cfg = _tiny_config(tmp_path / "resumed", base_model_dir)
    with pytest.raises(Stop):
        train(cfg, progress=stop_after_first)
    assert (cfg.out_dir / "checkpoint.pt").is_file()
    resumed = train(cfg)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"resumed run differs in {different[:3]}"


@needs_train_data
def test_a_changed_config_does_not_resume_a_checkpoint(tmp_path: Path, base_model_dir: Path) -> None:
    from rag.reader_training import train

    train(_tiny_config(tmp_path / "run", base_model_dir, max_length=128))
    with pytest.raises(ValueError, match="another training config"):
        train(_tiny_config(tmp_path / "run", base_model_dir, max_length=160))


def test_shipped_weights_match_their_checksum() -> None:
    manifest = read_manifest()
    assert WEIGHTS_FILE.stat().st_size <= 50 * 1024 * 1024
    assert manifest["sha256"] == sha256_file(WEIGHTS_FILE)


def test_damaged_weights_are_one_clear_error(tmp_path: Path, base_model_dir: Path) -> None:
    weights = tmp_path / "reader.safetensors"
    shutil.copy(WEIGHTS_FILE, weights)
    shutil.copy(WEIGHTS_FILE.with_suffix(".json"), weights.with_suffix(".json"))
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ReaderError) as info:
        load_reader(base_model_dir, tmp_path / "cache", weights=weights)
    message = str(info.value)
    assert "\n" not in message and "damaged" in message and str(weights) in message
    assert not (tmp_path / "cache").exists(), "nothing is assembled from damaged weights"


def test_onnx_export_reads_like_torch(tmp_path: Path, base_model_dir: Path) -> None:
    """The ONNX Runtime reader finds the same spans with the same scores as the torch model."""
    passages = [
        "2024年3月，县工商联会同大桥商会协商成立“基层站所+商会企业”创新服务联盟，为企业提供服务。",
        "街道党工委书记施军瑶指出，今年是决战决胜之年。" * 12,
    ]
    torch_reader = load_reader(base_model_dir, tmp_path, backend="torch")
    onnx_reader = load_reader(base_model_dir, tmp_path, backend="onnx")
    a = torch_reader.read("成立了什么联盟", passages)
    b = onnx_reader.read("成立了什么联盟", passages)
    assert [(r.passage, r.start, r.end) for r in a] == [(r.passage, r.start, r.end) for r in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x.score - y.score) < 1e-2 and abs(x.null_score - y.null_score) < 1e-2
