"""The thread beside the line that the drift watch and the queue of unsure items run on.

The station offers it every decided item after the item's gate command has gone
(:class:`~sortline.edge_runtime.station.observers.Observer`). Items wait in a bounded inbox; when
it is full the item is dropped and counted (``sampled_out``): under load the watch samples the
line rather than queue behind it, and the loop never waits for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from sortline.edge_runtime.station.observers import ObservedItem

log = logging.getLogger(__name__)
INBOX = 256
BUDGET = 0.2  # the share of one core the watch may use


class Consumer(Protocol):
    def take(self, item: ObservedItem) -> None: ...


class ItemWatch:
    """Runs ``consumers`` on each offered item, in order, on one thread of its own."""

    def __init__(self, consumers: Sequence[Consumer], inbox: int = INBOX, budget: float = BUDGET,
                 busy: Callable[[], bool] | None = None, name: str = "item-watch") -> None:
        if not 0 < budget <= 1:
            raise ValueError(f"watch budget {budget}: a share of one core in (0, 1]")
        self.consumers = tuple(consumers)
        self.name = name
        self.budget = budget
        self.busy = busy  # the station is behind: take nothing
        self._inbox: queue.Queue[ObservedItem] = queue.Queue(maxsize=inbox)
        self.offered = 0
        self.watched = 0
        self.sampled_out = 0  # dropped because the inbox was full
        self.errors = 0
        self.busy_s = 0.0  # time spent on items
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, item: ObservedItem) -> None:
        self.offered += 1
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.sampled_out += 1

    def start(self) -> ItemWatch:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until the items offered so far are watched (the end of a run: the watch no longer
        rests between items, the line having passed)."""
        self._draining.set()
        limit = time.monotonic() + timeout_s
        while self._inbox.unfinished_tasks and time.monotonic() < limit:
            time.sleep(0.01)
        if self._inbox.unfinished_tasks:
            log.warning("the watch had %d items left when its time to catch up ran out",
                        self._inbox.unfinished_tasks)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ItemWatch:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if self.busy is not None and not self._draining.is_set() and self.busy():
                self.sampled_out += 1
                self._inbox.task_done()
                continue
            started = time.perf_counter()
            for consumer in self.consumers:
                try:
                    consumer.take(item)
                except Exception:  # one bad item does not stop the watch
                    self.errors += 1
                    if self.errors == 1 or self.errors % 1000 == 0:
                        log.exception("watching item %s failed (#%d)", item.item_id, self.errors)
            spent = time.perf_counter() - started
            self.busy_s += spent
            self.watched += 1
            self._inbox.task_done()
            if not self._draining.is_set():
                self._stop.wait(spent * (1 / self.budget - 1))  # rest: the line's threads come first
