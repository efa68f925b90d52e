"""A clean line with hostile frames in the middle, through the station's id tracker and the
controller's clock: what ``tests/test_hostile.py`` judges the ``streams`` corpus by, and what
``benchmarks/fuzz.py heartbeat`` fuzzes.

Items 100, 101, … are announced at a steady pitch with a heartbeat after each, the controller's
clock 3 s behind the station's; the frames (any bytes, parsed as the station parses them) arrive
just after the announcement of item ``100 + where``. The station must neither give up a real,
announced item as unannounced (a safe-exit command for an item it then never decides) nor place
one on its clock further from when it arrived than the clock's tolerance (made late).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sortline.edge_runtime.station.ids import NEW, ItemIds
from sortline.edge_runtime.station.readings import DeviceClock
from sortline.hardware.protocol import Heartbeat, ItemArrival, Parser

FIRST_ID = 100
BEHIND_MS = 3000


@dataclass
class LineCheck:
    given_up: list[int] = field(default_factory=list)  # real items sent to the safe exit unseen
    misplaced: dict[int, float] = field(default_factory=dict)  # item -> seconds off on the station's clock
    claims_refused: int = 0
    clock_refused: int = 0

    @property
    def harmed(self) -> bool:
        return bool(self.given_up or self.misplaced)


def clean_line_with(frames: bytes, where: int = 8, pitch_s: float = 0.1, items: int = 16) -> LineCheck:
    forged = Parser("hostile").feed(frames + b"\n")
    ids, clock, check = ItemIds(max_gap=32, unannounced_wait_s=0.06), DeviceClock(), LineCheck()
    given_up, at = [], 10.0
    for i in range(items):
        at += pitch_s
        given_up += ids.due_unannounced(at)
        t_ms = int(at * 1000) - BEHIND_MS
        clock.update(t_ms, at)
        assert ids.announced(FIRST_ID + i, at) == NEW  # the frames' announcements reach the clock, not the ids
        if abs(clock.station_time(t_ms) - at) > clock.agree_s + 0.002:
            check.misplaced[FIRST_ID + i] = round(clock.station_time(t_ms) - at, 3)
        ids.heartbeat(FIRST_ID + i, at + pitch_s / 2)
        clock.update(t_ms + int(pitch_s * 500), at + pitch_s / 2)
        if i == where:
            for message in forged:
                if isinstance(message, (Heartbeat, ItemArrival)):
                    clock.update(message.t_ms, at + pitch_s * 0.6)
                if isinstance(message, Heartbeat):
                    ids.heartbeat(message.last_item_id, at + pitch_s * 0.6)
    given_up += ids.due_unannounced(at + 60)
    check.given_up = sorted(set(given_up) & set(range(FIRST_ID, FIRST_ID + items)))
    check.claims_refused, check.clock_refused = ids.claims_refused, clock.refused
    return check
