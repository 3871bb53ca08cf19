"""Progress lines for the steps a user waits on (model conversion, exports, loading, embedding).

Everything goes to the ``rag.progress`` logger as plain Chinese lines. The library never
prints: the CLI shows these lines on stderr (``rag.cli.main``), a test or a library user
sees nothing unless they listen. :func:`step` brackets a long step with a start line,
a "still working" line every few seconds while anyone listens, and the time it took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("rag.progress")

HEARTBEAT_S = 5.0
"""Seconds between "still working" lines: no silent stretch over 10 s. Not 8: during the ONNX
exports the heartbeat thread waits for the GIL, and a fresh-clone ``make run`` measured 8 s
ticks arriving after 10.1 and 11.8 s."""


def note(message: str, *args: object) -> None:
    """One progress line."""
    log.info(message, *args)


@contextmanager
def step(message: str, *args: object, done: str | None = None) -> Iterator[None]:
    """Log ``message``, then a line every :data:`HEARTBEAT_S` seconds, then ``done（N 秒）``.

    The heartbeat thread only runs when the ``rag.progress`` logger shows INFO lines.
    Nothing is logged at the end when ``done`` is ``None`` or the step raised.
    """
    log.info(message, *args)
    started = time.perf_counter()
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            log.info("  ……仍在进行，已用 %.0f 秒", time.perf_counter() - started)

    ticker = None
    if log.isEnabledFor(logging.INFO):
        ticker = threading.Thread(target=heartbeat, name="rag-progress", daemon=True)
        ticker.start()
    try:
        yield
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
    if done is not None:
        log.info("%s（%.1f 秒）", done, time.perf_counter() - started)
