"""The station's serial wire format: one ASCII frame per message.

Every device on the line (the line controller, the tap-pressure sensor) speaks the same
framing, so one parser and one encoder serve them all::

    $<version>,<seq>,<TYPE>,<field>,<field>...*<CRC>\\n

- ``version`` is the protocol version (``1``); a frame of another version is counted and dropped.
- ``seq`` is the sender's frame counter, 0..65535, wrapping; gaps are counted per stream.
- ``CRC`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over the bytes between ``$`` and
  ``*``, as four upper-case hex digits.

Examples (the exact bytes the simulators and tests produce)::

    $1,7,ITEM,42,0,1500,250*<crc>     item 42 arrives on lane 0 at t=1500 ms, gate in 250 ms
    $1,8,TAP,42,0,5,8.412,0.551,9.73,1512*<crc>
    $1,3,GATE,42,1*<crc>              send item 42 to exit 1

``docs/protocol.md`` has every message's layout, with exact example frames.

ASCII lines keep the traffic readable in a terminal and let the parser resynchronise on the
next ``$`` after any garbage. The parser never raises on input: every rejected byte or frame
is counted in :class:`ParserStats`.
"""

from __future__ import annotations

import binascii
import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from typing import ClassVar

log = logging.getLogger(__name__)
PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256
# Protocol ranges: a CRC-valid frame whose field lies outside these is rejected (counted as
# ``out_of_range``), never passed on. Physical plausibility (a 10^30 N tap) is the station's
# business, per sensor (``ReadingLimits``); these are the limits of the wire format itself.
ITEM_ID_MAX = 2**53 - 1  # ids stay exact in JSON (event logs, web clients)
TIME_MS_MAX = 2**53 - 1  # a device clock in ms: 285,000 years
DEADLINE_MS_MAX = 600_000  # an item's gate is at most 10 minutes away
MAX_EXIT = 255  # exits and lanes are one byte on every controller this protocol serves
MAX_LANE = 255
MAX_TAPS = 64
MAX_INT_DIGITS = 20  # longer integers are refused (malformed) before they are converted
# The fields' grammar, byte for byte: Python's int() and float() also take " 42 ", "1_000", "+7",
# "٤٢" and "infinity", none of which a device on this protocol sends.
_INT = re.compile(rf"-?[0-9]{{1,{MAX_INT_DIGITS}}}")
_FLOAT = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
_START = ord("$")
_END = ord("\n")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (the check value of ``b"123456789"`` is 0x29B1)."""
    return binascii.crc_hqx(data, 0xFFFF)


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemArrival:
    """Controller → station: an item entered the station; its gate is ``deadline_ms`` away."""

    TYPE: ClassVar[str] = "ITEM"
    item_id: int
    lane: int
    t_ms: int
    deadline_ms: int


@dataclass(frozen=True)
class GateCommand:
    """Station → controller: send ``item_id`` to ``exit``."""

    TYPE: ClassVar[str] = "GATE"
    item_id: int
    exit: int


@dataclass(frozen=True)
class Ack:
    """Controller → station: the gate command for ``item_id`` was accepted."""

    TYPE: ClassVar[str] = "ACK"
    item_id: int


@dataclass(frozen=True)
class Heartbeat:
    """Any device → station, periodically. A controller puts the id of the last item it
    announced in ``last_item_id`` (other devices send -1), so a lost announcement of the
    latest item is noticed even when no later item follows."""

    TYPE: ClassVar[str] = "HB"
    t_ms: int
    last_item_id: int = -1


@dataclass(frozen=True)
class ErrorReport:
    TYPE: ClassVar[str] = "ERR"
    code: int
    text: str


@dataclass(frozen=True)
class TapReading:
    """Tap sensor → station: tap ``index`` of ``count`` on one item."""

    TYPE: ClassVar[str] = "TAP"
    item_id: int
    index: int
    count: int
    peak_n: float  # peak force, newtons
    rebound: float  # rebound ratio, 0..1
    decay_ms: float  # time for the force to fall to 1/e of the peak
    t_ms: int


@dataclass(frozen=True)
class ScaleReading:
    """Checkout scale → station: the weight on the plate, and whether it has settled."""

    TYPE: ClassVar[str] = "WT"
    t_ms: int
    grams: float
    stable: int  # 1 once the reading has settled, 0 while it moves


# Field → inclusive (low, high); fields not named here have no range beyond their type.
FIELD_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "ITEM": {"item_id": (0, ITEM_ID_MAX), "lane": (0, MAX_LANE), "t_ms": (0, TIME_MS_MAX),
             "deadline_ms": (0, DEADLINE_MS_MAX)},
    "GATE": {"item_id": (0, ITEM_ID_MAX), "exit": (0, MAX_EXIT)},
    "ACK": {"item_id": (0, ITEM_ID_MAX)},
    "HB": {"t_ms": (0, TIME_MS_MAX), "last_item_id": (-1, ITEM_ID_MAX)},
    "ERR": {"code": (0, 0xFFFF)},
    "TAP": {"item_id": (0, ITEM_ID_MAX), "index": (0, MAX_TAPS - 1), "count": (1, MAX_TAPS),
            "t_ms": (0, TIME_MS_MAX)},
    "WT": {"t_ms": (0, TIME_MS_MAX), "stable": (0, 1)},
}

Message = ItemArrival | GateCommand | Ack | Heartbeat | ErrorReport | TapReading | ScaleReading
MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (ItemArrival, GateCommand, Ack, Heartbeat, ErrorReport, TapReading, ScaleReading)
}
# Responses carry the sender's next sequence number without consuming it, and receivers leave
# them out of sequence accounting: a lost acknowledgement is caught by the command's
# retransmission, and a stream recorded without a peer can be replayed to one.
UNSEQUENCED = frozenset({Ack.TYPE})
_FORBIDDEN_IN_TEXT = str.maketrans({c: " " for c in "$*,\r\n"})


def _format_field(value: object) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot send a non-finite number: {value}")
        return f"{value:.4g}"
    if isinstance(value, str):
        return value.translate(_FORBIDDEN_IN_TEXT)
    return str(int(value))


def _parse_field(text: str, kind: type) -> object:
    if kind is int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise OverflowError(f"{len(text)}-digit integer")
        if not _INT.fullmatch(text):
            raise ValueError(f"{text[:24]!r} is not an integer (digits, an optional leading '-')")
        return int(text)
    if kind is float:
        if not _FLOAT.fullmatch(text):
            raise ValueError(f"{text[:24]!r} is not a decimal number")
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("non-finite number")
        return value
    return text


_FIELD_KINDS: dict[str, list[tuple[str, type]]] = {
    name: [(f.name, {"int": int, "float": float, "str": str}[f.type]) for f in dataclasses.fields(cls)]
    for name, cls in MESSAGE_TYPES.items()
}


# --- encoder --------------------------------------------------------------------------------


class Encoder:
    """Turns messages into frames with the sender's own sequence counter."""

    def __init__(self) -> None:
        self._seq = 0

    def encode(self, message: Message) -> bytes:
        """The frame for ``message``; ValueError if a field is outside the protocol's range
        (the receiver would reject it)."""
        for name, (lo, hi) in FIELD_RANGES[message.TYPE].items():
            if not lo <= getattr(message, name) <= hi:
                raise ValueError(f"{message.TYPE}.{name} = {getattr(message, name)!r}, outside {lo}..{hi}")
        fields = [_format_field(getattr(message, name)) for name, _ in _FIELD_KINDS[message.TYPE]]
        body = ",".join([str(PROTOCOL_VERSION), str(self._seq), message.TYPE, *fields]).encode("ascii")
        if message.TYPE not in UNSEQUENCED:
            self._seq = (self._seq + 1) & 0xFFFF
        frame = b"$" + body + b"*%04X\n" % crc16(body)
        if len(frame) > MAX_FRAME_BYTES:
            raise ValueError(f"{message.TYPE} frame is {len(frame)} bytes, over {MAX_FRAME_BYTES}")
        return frame


# --- parser ---------------------------------------------------------------------------------


@dataclass
class ParserStats:
    """What the parser saw. Every byte that did not become a message is counted somewhere."""

    frames: int = 0
    garbage_bytes: int = 0  # bytes outside any frame
    oversize: int = 0  # a frame with no end within MAX_FRAME_BYTES
    bad_crc: int = 0
    malformed: int = 0  # CRC right but the fields do not parse
    unknown_type: int = 0
    bad_version: int = 0
    out_of_range: int = 0  # CRC right, fields parse, but a value is outside the protocol's range
    seq_missing: int = 0  # sequence numbers skipped and not (yet) received: frames lost on the way
    seq_duplicates: int = 0  # a sequence number received again
    seq_reordered: int = 0  # a frame that arrived after a later one (and filled its gap)
    seq_restarts: int = 0  # the sender's counter jumped back: it restarted

    @property
    def rejected(self) -> int:
        """Frames that arrived but were rejected. Each also left its sequence number missing."""
        return self.bad_crc + self.malformed + self.unknown_type + self.bad_version + self.out_of_range

    @property
    def errors(self) -> int:
        return self.oversize + self.rejected

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Parser:
    """Incremental frame parser: feed it any bytes, get the messages they complete.

    It keeps at most one partial frame (``MAX_FRAME_BYTES``) between calls and resynchronises
    on the next ``$`` after anything it rejects.
    """

    def __init__(self, name: str = "serial") -> None:
        self.name = name
        self.stats = ParserStats()
        self._buf = bytearray()
        self._sequence = _SequenceTracker(self.stats)
        self._logged: dict[str, int] = {}

    def _reject(self, kind: str, detail: str) -> None:
        """Count a rejected frame; log the first of each kind, then every 1000th (a babbling
        device must not fill the disk with log lines)."""
        count = getattr(self.stats, kind) + 1
        setattr(self.stats, kind, count)
        if count == 1 or count % 1000 == 0:
            log.warning("%s: rejected frame #%d (%s): %s", self.name, count, kind, detail)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        while buf:
            start = buf.find(_START)
            if start < 0:
                self.stats.garbage_bytes += len(buf)
                buf.clear()
                break
            if start:
                self.stats.garbage_bytes += start
                del buf[:start]
            end = buf.find(_END)
            # A new "$" before the end means the frame in hand was cut short: drop it.
            restart = buf.find(_START, 1, end if end >= 0 else min(len(buf), MAX_FRAME_BYTES))
            if restart > 0:
                self.stats.malformed += 1
                del buf[:restart]
                continue
            if end < 0:
                if len(buf) >= MAX_FRAME_BYTES:
                    self.stats.oversize += 1
                    del buf[:1]
                    continue
                break  # wait for the rest of the frame
            frame = bytes(buf[: end + 1])
            del buf[: end + 1]
            message = self._decode(frame)
            if message is not None:
                out.append(message)
        return out

    def _decode(self, frame: bytes) -> Message | None:
        body, star, tail = frame[1:].rstrip(b"\r\n").rpartition(b"*")
        if not star or len(tail) != 4:
            self.stats.malformed += 1
            return None
        try:
            if int(tail, 16) != crc16(body):
                self._reject("bad_crc", f"CRC {tail!r} over {len(body)} bytes")
                return None
            parts = body.decode("ascii").split(",")
        except (ValueError, UnicodeDecodeError):
            self.stats.bad_crc += 1
            return None
        if len(parts) < 3:
            self.stats.malformed += 1
            return None
        version, seq_text, type_name, *fields = parts
        if version != str(PROTOCOL_VERSION):
            self._reject("bad_version", f"version {version[:16]!r}")
            return None
        kinds = _FIELD_KINDS.get(type_name)
        if kinds is None:
            self._reject("unknown_type", f"type {type_name[:16]!r}")
            return None
        try:
            if len(fields) != len(kinds):
                raise ValueError(f"{len(fields)} fields, {type_name} has {len(kinds)}")
            seq = int(_parse_field(seq_text, int))
            if not 0 <= seq <= 0xFFFF:
                raise ValueError(f"sequence number {seq}")
            values = {name: _parse_field(text, kind) for (name, kind), text in zip(kinds, fields)}
        except (ValueError, OverflowError) as exc:
            self._reject("malformed", f"{type_name}: {exc}")
            return None
        for name, (lo, hi) in FIELD_RANGES[type_name].items():
            if not lo <= values[name] <= hi:
                self._reject("out_of_range", f"{type_name}.{name} = {values[name]!r}, outside {lo}..{hi}")
                return None
        if type_name not in UNSEQUENCED:
            self._sequence.observe(seq)
        self.stats.frames += 1
        return MESSAGE_TYPES[type_name](**values)



class _SequenceTracker:
    """Classifies each received sequence number against the sender's 16-bit counter.

    A jump ahead marks the skipped numbers missing; a number that later fills one was
    reordered, not lost; a number already seen is a duplicate; a jump of more than
    ``WINDOW`` either way is a sender restart (or a reset counter), not thousands of lost
    frames. Only the last ``WINDOW`` missing numbers are remembered, so memory stays bounded.
    """

    WINDOW = 512

    def __init__(self, stats: ParserStats) -> None:
        self.stats = stats
        self.highest: int | None = None  # unwrapped
        self.missing: set[int] = set()

    def observe(self, seq: int) -> None:
        if self.highest is None:
            self._restart(seq)
            return
        delta = (seq - self.highest) & 0xFFFF
        if 0 < delta <= self.WINDOW:  # ahead
            new = self.highest + delta
            self.stats.seq_missing += delta - 1
            self.missing.update(range(self.highest + 1, new))
            self.highest = new
            if len(self.missing) > self.WINDOW:  # forget the oldest gaps; they stay counted
                self.missing = {n for n in self.missing if n > new - self.WINDOW}
            return
        back = (0x10000 - delta) & 0xFFFF
        number = self.highest - back
        if delta and (delta < 0x8000 or back > self.WINDOW):  # a jump too far either way
            self.stats.seq_restarts += 1
            self._restart(seq)
        elif number in self.missing:
            self.missing.discard(number)
            self.stats.seq_missing -= 1
            self.stats.seq_reordered += 1
        else:
            self.stats.seq_duplicates += 1

    def _restart(self, seq: int) -> None:
        self.highest = seq
        self.missing.clear()
