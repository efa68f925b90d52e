"""Fault injection for the simulators, each kind with its own rate, every injection counted.

The counters are the ground truth a hardware-in-the-loop run is judged by: the station must
observe (and survive) exactly what was injected. Injections are chosen so that each one is
observable as exactly one event of its kind:

- *garbled*: one payload byte (between ``$`` and ``*``) changed to another non-framing byte,
  which the CRC always catches;
- *truncated*: the frame cut before its end, so the next frame's ``$`` reveals it;
- *dropped*: the frame never sent, a gap in the sender's sequence numbers;
- *duplicated*: the frame sent twice;
- *reordered*: the frame held back and sent right after the next frame that goes out intact;
- per view: *views_lost*, *views_late*, *views_corrupt* (bytes that do not decode);
- per item: *sensor_disconnects* (the tap sensor unplugs and comes back) and *unacked* (gate
  commands the controller receives but, being silent for a while, does not acknowledge).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, fields

from ..protocol import UNSEQUENCED, Message
from .pty import PtyDevice

SERIAL_KINDS = ("garbled", "truncated", "dropped", "duplicated", "reordered")
VIEW_KINDS = ("views_lost", "views_late", "views_corrupt")
ITEM_KINDS = ("sensor_disconnects", "unacked")
_FRAMING = frozenset(b"$*\r\n")


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault: per serial frame, per view, or per item."""

    garbled: float = 0.0
    truncated: float = 0.0
    dropped: float = 0.0
    duplicated: float = 0.0
    reordered: float = 0.0
    views_lost: float = 0.0
    views_late: float = 0.0
    views_corrupt: float = 0.0
    sensor_disconnects: float = 0.0
    controller_silences: float = 0.0

    @classmethod
    def uniform(cls, rate: float) -> FaultRates:
        """Every kind at the same rate (``--faults RATE``)."""
        if not 0.0 <= rate <= 0.2:
            raise ValueError("a fault rate must be between 0 and 0.2")
        return cls(**{f.name: rate for f in fields(cls)})

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))


class FaultCounter:
    """Injections by kind, counted from several threads (the devices' clocks, the rig)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class FaultyWire:
    """The sending side of a simulated device, with serial faults injected into chosen frames."""

    def __init__(self, device: PtyDevice, rates: FaultRates, rng: random.Random, counts: FaultCounter) -> None:
        self.device = device
        self.rates = rates
        self._rng = rng
        self._counts = counts
        self._lock = threading.Lock()  # frames leave in the order they are numbered
        self._held: bytes | None = None
        self._first = True

    def send(self, message: Message, faults: bool = True) -> None:
        with self._lock:
            frame = self.device.encoder.encode(message)
            # The first frame goes out clean: a receiver has no number before it, so nothing
            # could ever reveal its loss, and an injected fault must be observable.
            first, self._first = self._first, False
            if not faults or not self.rates.any or first:
                self._write_intact(frame, sequenced=message.TYPE not in UNSEQUENCED)
                return
            kind = self._pick()
            if kind == "dropped":
                self._counts.add("dropped")
            elif kind == "garbled":
                self._counts.add("garbled")
                self.device.write(self._garble(frame))
            elif kind == "truncated":
                self._counts.add("truncated")
                self.device.write(frame[: self._rng.randrange(1, len(frame) - 2)])
            elif kind == "duplicated":
                self._counts.add("duplicated")
                self._write_intact(frame + frame)
            elif kind == "reordered" and self._held is None:
                self._held = frame
            else:
                self._write_intact(frame)

    def flush(self) -> None:
        """Send a held frame now (nothing overtook it: it is not counted as reordered)."""
        with self._lock:
            if self._held is not None:
                self.device.write(self._held)
                self._held = None

    def _write_intact(self, data: bytes, sequenced: bool = True) -> None:
        self.device.write(data)
        # Only a later *numbered* frame makes the held one arrive out of order.
        if self._held is not None and sequenced:
            self.device.write(self._held)
            self._held = None
            self._counts.add("reordered")

    def _pick(self) -> str | None:
        roll = self._rng.random()
        for kind in SERIAL_KINDS:
            rate = getattr(self.rates, kind)
            if roll < rate:
                return kind
            roll -= rate
        return None

    def _garble(self, frame: bytes) -> bytes:
        star = frame.rindex(b"*")
        i = self._rng.randrange(1, star)
        value = frame[i]
        while value == frame[i] or value in _FRAMING:
            value = self._rng.randrange(256)
        return frame[:i] + bytes([value]) + frame[i + 1 :]
