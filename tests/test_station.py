"""The station runtime against simulated devices on real pseudo-terminals."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import pytest

from sortline.edge_runtime.hil.runs import sort_on_simulated_line
from sortline.edge_runtime.model.pipeline import CONFIDENT, LATE, NO_VIEWS, UNANNOUNCED, UNSURE, ItemPipeline
from sortline.edge_runtime.station import Station, StationConfig
from sortline.hardware.camera import FrameError, ItemCapture
from sortline.hardware.protocol import Ack, GateCommand, Heartbeat, ItemArrival
from sortline.hardware.serial_link import SerialLink
from sortline.hardware.sim.avocado import make_fruit, render_views, tap_series
from sortline.hardware.sim.line import LineConfig
from sortline.hardware.sim.pty import PtyDevice


def test_every_item_gets_exactly_one_gate_command(tiny_bundle, tmp_path):
    log = tmp_path / "events.jsonl"
    run = sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1), LineConfig(items=40, pitch_ms=40, seed=5),
                                 event_log=log, progress=False)
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"], s["duplicates"]) == (40, 40, 0, 0)
    assert s["deadline_misses"] == 0
    assert sum(s["class_counts"].values()) == 40
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(e["item_id"] for e in events) == list(range(1, 41))
    assert all(e["reason"] in (CONFIDENT, UNSURE) and e["readings"] == 5 and e["views"] == 4 for e in events)
    # The exit the controller received is the one the station logged.
    assert {e["item_id"]: e["exit"] for e in events} == run.tally.exits


class _FlakyRig:
    """Renders simulated fruit, but item 2's capture fails outright."""

    view_count = 4

    def capture(self, item_id: int) -> ItemCapture:
        if item_id == 2:
            raise FrameError("camera 3 timed out")
        return ItemCapture(item_id, tuple(render_views(make_fruit(item_id, seed=1))))


@pytest.fixture
def harness(tiny_bundle, tmp_path):
    controller, sensor = PtyDevice(), PtyDevice()
    inbox: queue.Queue = queue.Queue()
    links = [SerialLink(controller.port, "controller", inbox=inbox).open(),
             SerialLink(sensor.port, "taps", inbox=inbox).open()]
    station = Station(ItemPipeline(tiny_bundle, threads=1), _FlakyRig(), *links,
                      StationConfig(sensor_wait_ms=80), event_log=tmp_path / "events.jsonl")
    stop = threading.Event()
    worker = threading.Thread(target=station.run, args=(stop,), daemon=True)
    worker.start()
    yield station, controller, sensor
    stop.set()
    worker.join(5)
    for link in links:
        link.close()
    controller.close()
    sensor.close()


def _eventually(condition, timeout_s: float = 5.0) -> bool:
    """The station sends a gate command before it books the decision: wait for the books."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def _gates(controller: PtyDevice, n: int, timeout_s: float = 5.0, ack: bool = True) -> list[GateCommand]:
    """Gate commands as a controller receives them, acknowledging each (unless ``ack`` is off)."""
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for message in controller.receive(0.05):
            if isinstance(message, GateCommand):
                got.append(message)
                if ack:
                    controller.send(Ack(item_id=message.item_id))
    return got


def test_bad_items_go_to_the_safe_exit_and_the_line_goes_on(harness):
    station, controller, sensor = harness
    for tap in tap_series(make_fruit(1, seed=1)):  # taps may arrive before the announcement
        sensor.send(tap)
    for item_id in (1, 2, 3):
        controller.send(ItemArrival(item_id=item_id, lane=0, t_ms=0, deadline_ms=400))
    controller.send(ItemArrival(item_id=1, lane=0, t_ms=0, deadline_ms=400))  # repeated announcement
    sensor.write(b"$1,9,TAP,3,0,5,garbage*0000\n")  # a garbled reading
    gates = _gates(controller, 3)
    gates += _gates(controller, 99, timeout_s=0.3)  # anything extra would arrive now
    assert sorted(g.item_id for g in gates) == [1, 2, 3]
    assert _eventually(lambda: len(station.recent.decisions) == 3)
    by_item = {d.item_id: d for d in station.recent.decisions}
    assert by_item[2].reason == NO_VIEWS and by_item[2].exit == 0
    assert by_item[1].reason in (CONFIDENT, UNSURE)
    assert station.stats.repeated_announcements == 1
    assert station.stats.capture_errors == 1
    assert station.sensor.stats.bad_crc == 1


def test_an_item_announced_too_late_goes_to_the_safe_exit(harness):
    station, controller, _ = harness
    controller.send(ItemArrival(item_id=9, lane=0, t_ms=0, deadline_ms=0))  # its gate is already here
    (gate,) = _gates(controller, 1)
    assert gate.exit == 0
    assert _eventually(lambda: len(station.recent.decisions) == 1)
    assert station.recent.decisions[-1].reason == LATE
    assert station.stats.deadline_misses == 1


def test_unacknowledged_command_is_resent_until_the_gate(harness):
    station, controller, _ = harness
    controller.send(ItemArrival(item_id=5, lane=0, t_ms=0, deadline_ms=300))
    copies = _gates(controller, 99, timeout_s=0.6, ack=False)  # a controller that has gone quiet
    assert len(copies) >= 3 and {g.item_id for g in copies} == {5} and len({g.exit for g in copies}) == 1
    assert _eventually(lambda: station.stats.unacked == 1)
    assert station.stats.retransmissions == len(copies) - 1
    assert len(station.recent.decisions) == 1  # one decision, sent several times


def test_items_whose_announcement_was_lost_still_get_one_command(harness):
    station, controller, _ = harness
    controller.send(Heartbeat(t_ms=0, last_item_id=10))
    controller.send(ItemArrival(item_id=11, lane=0, t_ms=0, deadline_ms=400))
    controller.send(ItemArrival(item_id=14, lane=0, t_ms=0, deadline_ms=400))  # 12 and 13 never came
    controller.send(ItemArrival(item_id=12, lane=0, t_ms=0, deadline_ms=400))  # 12 was only late
    controller.send(Heartbeat(t_ms=0, last_item_id=15))  # and 15's announcement is lost too:
    controller.send(Heartbeat(t_ms=0, last_item_id=15))  # the next heartbeat says so again
    gates = _gates(controller, 5) + _gates(controller, 99, timeout_s=0.3)
    assert sorted(g.item_id for g in gates) == [11, 12, 13, 14, 15]
    assert _eventually(lambda: len(station.recent.decisions) == 5)
    by_item = {d.item_id: d for d in station.recent.decisions}
    assert by_item[13].reason == UNANNOUNCED and by_item[15].reason == UNANNOUNCED
    assert by_item[12].reason != UNANNOUNCED and station.stats.unannounced == 2


def test_a_jump_in_item_ids_is_a_counter_reset_not_lost_items(harness):
    station, controller, _ = harness
    controller.send(ItemArrival(item_id=1, lane=0, t_ms=0, deadline_ms=400))
    controller.send(ItemArrival(item_id=5000, lane=0, t_ms=0, deadline_ms=400))
    gates = _gates(controller, 2) + _gates(controller, 99, timeout_s=0.3)
    assert sorted(g.item_id for g in gates) == [1, 5000]
    assert station.stats.unannounced == 0


def test_a_rejected_last_frame_is_not_a_negative_count_of_dropped_frames(harness):
    station, controller, _ = harness
    controller.send(ItemArrival(item_id=1, lane=0, t_ms=0, deadline_ms=400))
    assert [g.item_id for g in _gates(controller, 1)] == [1]
    controller.write((Path(__file__).parent / "hostile" / "serial" / "item-id-20-digits.bin").read_bytes())
    assert _eventually(lambda: station.observed_faults()["out_of_range"] == 1)
    assert station.observed_faults()["dropped"] == 0  # was -1: the rejected frame counted as a gap it left


def test_the_hostile_serial_corpus_neither_stops_nor_misroutes_the_line(harness, tmp_path):
    """Every frame of tests/hostile/serial, on both links, between the real traffic of ten items
    (the implausible readings name item 5): each item still gets exactly one command, item 5 is
    decided without its garbage readings, and every hostile frame is counted."""
    station, controller, sensor = harness
    corpus = sorted((Path(__file__).parent / "hostile" / "serial").glob("*.bin"))
    for item_id in range(1, 11):
        for path in corpus:
            controller.write(path.read_bytes())
            sensor.write(path.read_bytes())
        controller.send(ItemArrival(item_id=item_id, lane=0, t_ms=0, deadline_ms=400))
        for tap in tap_series(make_fruit(item_id, seed=1)):
            sensor.send(tap)
    gates, deadline = [], time.monotonic() + 10
    while len({g.item_id for g in gates}) < 10 and time.monotonic() < deadline:
        gates += _gates(controller, 1, timeout_s=0.5)
    gates += _gates(controller, 99, timeout_s=0.3)
    assert {g.item_id for g in gates} == set(range(1, 11))  # a late ack may bring a resend: the same exit
    assert all(len({g.exit for g in gates if g.item_id == item}) == 1 for item in range(1, 11))
    assert _eventually(lambda: len(station.recent.decisions) == 10)
    events = {e["item_id"]: e for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())}
    assert events[5].get("sensor_rejected") is True and events[5]["exit"] in (0, 1, 2, 3)
    assert not any(events[i].get("sensor_rejected") for i in (1, 3, 4, 6, 7, 8, 9, 10))
    faults = station.observed_faults()
    assert faults["out_of_range"] >= 10 * 2 * 10 and faults["implausible_readings"] >= 1
