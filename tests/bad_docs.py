"""A docs folder with one good file and three a build must skip (test_index, test_api).

The bad files are real: a PNG image written byte for byte by the PNG rules renamed ``.md``
(binary content behind a text suffix), the same bytes as ``.xlsx`` (a type not read) and an
empty ``.txt``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

GOOD_NAME = "good.txt"
GOOD_DOC = (
    "青石岭村建成“星光书屋”乡村图书馆\n\n"
    "本报讯（通讯员 林晓雨）日前，青石岭村建成了一座名为“星光书屋”的乡村图书馆，"
    "馆内共有藏书8600册，每天向村民免费开放。\n"
)
GOOD_QUESTION = "青石岭村建成的乡村图书馆叫什么名字"

BAD_REASONS = {
    "binary.md": "不是文本文件（含二进制内容）；请另存为 UTF-8 文本",
    "empty.txt": "空文件",
    "sheet.xlsx": "不支持的文件类型 .xlsx；支持 .txt、.md、.pdf、.docx、."
    "html、.htm、.png、.jpg、.jpeg、.tif、.tiff、.bmp、.webp",
}
"""Each bad file's name and the reason a build gives for skipping it."""


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A valid RGB PNG (signature, IHDR, IDAT, IEND with their CRCs): a grey square."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def write_bad_docs(docs: Path) -> Path:
    """Fill ``docs`` (created) with the good file and the three bad ones; returns ``docs``."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / GOOD_NAME).write_text(GOOD_DOC, encoding="utf-8")
    (docs / "binary.md").write_bytes(png_bytes())
    (docs / "sheet.xlsx").write_bytes(png_bytes())
    (docs / "empty.txt").write_bytes(b"")
    return docs
