"""The station's parts, each alone, on an injected clock: no pseudo-terminals, no fixed sleeps."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sortline.edge_runtime.model.pipeline import CONFIDENT, LATE, OVERLOAD, UNANNOUNCED, UNSURE, ItemPipeline
from sortline.edge_runtime.station import (
    FlowResult,
    GateChannel,
    ItemFlow,
    ItemIds,
    ReadingMatcher,
    Station,
    StationConfig,
    StreamingHistogram,
)
from sortline.edge_runtime.station.ids import NEW, REPEATED
from sortline.edge_runtime.station.links import LinkBudget, item_bytes
from sortline.edge_runtime.station.readings import DeviceClock
from sortline.hardware.camera import ItemCapture
from sortline.hardware.protocol import GateCommand, ItemArrival, ParserStats, ScaleReading
from sortline.hardware.serial_link import Received
from sortline.hardware.sim.avocado import make_fruit, render_views, tap_series


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- streaming statistics -------------------------------------------------------------------


def test_histogram_percentiles_match_numpy_within_a_bucket():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=2.0, sigma=1.0, size=20000)
    h = StreamingHistogram()
    for v in values:
        h.add(float(v))
    for q in (50, 90, 99, 99.9):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.025)
    assert h.count == len(values) and h.max == values.max() and h.min == values.min()
    assert h.mean == pytest.approx(values.mean())


def test_histogram_memory_does_not_grow_and_extremes_are_kept():
    h = StreamingHistogram(lo=0.1, hi=1000)
    size = h.counts.nbytes
    for v in (0.001, 5.0, 1e9, float("nan")):
        h.add(v)
    assert h.counts.nbytes == size and h.count == 3  # NaN is not a latency
    assert h.percentile(0) == 0.001 and h.percentile(100) == 1e9
    assert StreamingHistogram().percentile(50) == 0.0


# --- item ids ---------------------------------------------------------------------------------


def test_skipped_ids_are_due_after_the_wait_unless_announced_late():
    ids = ItemIds(max_gap=32, unannounced_wait_s=0.06)
    assert ids.announced(10, at=0.0) == NEW
    assert ids.announced(13, at=0.01) == NEW  # 11 and 12 skipped
    assert ids.announced(11, at=0.02) == NEW  # 11 was only late
    assert ids.due_unannounced(0.05) == []
    assert ids.next_due() == pytest.approx(0.07)
    assert ids.due_unannounced(0.08) == [12]
    assert ids.announced(12, at=0.09) == REPEATED  # too late: it has had its command


def test_a_repeated_heartbeat_reveals_a_lost_last_announcement():
    ids = ItemIds()
    ids.announced(1, at=0.0)
    ids.heartbeat(2, at=0.1)
    assert ids.due_unannounced(1.0) == []  # one frame is not enough
    ids.heartbeat(2, at=0.35)
    assert ids.due_unannounced(0.40) == [2]


def test_a_last_heartbeats_claim_is_due_at_shutdown():
    ids = ItemIds()
    ids.announced(1, at=0.0)
    ids.heartbeat(2, at=0.1)
    assert ids.all_skipped() == [2]


def test_an_announcement_refutes_a_heartbeats_claim(caplog):
    ids = ItemIds()
    ids.announced(1, at=0.0)
    ids.heartbeat(3, at=0.1)  # forged, or garbled into a valid CRC
    assert ids.announced(2, at=0.5) == NEW and ids.announced(3, at=0.6) == NEW
    ids.heartbeat(3, at=0.7)
    assert ids.due_unannounced(5.0) == [] and ids.claims_refused == 1
    assert "heartbeat claim #1 refused" in caplog.text


def test_a_heartbeat_never_resets_the_counter():
    ids = ItemIds(max_gap=32)
    for i in range(100, 103):
        ids.announced(i, at=0.0)
    for at in (0.1, 0.2):
        ids.heartbeat(5000, at=at)
    assert ids.resets == 0 and ids.claims_refused == 2 and ids.announced(101, at=0.3) == REPEATED


@pytest.mark.parametrize("jump_to", [5000, 1, 2**53 - 1])
def test_a_jump_either_way_is_a_counter_reset_and_old_ids_are_new_items(jump_to):
    ids = ItemIds(max_gap=32)
    for i in range(100, 103):
        ids.announced(i, at=0.0)
    ids.announced(jump_to, at=0.1)
    assert ids.resets == 1 and ids.due_unannounced(10.0) == []
    # After a reset, ids already used before it are new items that need commands.
    assert ids.announced(101, at=0.2) == NEW


# Properties: one frame, inserted anywhere into a clean controller stream, cannot send a real,
# announced item to the safe exit (its id given up as unannounced) nor make it late (the clock).

@st.composite
def _stream_and_one_frame(draw):
    items = draw(st.integers(3, 30))
    pitch = draw(st.floats(0.02, 1.0))
    stream = []  # (at, kind, value, t_ms): announcements with heartbeats between them
    for i in range(items):
        at = 10.0 + i * pitch
        stream.append((at, "item", 100 + i, int(at * 1000) - 3000))  # the controller's clock: 3 s behind
        if draw(st.booleans()):
            stream.append((at + pitch / 2, "hb", 100 + i, int((at + pitch / 2) * 1000) - 3000))
    where = draw(st.integers(0, len(stream)))
    at = stream[where - 1][0] + 1e-4 if where else 9.0
    forged = (at, "hb", draw(st.integers(-1, 2**53 - 1) | st.integers(90, 140)),
              draw(st.integers(0, 2**53 - 1) | st.integers(0, 20_000_000)))
    return stream[:where] + [forged] + stream[where:], items


@settings(max_examples=300, deadline=None)
@given(_stream_and_one_frame())
def test_one_heartbeat_cannot_give_up_a_real_item(case):
    stream, items = case
    ids = ItemIds(max_gap=32, unannounced_wait_s=0.06)
    given_up = []
    for at, kind, value, _ in stream:
        given_up += ids.due_unannounced(at)
        if kind == "item":
            assert ids.announced(value, at) == NEW
        else:
            ids.heartbeat(value, at)
    given_up += ids.due_unannounced(1e9)
    assert not set(given_up) & set(range(100, 100 + items))


@settings(max_examples=300, deadline=None)
@given(_stream_and_one_frame())
def test_one_frame_cannot_make_an_announced_item_late(case):
    stream, _ = case
    clock = DeviceClock()
    for at, kind, _, t_ms in stream:
        clock.update(t_ms, at)
        if kind == "item":  # when the item passed, on this station's clock: within the clock's tolerance
            assert clock.station_time(t_ms) == pytest.approx(at, abs=clock.agree_s + 0.002)


def test_a_device_clock_that_jumps_ahead_for_good_is_followed(caplog):
    clock = DeviceClock()
    clock.update(1000, at=1.0)
    clock.update(1100, at=1.1)
    assert not clock.update(61_200, at=1.2) and clock.station_time(61_200) == pytest.approx(61.2)
    assert clock.update(61_300, at=1.3) and clock.station_time(61_300) == pytest.approx(1.3)
    assert clock.refused == 1 and "refused, 60.000 s ahead" in caplog.text


# --- readings -----------------------------------------------------------------------------------


def test_a_bundle_that_fuses_no_sensor_leaves_the_sensors_readings_aside_quietly(caplog):
    """A views-only bundle (sortline demo --sensor none) on a line with a tap sensor: its items
    are complete at once, and the taps are counted as unused, not as implausible."""
    m = ReadingMatcher("none", readings_expected=0)
    m.open(7, announced_at=0.0)
    assert m.complete(7)
    for tap in tap_series(make_fruit(7, seed=1)):
        assert m.tap(tap, at=0.01, decided=False) == set()
    assert m.close(7) == [] and m.stats.unused_readings == 5 and m.stats.implausible_readings == 0
    assert "implausible" not in caplog.text


def test_taps_before_the_announcement_wait_for_it_and_complete_the_item():
    m = ReadingMatcher("taps", readings_expected=5)
    taps = tap_series(make_fruit(7, seed=1))
    for tap in taps[:2]:
        assert m.tap(tap, at=0.0, decided=False) == set()
    assert m.open(7, announced_at=0.01) == {7}
    for tap in [*taps[2:], taps[2]]:  # a repeated tap counts once
        m.tap(tap, at=0.02, decided=False)
    assert m.complete(7) and len(m.close(7)) == 5
    m.tap(taps[0], at=0.03, decided=True)  # for an item already decided: dropped, not kept
    m.expire(100.0)
    assert m.stats.orphan_taps_expired == 0


def test_orphan_readings_expire_and_are_counted():
    m = ReadingMatcher("taps", readings_expected=5, orphan_ttl_s=2.0)
    for tap in tap_series(make_fruit(3, seed=1))[:3]:
        m.tap(tap, at=0.0, decided=False)
    m.expire(1.0)
    assert m.stats.orphan_taps_expired == 0
    m.expire(2.5)
    assert m.stats.orphan_taps_expired == 3


def test_a_weight_belongs_to_the_item_on_the_plate():
    m = ReadingMatcher("scale", readings_expected=2)
    m.heartbeat(0, at=0.0)  # the scale's clock equals the station's
    m.open(1, announced_at=0.0)
    m.weight(ScaleReading(t_ms=20, grams=330.0, stable=1), at=0.02)
    m.weight(ScaleReading(t_ms=40, grams=2.0, stable=1), at=0.04)  # plate empty
    m.weight(ScaleReading(t_ms=60, grams=500.0, stable=1), at=0.06)  # item 2, not announced yet
    assert [w.grams for w in m.readings(1)] == [330.0]
    assert m.open(2, announced_at=0.05) == {2}
    assert [w.grams for w in m.readings(2)] == [500.0]


# --- gate channel -------------------------------------------------------------------------------


class _Link:
    def __init__(self, name: str = "controller", inbox: queue.Queue | None = None) -> None:
        self.sent: list = []
        self.inbox: queue.Queue = inbox if inbox is not None else queue.Queue()
        self.name = name
        self.baudrate = 115200
        self.stats = ParserStats()
        self.reconnects = 0

    def send(self, message) -> bool:
        self.sent.append(message)
        return True


def test_commands_are_resent_until_acknowledged_and_never_after_the_gate():
    link = _Link()
    gate = GateChannel(link, ack_timeout_s=0.05)
    gate.send(1, exit=2, now=0.0, deadline_at=0.2)
    gate.resend_due(0.04)
    assert len(link.sent) == 1
    gate.resend_due(0.06)
    gate.resend_due(0.12)
    assert len(link.sent) == 3 and gate.stats.unacked == 1 and gate.stats.retransmissions == 2
    gate.resend_due(0.25)  # past its gate: given up
    assert len(link.sent) == 3 and gate.next_due() is None


def test_a_slow_acknowledgement_is_not_a_missing_one():
    link = _Link()
    gate = GateChannel(link, ack_timeout_s=0.05)
    gate.send(1, exit=2, now=0.0, deadline_at=1.0)
    gate.resend_due(0.06)  # overdue: counted, resent
    gate.ack(1)
    gate.ack(1)  # both transmissions came back
    assert gate.stats.unacked == 0 and gate.stats.acks == 1


# --- item flow ----------------------------------------------------------------------------------


class _Rig:
    view_count = 4

    def capture(self, item_id: int) -> ItemCapture:
        return ItemCapture(item_id, tuple(render_views(make_fruit(item_id, seed=1), size=32)))


class _GatedEmbedder:
    """Embeds once let through; counts its batches."""

    def __init__(self, inner) -> None:
        self.spec = inner.spec
        self.inner = inner
        self.open = threading.Event()
        self.entered = threading.Event()  # a batch is waiting at the gate
        self.batches: list[int] = []

    def embed_batch(self, batch):
        self.entered.set()
        self.open.wait(60)
        self.batches.append(len(batch))
        return self.inner.embed_batch(batch)


def _collect():
    results: queue.Queue[FlowResult] = queue.Queue()
    return results, results.put


def test_the_flow_batches_waiting_items(tiny_bundle):
    embedder = _GatedEmbedder(ItemPipeline(tiny_bundle, threads=1).embedder)
    results, on_result = _collect()
    flow = ItemFlow(_Rig(), embedder, on_result, workers=1, max_batch=8).start()
    try:
        assert flow.submit(1, decide_by=float("inf"))
        assert embedder.entered.wait(10)  # item 1 is in the model, alone
        for item_id in range(2, 11):
            assert flow.submit(item_id, decide_by=float("inf"))
        for _ in range(2000):  # the rest queue behind it
            if flow._embeds.qsize() == 9:
                break
            threading.Event().wait(0.005)
        embedder.open.set()
        got = [results.get(timeout=10) for _ in range(10)]
    finally:
        flow.stop()
    assert sorted(r.item_id for r in got) == list(range(1, 11))
    assert all(r.embeddings.shape == (4, 16) and not r.shed for r in got)
    assert embedder.batches[:3] == [4, 8 * 4, 4]  # one item, then 8 items × 4 views, then the last


def test_the_flow_sheds_what_it_cannot_finish_in_time(tiny_bundle):
    clock = Clock(0.0)
    embedder = _GatedEmbedder(ItemPipeline(tiny_bundle, threads=1).embedder)
    embedder.open.set()
    results, on_result = _collect()
    flow = ItemFlow(_Rig(), embedder, on_result, clock=clock, workers=1)
    flow.embed_s.value = 0.010  # it takes 10 ms an item
    flow.submit(1, decide_by=0.005)  # cannot make it: not even captured
    flow.submit(2, decide_by=1.0)
    flow.submit(3, decide_by=1.0)
    flow.cancel(3)  # decided without it: no work, no result
    flow.start()
    try:
        got = {r.item_id: r for r in (results.get(timeout=10) for _ in range(2))}
        assert results.empty()
    finally:
        flow.stop()
    assert got[1].shed and got[1].embeddings is None
    assert not got[2].shed and got[2].embeddings is not None


# --- the loop, on a fake clock ------------------------------------------------------------------


def _station(tiny_bundle, clock, **config):
    link = _Link()
    station = Station(ItemPipeline(tiny_bundle, threads=1), _Rig(), link, _Link("taps", link.inbox),
                      StationConfig(**config), clock=clock)
    return station, link


def _arrive(link, clock, item_id, deadline_ms=300):
    link.inbox.put(Received("controller", ItemArrival(item_id, 0, int(clock.t * 1000), deadline_ms), clock.t))


def test_every_item_of_an_overloaded_station_gets_one_command_before_its_gate(tiny_bundle):
    """The model is stuck: nothing is embedded. Each item still leaves, on time, to the safe exit."""
    clock = Clock()
    station, link = _station(tiny_bundle, clock)
    station.flow.embedder = stuck = _GatedEmbedder(station.flow.embedder)
    station.flow.start()
    try:
        for item_id in range(1, 6):
            _arrive(link, clock, item_id)
            station.step(0)
            clock.t += 0.01
        assert link.sent == []  # nothing is due yet
        for _ in range(40):
            clock.t += 0.01
            station.step(0)
            for command in link.sent:
                station.gate.ack(command.item_id)
    finally:
        stuck.open.set()
        station.flow.stop()
    commands = [m for m in link.sent if isinstance(m, GateCommand)]
    assert sorted({c.item_id for c in commands}) == [1, 2, 3, 4, 5]
    assert all(c.exit == 0 for c in commands)
    assert station.stats.reasons[OVERLOAD] == 5 and station.stats.deadline_misses == 0
    # Each went out at its decision time: 300 - 40 ms after its announcement, not later.
    assert station.stats.latency_ms.max <= 270


def test_items_the_flow_sheds_leave_at_once(tiny_bundle):
    clock = Clock()
    station, link = _station(tiny_bundle, clock, flow_queue=1)
    # The flow is not started: its one queue slot fills and every later item is shed at once.
    for item_id in range(1, 4):
        _arrive(link, clock, item_id)
    station.step(0)
    assert sorted(c.item_id for c in link.sent) == [2, 3]
    assert station.stats.overload == 2


def test_an_item_whose_embeddings_are_back_waits_for_its_taps_then_is_decided(tiny_bundle):
    clock = Clock()
    station, link = _station(tiny_bundle, clock)
    station.flow.start()
    try:
        _arrive(link, clock, 1)
        station.step(0)
        while station._open[1].result is None:
            station.step(0.01)
        assert link.sent == []  # waiting for the taps (sensor "taps" in this bundle)
        clock.t += 0.121  # past sensor_wait_ms: decided on the views alone
        station.step(0)
    finally:
        station.flow.stop()
    (command,) = link.sent
    assert station.recent.decisions[-1].reason in (CONFIDENT, UNSURE)
    assert command.exit == station.recent.decisions[-1].exit


def test_late_and_unannounced_items_each_get_one_safe_command(tiny_bundle):
    clock = Clock()
    station, link = _station(tiny_bundle, clock)
    _arrive(link, clock, 1, deadline_ms=0)  # its gate is here already
    _arrive(link, clock, 3)  # 2 was lost
    station.step(0)
    clock.t += 0.001
    station.step(0)
    clock.t += 0.1
    station.step(0)
    by_item = {d.item_id: d.reason for d in station.recent.decisions}
    assert by_item[1] == LATE and by_item[2] == UNANNOUNCED


# --- serial link budget -------------------------------------------------------------------------


def test_link_capacity_follows_the_baud_rate_and_the_frames_of_an_item():
    per_item = item_bytes("taps", 5)
    assert 200 < per_item["taps"] < 320 and 60 < per_item["controller"] < 110
    budget = LinkBudget({"controller": 115200, "taps": 115200}, per_item)
    assert 35 < budget.capacity["taps"] < 60 and 100 < budget.capacity["controller"] < 200
    assert LinkBudget({"taps": 921600}, per_item).capacity["taps"] == pytest.approx(8 * budget.capacity["taps"])


def test_an_offered_rate_above_a_links_capacity_is_warned_once_a_minute(caplog):
    budget = LinkBudget({"controller": 115200, "taps": 115200}, item_bytes("taps", 5))
    for k in range(100):  # 100 items in one second: over the tap link's ~44, under the controller's
        budget.announce(k * 0.01)
    assert budget.over == 1 and "taps link" in caplog.text and budget.peak_rate == pytest.approx(100)
    for k in range(100):
        budget.announce(1.0 + k * 0.01)
    assert budget.over == 1  # not again within the minute
    budget.announce(70.0)
    assert budget.over == 1  # the rate fell: no warning


# --- thread policy ------------------------------------------------------------------------------


def test_one_thread_when_it_already_reaches_the_target_rate(tiny_bundle):
    from sortline.edge_runtime.model.choice import choose_runtime

    choice = choose_runtime(tiny_bundle.backbone_path, tiny_bundle.manifest.input, "onnxruntime",
                            target_items_per_s=1.0, budget_s=0.1)
    assert choice.threads == 1


def test_more_threads_only_when_short_of_the_target_and_they_pay(tiny_bundle, monkeypatch):
    from sortline.edge_runtime.model import choice as runtimes

    monkeypatch.setattr(runtimes.os, "cpu_count", lambda: 2)
    path, spec = tiny_bundle.backbone_path, tiny_bundle.manifest.input
    choice = runtimes.choose_runtime(path, spec, "onnxruntime", target_items_per_s=1e12, gain=0.0, budget_s=0.1)
    assert choice.threads == 2 and {c.threads for c in choice.candidates} == {1, 2}
    choice = runtimes.choose_runtime(path, spec, "onnxruntime", target_items_per_s=1e12, gain=1e9, budget_s=0.1)
    assert choice.threads == 1  # short of the target, but a second thread would not pay


def test_the_device_clock_is_the_least_offset_of_the_last_two_seconds():
    from sortline.edge_runtime.station.readings import DeviceClock

    rng = np.random.default_rng(3)
    clock, samples = DeviceClock(window_s=2.0), []
    at = 0.0
    for _ in range(3000):
        at += float(rng.exponential(0.01))
        t_ms = int((at - 5.0 - float(rng.exponential(0.004))) * 1000)  # 5 s offset plus transfer jitter
        clock.update(t_ms, at)
        samples.append((at, at - t_ms / 1000))
        expected = min(o for a, o in samples if at - a <= 2.0)
        assert clock.offset == pytest.approx(expected)


def test_a_station_whose_loop_dies_says_so_instead_of_idling(tiny_bundle, monkeypatch):
    import gc

    from sortline.edge_runtime.station import StationError
    from sortline.edge_runtime.station.wiring import RunningStation

    monkeypatch.setattr(ItemFlow, "alive", property(lambda self: False))  # a worker thread has died
    with RunningStation(ItemPipeline(tiny_bundle, threads=1), {"controller": "loop://", "taps": "loop://"},
                        _Rig()) as running:
        # what was alive when it started (model, bundle, imports) is left out of the collector's
        # full passes while it runs (one such pass held the loop 155 ms), and thawed after
        assert gc.get_freeze_count() > 1000
        assert running.stopped.wait(10)  # the loop ends by itself
        with pytest.raises(StationError, match="died"):
            running.stop()
    assert gc.get_freeze_count() == 0


def test_an_idle_station_waits_on_its_inbox_and_does_not_spin(tiny_bundle):
    """No item on the line, no timer set: the loop sleeps on its inbox (it once took "no timer" for
    a timer due long ago and spun a whole core, starving every other thread of the interpreter)."""
    from sortline.edge_runtime.station.loop import WAKE_S
    from sortline.edge_runtime.station.wiring import RunningStation

    with RunningStation(ItemPipeline(tiny_bundle, threads=1), {"controller": "loop://", "taps": "loop://"},
                        _Rig()) as running:
        time.sleep(0.3)  # warmed up and waiting
        steps = running.station.steps
        thread = next(t for t in threading.enumerate() if t.name == "station")
        started = _thread_cpu_s(thread.native_id)
        time.sleep(1.0)
        steps, spent = running.station.steps - steps, _thread_cpu_s(thread.native_id) - started
    assert steps <= 1.0 / WAKE_S + 5, steps  # one look at its timers every WAKE_S
    assert spent < 0.1, spent


def _thread_cpu_s(native_id: int) -> float:
    """A thread's CPU time (user and system) from /proc, in seconds."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- hostile readings ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"peak_n": 1e30}, {"peak_n": float("nan")}, {"decay_ms": -5.0}, {"rebound": 7.0},
    {"index": 100}, {"count": 6},
])
def test_an_impossible_tap_leaves_the_items_sensor_out_and_is_counted(bad):
    import dataclasses

    m = ReadingMatcher("taps", readings_expected=5)
    taps = tap_series(make_fruit(7, seed=1))
    m.open(7, announced_at=0.0)
    for tap in taps[:2]:
        m.tap(tap, at=0.0, decided=False)
    assert m.tap(dataclasses.replace(taps[2], **bad), at=0.0, decided=False) == {7}
    for tap in taps[3:]:
        m.tap(tap, at=0.0, decided=False)
    assert m.stats.implausible_readings == 1 and m.rejected(7)
    assert m.complete(7) and m.close(7) == []  # decided now, on its views alone


def test_a_garbage_reading_before_the_announcement_still_counts_against_its_item():
    import dataclasses

    m = ReadingMatcher("taps", readings_expected=5)
    tap = dataclasses.replace(tap_series(make_fruit(3, seed=1))[0], peak_n=-1.0)
    m.tap(tap, at=0.0, decided=False)
    assert m.open(3, announced_at=0.01) == {3} and m.rejected(3)


def test_an_impossible_weight_is_dropped():
    m = ReadingMatcher("scale", readings_expected=2)
    m.heartbeat(0, at=0.0)
    m.open(1, announced_at=0.0)
    for grams in (float("inf"), 1e9, -5000.0):
        assert m.weight(ScaleReading(t_ms=20, grams=grams, stable=1), at=0.02) == set()
    assert m.stats.implausible_readings == 3 and m.readings(1) == []
