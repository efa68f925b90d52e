"""The thread beside the line that the drift watch and the queue of unsure items run on.

The station offers it every decided item after the item's gate command has gone
(:class:`~sortline.edge_runtime.station.observers.Observer`). Items wait in a bounded inbox; when
it is full the oldest waiting item is dropped and counted (``sampled_out``): under load the watch
samples the line as it is now rather than queue behind it (a full FIFO inbox would keep it
minutes behind the line), and the loop never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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
        self._inbox: deque[ObservedItem] = deque(maxlen=inbox)
        self._ready = threading.Condition()
        self._working = False  # an item is being watched now
        self.offered = 0
        self.watched = 0
        self.sampled_out = 0  # dropped because the inbox was full
        self.errors = 0
        self.busy_s = 0.0  # time spent on items
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, item: ObservedItem) -> None:
        with self._ready:
            self.offered += 1
            if len(self._inbox) == self._inbox.maxlen:
                self.sampled_out += 1  # the oldest waiting item makes room
            self._inbox.append(item)
            self._ready.notify()

    @property
    def waiting(self) -> int:
        """Items offered and not yet watched (or dropped)."""
        return len(self._inbox) + self._working

    def start(self) -> ItemWatch:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until the items offered so far are watched (the end of a run: the watch no longer
        rests between items, the line having passed)."""
        self._draining.set()
        limit = time.monotonic() + timeout_s
        while self.waiting and time.monotonic() < limit:
            time.sleep(0.01)
        if self.waiting:
            log.warning("the watch had %d items left when its time to catch up ran out", self.waiting)

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ItemWatch:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _next(self) -> ObservedItem | None:
        with self._ready:
            while not self._inbox and not self._stop.is_set():
                self._ready.wait(0.1)
            if self._stop.is_set():
                return None
            self._working = True
            return self._inbox.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                if self.busy is not None and not self._draining.is_set() and self.busy():
                    self.sampled_out += 1
                    continue
                started = time.perf_counter()
                self._watch(item)
                spent = time.perf_counter() - started
                self.busy_s += spent
                self.watched += 1
            finally:
                self._working = False
            if not self._draining.is_set():
                self._stop.wait(spent * (1 / self.budget - 1))  # rest: the line's threads come first

    def _watch(self, item: ObservedItem) -> None:
        for consumer in self.consumers:
            try:
                consumer.take(item)
            except Exception:  # one bad item does not stop the watch
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.exception("watching item %s failed (#%d)", item.item_id, self.errors)
