"""Bounded work: at most a few answers computed at once, a bounded queue, and a deadline.

Answering is CPU work (embedding, BM25, the reader), two cores of it here: forty threads
answering at once only make every answer slow. :class:`AnswerLimiter` lets
``RAG_MAX_CONCURRENT_ANSWERS`` requests of the expensive routes compute at once; up to
``RAG_MAX_QUEUED_ANSWERS`` more wait, each at most ``RAG_QUEUE_TIMEOUT`` seconds. A request
that finds the queue full, or waits too long, gets 503 with ``Retry-After``, at once.

A request that has not started its response ``RAG_REQUEST_TIMEOUT`` seconds after it got
its slot is answered 503 with ``Retry-After`` too. Python cannot stop the thread computing
it, so its slot stays taken until that thread ends (its output is dropped): the cores are
never shared by more answers than the limit allows. Streams are bounded by what one
answer may cost (the size limits of the request), not by this deadline, once they started.

Requests are taken in two lanes: ``heavy`` ones (a body over :data:`HEAVY_BODY_BYTES`, a
query string over :data:`HEAVY_QUERY_BYTES`) share one slot of their own, so that a flood
of long crafted questions waits behind itself, not in front of the readers' questions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.api.errors import error_response
from rag.settings import Settings

log = logging.getLogger(__name__)

LIMITED_ROUTES = frozenset(
    {("POST", "/ask"), ("POST", "/ask/stream"), ("POST", "/v1/chat/completions"), ("GET", "/search")}
)
"""The routes that compute an answer or a ranking: the ones the limiter guards."""

HEAVY_BODY_BYTES = 4_000
"""A body larger than this is taken in the heavy lane: about 1,300 Chinese characters in
UTF-8 (a question may have 2,000: 6 KB), 660 when the client escapes them as ``\\uXXXX``.
A chat page question with its six earlier turns is typically under 2 KB."""
HEAVY_QUERY_BYTES = 2_000
"""A query string longer than this (``GET /search?q=...``) is taken in the heavy lane."""


@dataclass
class Lane:
    """Slots of one kind of request: how many may compute at once, and a first-come queue.

    A freed slot is handed to the longest waiting request directly, so a request arriving
    just then cannot take it first (with a condition variable, late arrivals overtook the
    queue: at 64 clients the slowest 5% waited twice as long as the median).
    Used from the server's event loop only, so it needs no lock.
    """

    name: str
    slots: int
    queue: int
    busy: int = 0
    seconds: float = 1.0
    """Moving average of the time a request held its slot (for ``Retry-After``)."""
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self._waiters)

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting up to ``timeout`` seconds in turn; :class:`Busy` if none comes."""
        if self.busy < self.slots and not self._waiters:
            self.busy += 1
            return
        if len(self._waiters) >= self.queue:
            raise Busy(
                f"server busy: {self.busy} answers running and {self.waiting} waiting "
                "(RAG_MAX_QUEUED_ANSWERS); retry later",
                self.retry_after(),
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            done, _ = await asyncio.wait({turn}, timeout=timeout)
        except BaseException:
            self._give_up(turn)
            raise
        if not done:
            self._give_up(turn)
            raise Busy(
                f"server busy: no answer slot within {timeout:g} s (RAG_QUEUE_TIMEOUT); retry later",
                self.retry_after(),
            )

    def _give_up(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self.release()  # the slot came just as the wait ended: pass it on
            return
        turn.cancel()
        if turn in self._waiters:
            self._waiters.remove(turn)

    def release(self) -> None:
        """Free a slot: it goes to the first request still waiting, else back to the pool."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.busy -= 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free, for the whole queue ahead (at least 1)."""
        return max(1, math.ceil(self.seconds * (self.waiting + 1) / self.slots))

    def record(self, seconds: float) -> None:
        """Fold one request's time in its slot into the average."""
        self.seconds = 0.8 * self.seconds + 0.2 * seconds


class Busy(Exception):
    """No slot: the queue is full or the wait ran out."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AnswerLimiter:
    """ASGI middleware bounding the answers computed at once, the queue and the time to answer."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.queue_timeout = settings.queue_timeout
        self.request_timeout = settings.request_timeout
        self.lanes = {
            "normal": Lane("normal", settings.max_concurrent_answers, settings.max_queued_answers),
            "heavy": Lane("heavy", 1, settings.max_queued_answers),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Take a slot for a guarded route (or answer 503), then run the request under its deadline."""
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in LIMITED_ROUTES:
            await self.app(scope, receive, send)
            return
        lane = self.lanes["heavy" if is_heavy(scope) else "normal"]
        try:
            await lane.acquire(self.queue_timeout)
        except Busy as exc:
            await self._unavailable(scope, receive, send, str(exc), exc.retry_after)
            return
        started = time.monotonic()
        try:
            await self._run_with_deadline(scope, receive, send, lane)
        finally:
            lane.record(time.monotonic() - started)
            lane.release()

    async def _run_with_deadline(self, scope: Scope, receive: Receive, send: Send, lane: Lane) -> None:
        started = asyncio.Event()
        abandoned = False

        async def guarded_send(message: Message) -> None:
            if abandoned:
                return  # the client was already answered 503
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        async def run() -> None:
            await self.app(scope, receive, guarded_send)

        task = asyncio.create_task(run())
        waiter = asyncio.create_task(started.wait())
        try:
            await asyncio.wait(
                {task, waiter}, timeout=self.request_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if not task.done() and not started.is_set():
            abandoned = True
            log.warning(
                "%s %s took over %g s (RAG_REQUEST_TIMEOUT): answered 503, its result will be dropped",
                scope["method"],
                scope["path"],
                self.request_timeout,
            )
            message = (
                f"the answer took longer than {self.request_timeout:g} s (RAG_REQUEST_TIMEOUT); "
                "retry later, or ask a shorter question"
            )
            await self._unavailable(scope, receive, send, message, lane.retry_after())
            # Until the computation ends its slot stays taken: the cores hold no more than the limit.
            try:
                await task
            except Exception:
                log.exception("the abandoned %s %s failed", scope["method"], scope["path"])
            return
        await task

    async def _unavailable(
        self, scope: Scope, receive: Receive, send: Send, message: str, retry: int
    ) -> None:
        response = error_response(Request(scope), 503, message, headers={"Retry-After": str(retry)})
        await response(scope, receive, send)


def is_heavy(scope: Scope) -> bool:
    """Whether a request is big enough for the heavy lane (by its declared body or query size)."""
    if len(scope.get("query_string", b"")) > HEAVY_QUERY_BYTES:
        return True
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.isdigit() and int(value) > HEAVY_BODY_BYTES
        if name == b"transfer-encoding":
            return True  # chunked: the size is unknown, so treat it as big
    return False
