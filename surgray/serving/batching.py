"""A thread micro-batcher: requests of concurrent sessions share one model call.

The HTTP app runs each request's work in a thread pool, so frame requests arrive as blocking
calls on many threads. `MicroBatcher.submit(item)` hands the item to one worker thread and
waits; the worker takes the first waiting item, then keeps collecting until it holds
`max_batch_size` items or `wait_timeout_s` has passed since the first, and runs them with one
`run_batch(items)` call (for the tracker: `Tracker.step_many`, one batched image-encoder
pass). This is `@serve.batch` for synchronous code, and it runs without Ray.

One worker means the model runs one batch at a time, which is what a replica with a fraction
of a CPU (or one GPU) wants; decoding and mask encoding stay on the request threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
logger = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher was closed (replica shutting down); the item was not run."""


@dataclass
class BatchStats:
    """Counters since start: how many batches ran, how many items, the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Job(Generic[In, Out]):
    item: In
    future: Future


_STOP = object()


class MicroBatcher(Generic[In, Out]):
    """Runs `run_batch(items) -> results` (same length, same order) on batches of submits.

    If `run_batch` raises, every item of that batch gets the exception.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        max_batch_size: int,
        wait_timeout_s: float,
        name: str = "micro-batcher",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if wait_timeout_s < 0:
            raise ValueError(f"wait_timeout_s must be >= 0, got {wait_timeout_s}")
        self.max_batch_size = max_batch_size
        self.wait_timeout_s = wait_timeout_s
        self._run_batch = run_batch
        self._name = name
        self._clock = clock
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.stats = BatchStats()

    def submit(self, item: In) -> Out:
        """Run `item` in the next batch and return its result (or raise its batch's error)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self._name} is closed")
            self._ensure_worker()
            self._queue.put(_Job(item, future))
        return future.result()

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the items already submitted, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._queue.put(_STOP)
        if worker is not None:
            worker.join(timeout)

    # -- worker -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        # Started on first use, so building a backend (e.g. to describe it) starts no thread.
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._worker.start()

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch that starts with `first`, and whether a stop request was seen."""
        batch = [first]
        deadline = self._clock() + self.wait_timeout_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - self._clock()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            self._run(batch)
        # Anything submitted after the stop marker (a race with close) is refused, not lost.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                job.future.set_exception(BatcherClosed(f"{self._name} is closed"))

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = list(self._run_batch([job.item for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self._name}: run_batch returned {len(results)} results for "
                    f"{len(batch)} items"
                )
        except BaseException as exc:  # every caller of the batch learns of the failure
            if not isinstance(exc, Exception):
                logger.error("%s: batch interrupted by %r", self._name, exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        finally:
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
        for job, result in zip(batch, results):
            job.future.set_result(result)
