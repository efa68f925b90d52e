"""The item flow: capture → preprocess → embed, off the station's loop.

Two stages joined by bounded queues. A capture thread takes each announced item's views from
the rig and preprocesses them (the one preprocessing path); embedding workers run the backbone
on whatever items are waiting, several items in one batch when the line is busy (batching is
what lets a station catch up). Each result goes back to the loop through ``on_result``.

Nothing here waits for the loop, and the loop never waits for a camera or the model. An item
that cannot be embedded before its decision time is not started at all (it is *shed*: the loop
sends it to the safe exit at once, reason ``overload``), so an overloaded station spends its
compute on items it can still steer, instead of answering every item late.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from sortline.edge_runtime.model.preprocess import preprocess_views
from sortline.edge_runtime.model.runtimes import Embedder
from sortline.hardware.camera import CORRUPT, LOST, FrameError, FrameSource, ItemCapture, ViewFrame

log = logging.getLogger(__name__)
SLACK = 0.1  # a batch is planned to take this much longer than its estimate, to be on time


@dataclass(frozen=True)
class FlowResult:
    item_id: int
    embeddings: np.ndarray | None  # V×D for the views present, None when there are none
    errors: tuple[str, ...] = ()
    views_lost: int = 0
    views_corrupt: int = 0
    views_late: int = 0
    shed: bool = False  # not computed: it could not have been done before its decision time
    times_ms: dict[str, float] = field(default_factory=dict)  # queue, capture, embed
    thumbnail: np.ndarray | None = None  # the first view, small (H×W×3 uint8), for the operator page
    capture: ItemCapture | None = None  # the frames, for those who watch the line (station/observers.py)


@dataclass
class _Job:
    item_id: int
    decide_by: float
    submitted_at: float
    times_ms: dict[str, float] = field(default_factory=dict)
    batch: np.ndarray | None = None  # preprocessed views
    errors: tuple[str, ...] = ()
    counts: tuple[int, int, int] = (0, 0, 0)  # lost, corrupt, late
    thumbnail: np.ndarray | None = None
    capture: ItemCapture | None = None
    embedder: Embedder | None = None  # the model this item is embedded by (a reload changes the flow's)


THUMBNAIL_PX = 64


def thumbnail(view: ViewFrame) -> np.ndarray:
    """A view's RGB frame, at most THUMBNAIL_PX on its longer side."""
    h, w = view.rgb.shape[:2]
    scale = THUMBNAIL_PX / max(h, w)
    if scale >= 1:
        return view.rgb
    return cv2.resize(view.rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class _Estimate:
    """An exponentially weighted mean of a duration, seconds."""

    def __init__(self, initial_s: float, weight: float = 0.1) -> None:
        self.value = initial_s
        self.weight = weight

    def update(self, seconds: float) -> None:
        self.value += self.weight * (seconds - self.value)


class _Cancellations:
    """Items the loop decided without their embeddings, shared by the flow's threads."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, item_id: int) -> None:
        with self._lock:
            self._ids.add(item_id)

    def take(self, item_id: int) -> bool:
        """Whether the item was cancelled (and forget it)."""
        with self._lock:
            if item_id in self._ids:
                self._ids.discard(item_id)
                return True
            return False


def _read(rig: FrameSource, job: _Job) -> tuple[str, ...]:
    """Capture the job's views and preprocess them into ``job.batch`` (None when none came);
    returns what went wrong, view by view."""
    errors: list[str] = []
    try:
        capture = job.capture = rig.capture(job.item_id)
        errors += [str(e) for e in capture.errors]
        job.counts = (sum(e.kind == LOST for e in capture.errors), sum(e.kind == CORRUPT for e in capture.errors),
                      len(capture.late))
        views = capture.present
        job.batch = preprocess_views(views, job.embedder.spec) if views else None
        if views:
            job.thumbnail = thumbnail(views[0])
    except (FrameError, ValueError, OSError) as exc:
        errors.append(str(exc))
    return tuple(errors)


class ItemFlow:
    """Capture → preprocess → embed on worker threads: bounded queues, batches when the line is
    busy, and items shed (never late) when their decision time would pass first."""

    def __init__(self, rig: FrameSource, embedder: Embedder, on_result: Callable[[FlowResult], None],
                 clock: Callable[[], float] = time.monotonic, workers: int = 1, queue_size: int = 64,
                 max_batch: int = 8) -> None:
        self.rig = rig
        self.embedder = embedder
        self.on_result = on_result
        self.clock = clock
        self.workers = workers
        self.max_batch = max_batch
        self._captures: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._embeds: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._cancelled = _Cancellations()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.capture_s = _Estimate(0.002)
        self.embed_s = _Estimate(0.005)  # per item, in the batches the workers run
        self.deepest = 0
        self._busy_until = 0.0  # when the batch now running should end

    def warm_up(self) -> None:
        """One full batch before the first item: the model's first run allocates, and the
        estimate the flow sheds by starts from this machine's real speed."""
        spec = self.embedder.spec
        batch = np.zeros((self.max_batch * spec.views, len(spec.channels), spec.size, spec.size), np.float32)
        self.embedder.embed_batch(batch)
        started = time.perf_counter()
        self.embedder.embed_batch(batch)
        self.embed_s.value = (time.perf_counter() - started) / self.max_batch

    def start(self) -> ItemFlow:
        targets = [(self._capture_loop, "flow-capture")]
        targets += [(self._embed_loop, f"flow-embed-{i}") for i in range(self.workers)]
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    @property
    def depth(self) -> int:
        return self._captures.qsize() + self._embeds.qsize()

    def submit(self, item_id: int, decide_by: float, embedder: Embedder | None = None) -> bool:
        """Queue an item, to be embedded by ``embedder`` (default: the flow's); False when the
        flow is full (the caller sheds it)."""
        try:
            self._captures.put_nowait(_Job(item_id, decide_by, self.clock(), embedder=embedder or self.embedder))
        except queue.Full:
            return False
        self.deepest = max(self.deepest, self.depth)
        return True

    def cancel(self, item_id: int) -> None:
        """The loop decided without this item's embeddings: do not spend compute on it."""
        self._cancelled.add(item_id)

    def _finish(self, job: _Job, embeddings: np.ndarray | None = None, shed: bool = False,
                errors: tuple[str, ...] = ()) -> None:
        lost, corrupt, late = job.counts
        self._cancelled.take(job.item_id)  # cancelled while its batch ran: nothing left to skip
        self.on_result(FlowResult(job.item_id, embeddings, (*job.errors, *errors), lost, corrupt, late, shed,
                                  job.times_ms, job.thumbnail, job.capture))

    def _embed_backlog_s(self, now: float) -> float:
        """How long until a new item would be embedded: the batch now running, the items
        waiting, and the item itself."""
        running = max(0.0, self._busy_until - now)
        return running + self.embed_s.value * (self._embeds.qsize() + 1) / self.workers

    # --- stage 1: capture and preprocess ------------------------------------------------------

    def _capture_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._captures.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self._capture(job)
            except Exception:  # a worker must outlive any one item
                log.exception("item %s: capture failed", job.item_id)
                self._finish(job, errors=("capture failed",))

    def _capture(self, job: _Job) -> None:
        now = self.clock()
        job.times_ms["queue"] = (now - job.submitted_at) * 1000
        if self._cancelled.take(job.item_id):
            return
        if now + self.capture_s.value + self._embed_backlog_s(now) > job.decide_by:
            self._finish(job, shed=True)
            return
        job.errors = _read(self.rig, job)
        done = self.clock()
        self.capture_s.update(done - now)
        job.times_ms["capture"] = (done - now) * 1000
        if job.batch is None:
            self._finish(job)
            return
        while True:  # a full embedding queue holds this stage back, until the item's time is up
            try:
                self._embeds.put(job, timeout=0.01)
                self.deepest = max(self.deepest, self.depth)
                return
            except queue.Full:
                if self._stop.is_set() or self.clock() >= job.decide_by:
                    self._finish(job, shed=True)
                    return

    # --- stage 2: embed, in batches -----------------------------------------------------------

    def _take_waiting(self) -> _Job | None:
        """The next waiting item that has not been cancelled, if any."""
        while True:
            try:
                job = self._embeds.get_nowait()
            except queue.Empty:
                return None
            if not self._cancelled.take(job.item_id):
                return job

    def _embed_loop(self) -> None:
        carry: list[_Job] = []  # taken, but left for the next batch (their deadlines are later)
        while not self._stop.is_set():
            jobs, carry = carry, []
            if not jobs:
                try:
                    jobs.append(self._embeds.get(timeout=0.05))
                except queue.Empty:
                    continue
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._embeds.get_nowait())
                except queue.Empty:
                    break
            try:
                carry = self._embed(jobs)
            except Exception:
                log.exception("embedding failed for items %s", [j.item_id for j in jobs])
                for job in jobs:
                    self._finish(job, errors=("embedding failed",))

    def _embed(self, jobs: list[_Job]) -> list[_Job]:
        """One batch; returns the jobs left for the next one. Every item in a batch is done when
        the batch is, so the batch must end before the earliest decision time in it. When it
        would not: with more items waiting (overload), the oldest item is given up and the batch
        refilled, since full batches are what lets a busy station catch up; with none waiting,
        the youngest item is left for the next batch, and nothing is given up."""
        now = self.clock()
        per_item = self.embed_s.value * (1 + SLACK)
        jobs = [job for job in jobs if not self._cancelled.take(job.item_id)]
        # one model a batch: items queued before a bundle reload finish on the model they began with
        later = [job for job in jobs if jobs and job.embedder is not jobs[0].embedder]
        jobs = [job for job in jobs if job.embedder is jobs[0].embedder]
        while jobs:
            jobs.sort(key=lambda job: job.decide_by)
            if now + per_item * len(jobs) <= jobs[0].decide_by:
                break
            refill = self._take_waiting()
            if refill is not None or now + per_item > jobs[0].decide_by:
                self._finish(jobs.pop(0), shed=True)
                if refill is not None:
                    jobs.append(refill)
            else:
                later.insert(0, jobs.pop())
        accepted = jobs
        if not accepted:
            return later
        self._busy_until = now + per_item * len(accepted)
        batch = np.concatenate([job.batch for job in accepted])
        embeddings = accepted[0].embedder.embed_batch(batch)
        done = self.clock()
        self._busy_until = 0.0
        self.embed_s.update((done - now) / len(accepted))
        start = 0
        for job in accepted:
            n = len(job.batch)
            job.times_ms["embed"] = (done - now) * 1000
            job.times_ms["batch_items"] = len(accepted)
            self._finish(job, embeddings[start:start + n])
            start += n
        return later
