"""What the station says to the plant and what it takes from it: one result per item (the same
fields over MQTT and OPC UA) and the lane commands, checked before anything acts on them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sortline.hardware.protocol import MAX_LANE

MAX_COMMAND_BYTES = 1024  # a pause or resume is a few bytes; anything longer is refused unread
ALL = "all"


@dataclass(frozen=True)
class PlantResult:
    """One item's result as the plant sees it. ``seq`` counts every result the station made in
    this run (a gap at a subscriber is a result that could not be kept, and was counted)."""

    seq: int
    item_id: int
    lane: int | None  # None: an item never announced (its id skipped), sent to the safe exit
    label: str | None  # the head's class; None when the head did not decide (safe exit)
    confidence: float
    exit: int
    reason: str  # "confident", "unsure", "unknown", "paused", "overload", …
    head_version: int
    bundle: str
    latency_ms: float | None  # from the item's announcement to its gate command
    at: float  # when it was decided, UTC seconds
    simulated: bool = False

    @classmethod
    def of(cls, record: dict, seq: int, at: float, simulated: bool = False) -> PlantResult:
        """From the item's record as the station writes it to its event log (``at``: UTC seconds)."""
        latency = record.get("latency_ms")
        return cls(seq=seq, item_id=int(record["item_id"]), lane=record.get("lane"), label=record.get("label"),
                   confidence=float(record.get("confidence") or 0.0), exit=int(record["exit"]),
                   reason=str(record["reason"]), head_version=int(record.get("head_version") or 0),
                   bundle=str(record.get("bundle", "")),
                   latency_ms=None if latency is None or not math.isfinite(latency) else float(latency),
                   at=at, simulated=simulated)

    @property
    def utc(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds")

    def to_json(self) -> str:
        """The MQTT payload (made on the publisher's thread, not the station's loop)."""
        return json.dumps({"seq": self.seq, "item_id": self.item_id, "lane": self.lane, "label": self.label,
                           "confidence": self.confidence, "exit": self.exit, "reason": self.reason,
                           "head_version": self.head_version, "bundle": self.bundle, "latency_ms": self.latency_ms,
                           "simulated": self.simulated, "utc": self.utc}, separators=(",", ":"))

    @property
    def result_id(self) -> str:
        """The OPC UA ResultId: unique in the station's run (the item id may repeat after a counter reset)."""
        return f"{self.seq}-{self.item_id}"


class CommandError(ValueError):
    """A command the station refuses (the reason is sent back and counted)."""


@dataclass(frozen=True)
class LaneCommand:
    action: str  # "pause" or "resume"
    lane: int | None  # None: every lane

    def to_dict(self) -> dict:
        return {"command": self.action, "lane": ALL if self.lane is None else self.lane}


def parse_command(action: str, payload: bytes) -> LaneCommand:
    """``{"lane": 3}`` or ``{"lane": "all"}`` for ``pause`` or ``resume``; anything else is refused."""
    if action not in ("pause", "resume"):
        raise CommandError(f"unknown command {action[:40]!r}: pause or resume")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes (at most {MAX_COMMAND_BYTES})")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(f"payload is not JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict) or set(body) != {"lane"}:
        raise CommandError('payload must be {"lane": N} or {"lane": "all"}')
    lane = body["lane"]
    if lane == ALL:
        return LaneCommand(action, None)
    if isinstance(lane, bool) or not isinstance(lane, int) or not 0 <= lane <= MAX_LANE:
        raise CommandError(f"lane must be 0..{MAX_LANE} or \"all\"")
    return LaneCommand(action, lane)
