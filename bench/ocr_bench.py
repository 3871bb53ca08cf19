"""OCR speed at 300 dpi: pages per second of ``rag.ocr.ocr_image`` for 1 and 2 onnxruntime threads.

Pages are two-column A4-sized screenshots of seed articles rendered by Chromium at 300 dpi
(about 2481 x 3500 pixels, 12 pt Noto CJK); rendering is not timed. Each thread count gets
a warm-up page (engine load), then ``--pages`` timed pages; accuracy is printed alongside.

    .venv/bin/python bench/ocr_bench.py --pages 3
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from rag.evaluation.ocr import char_accuracy, chromium, render_png, samples_from_docs
from rag.ocr import _engine, ocr_image

log = logging.getLogger("ocr_bench")
SEEDS = Path(__file__).resolve().parent.parent / "seeds"
A4_COLUMN_CHARS = 760
"""Text per column that fills an A4 page's height at 12 pt."""


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--pages", type=int, default=3, help="timed pages per thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime intra-op threads")
    parser.add_argument("--docs", type=Path, default=SEEDS, help="folder of news articles to render")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    samples = samples_from_docs(args.docs, args.pages + 1, A4_COLUMN_CHARS)
    with chromium() as browser:
        pngs = [render_png(browser, sample.html()) for sample in samples]
    log.info("CPUs available: %d; %d pages rendered", len(os.sched_getaffinity(0)), len(pngs))
    for threads in args.threads:
        started = time.perf_counter()
        _engine(threads)
        ocr_image(pngs[0], threads=threads)  # warm-up: model load and first-run allocations
        warm = time.perf_counter() - started
        started = time.perf_counter()
        pages = [ocr_image(png, threads=threads) for png in pngs[1:]]
        seconds = time.perf_counter() - started
        accuracy = sum(char_accuracy(p.text, s.reference) for p, s in zip(pages, samples[1:], strict=True))
        size = f"{pages[0].width}x{pages[0].height}"
        log.info(
            "threads=%d: %.3f pages/s (%.2f s/page, %s px, accuracy %.4f; load + first page %.1f s)",
            threads,
            len(pages) / seconds,
            seconds / len(pages),
            size,
            accuracy / len(pages),
            warm,
        )


if __name__ == "__main__":
    main()
