"""One row per request, written in batches so that no response waits for the database."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .types import RequestRecord

if TYPE_CHECKING:
    from .config import RequestLogConfig
    from .metrics import Metrics
    from .store import Store

__all__ = ["RequestLog"]

log = logging.getLogger("first_proxy.requestlog")


class RequestLog:
    """A buffer of rows written to the store in batches of ``batch_size`` rows, as soon as
    one is full, and whatever is there every ``flush_interval``.

    Under load only whole batches are written: rows that arrive during a write wait for the
    next batch rather than go out as a small one of their own, which would cost a commit (and
    rewrite the same database pages) for a handful of rows. While the store is unreachable
    rows stay buffered (up to ``max_buffer``) and are retried every ``flush_interval``;
    ``aclose`` writes whatever is left.
    """

    def __init__(self, store: Store, config: RequestLogConfig, metrics: Metrics) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self._rows: list[RequestRecord] = []
        self._batch_size = config.batch_size
        self._wake = asyncio.Event()
        # One flush at a time: two would write the same batch and then delete twice.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="first-proxy-request-log")

    def add(self, row: RequestRecord) -> None:
        rows = self._rows
        rows.append(row)
        # Only the row that fills a batch wakes the writer: the rows after it are taken with
        # it, and while the store is down they wait for the interval instead of each starting
        # another attempt.
        if len(rows) == self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._rows)

    async def flush(self, *, whole_batches: bool = False) -> bool:
        """Write everything buffered (with ``whole_batches``, only full batches); False (rows
        kept) if the store failed."""
        async with self._flushing:
            size = self._batch_size
            while len(self._rows) >= (size if whole_batches else 1):
                batch = self._rows[:size]
                try:
                    await self.store.insert_requests(batch)
                except Exception as e:
                    log.warning("request log: store write failed, %d row(s) kept for retry: %s",
                                len(self._rows), e)
                    self._trim()
                    return False
                del self._rows[: len(batch)]
            return True

    def _trim(self) -> None:
        excess = len(self._rows) - self.config.max_buffer
        if excess > 0:
            del self._rows[:excess]
            self.metrics.log_dropped.inc(excess)
            log.error("request log: dropped %d oldest row(s): the store has been unreachable "
                      "for too long", excess)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval)
            except TimeoutError:
                whole_batches = False  # the interval is up: write what there is
            else:
                whole_batches = True  # a batch is full (or the log is closing)
            self._wake.clear()
            await self.flush(whole_batches=whole_batches)

    async def aclose(self) -> None:
        # Let a write in progress finish rather than cancel it: a cancelled write may still
        # commit, and its rows would then be written twice.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if not await self.flush():
            log.error("request log: %d row(s) could not be written at shutdown", len(self._rows))
