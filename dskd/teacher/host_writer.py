"""Host work of the teacher pass on one background thread, so it overlaps the next forward.

The forward of batch i+1 runs while batch i's top-k rows are encoded, its hidden states filed in the reservoir and
its Parquet row groups written. One worker thread and a FIFO queue keep the order of every write and every
reservoir draw, so the output is byte-for-byte the inline one; the queue is bounded (``depth`` batches), so host
memory stays bounded when the writer is slower than the forward. An error on the thread is raised in the caller at
its next :meth:`submit` or at :meth:`close`, never swallowed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_DONE = object()


class HostWriter:
    """Runs ``work(item)`` for every submitted item, in order, on one thread (``overlap=False``: inline)."""

    def __init__(self, work: Callable[[Any], None], depth: int = 2, overlap: bool = True) -> None:
        self._work = work
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if overlap:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="teacher-host-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:  # after an error: drain without working, so submit() never blocks forever
                try:
                    self._work(item)
                except BaseException as err:  # re-raised in the caller's thread
                    self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: Any) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the thread's error if one occurred."""
        self._raise_if_failed()
        if self._queue is None:
            self._work(item)
        else:
            self._queue.put(item)

    def _stop(self) -> None:
        """Let the thread finish what is queued, then join it (nothing to do inline or once stopped)."""
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()

    def close(self) -> None:
        """Wait until every submitted item is done; raise the thread's error if one occurred."""
        self._stop()
        self._raise_if_failed()

    def __enter__(self) -> HostWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._error = self._error or exc  # the thread drains without working; the caller's exception propagates
            self._stop()
