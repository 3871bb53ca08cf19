"""`rag build` over a docs folder with bad files: the rest is indexed, every bad file is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_docs import BAD_REASONS, GOOD_NAME, write_bad_docs
from typer.testing import CliRunner

from rag.cli import app
from rag.index import require_index
from rag.settings import Settings

pytestmark = pytest.mark.slow  # the command loads the embedding model


def test_build_skips_and_names_every_bad_file(tmp_path: Path) -> None:
    docs, index = write_bad_docs(tmp_path / "docs"), tmp_path / "index"
    result = CliRunner().invoke(app, ["build", "--docs", str(docs), "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert "已建立索引：1 个文档" in result.output
    for name, reason in BAD_REASONS.items():
        assert f"  {name}：{reason}" in result.output.splitlines()
    assert f"跳过 {len(BAD_REASONS)} 个文件" in result.output
    build = require_index(Settings(docs_dir=docs, index_dir=index))
    assert GOOD_NAME in (build / "manifest.json").read_text(encoding="utf-8")


def test_build_strict_stops_at_the_first_bad_file(tmp_path: Path) -> None:
    docs, index = write_bad_docs(tmp_path / "docs"), tmp_path / "index"
    result = CliRunner().invoke(app, ["build", "--strict", "--docs", str(docs), "--index", str(index)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and "binary.md" in lines[0] and "empty.txt" not in lines[0]
    assert not (index / "CURRENT").exists()  # nothing half-written
