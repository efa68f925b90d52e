"""What a serial link can carry, and a warning when the line offers more.

At 115200 baud (10 bits a byte on the wire) one controller link carries about 127 items a second
(announcement, gate command, acknowledgement: 91 bytes by :func:`item_bytes`), and one tap sensor
about 41 (five TAP frames, 280 bytes). A station that is offered more than a link can carry
falls behind on that link however fast it computes: the cure is a higher baud rate in the station file, or more sensors.
"""

from __future__ import annotations

import logging
from collections import deque

from sortline.hardware.protocol import Ack, Encoder, GateCommand, ItemArrival, ScaleReading, TapReading

log = logging.getLogger(__name__)
BITS_PER_BYTE = 10  # start + 8 data + stop
WARN_EVERY_S = 60.0


def item_bytes(sensor: str, readings: int) -> dict[str, int]:
    """Bytes on each link for one item, with wide (worst-case-like) field values."""
    e = Encoder()
    sizes = {"controller": len(e.encode(ItemArrival(10**7, 99, 10**9, 300))) + len(e.encode(GateCommand(10**7, 9)))
             + len(e.encode(Ack(10**7)))}
    if sensor == "taps":
        sizes["taps"] = readings * len(e.encode(TapReading(10**7, 4, readings, 123.456, 0.567, 12.345, 10**9)))
    elif sensor == "scale":
        sizes["scale"] = (readings + 4) * len(e.encode(ScaleReading(10**9, 1234.5, 1)))  # moving + settled + empty
    return sizes


class LinkBudget:
    """Counts announcements over the last ``window_s`` and warns (at most once a minute per
    link) when that rate is more than a link's capacity; ``over`` counts those warnings."""

    def __init__(self, bauds: dict[str, int], per_item: dict[str, int], window_s: float = 1.0) -> None:
        self.capacity = {name: bauds[name] / BITS_PER_BYTE / n for name, n in per_item.items() if name in bauds}
        self.window_s = window_s
        self.over = 0
        self.peak_rate = 0.0
        self._announced: deque[float] = deque()
        self._warned: dict[str, float] = {}

    def announce(self, at: float) -> None:
        self._announced.append(at)
        while at - self._announced[0] > self.window_s:
            self._announced.popleft()
        rate = len(self._announced) / self.window_s
        self.peak_rate = max(self.peak_rate, rate)
        for name, capacity in self.capacity.items():
            if rate > capacity and at - self._warned.get(name, -WARN_EVERY_S) >= WARN_EVERY_S:
                self._warned[name] = at
                self.over += 1
                log.warning("the line offers %.0f items/s; the %s link carries at most %.0f at its baud rate: "
                            "raise its baud rate in the station file", rate, name, capacity)
