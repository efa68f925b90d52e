"""The controller's side of the gate protocol, as a referee: it records every gate command
for every item that passed, acknowledges each (except while the controller is silent), and
tallies what a line would see. The simulated line and the replayed one both use it, so a
station is judged the same way live and from a recording."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..protocol import GateCommand


@dataclass
class GateRecord:
    announced_at: float
    deadline_at: float
    commands: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class LineTally:
    """What the controller saw, item by item, and what was injected."""

    items: int
    gate_commands: int  # distinct decisions received (retransmissions not counted)
    lost: int  # items that never got a command
    duplicates: int  # commands with a different exit for an item that already had one
    retransmissions: int  # repeated identical commands
    late: int  # first command arrived after the item passed the gate
    unknown_item: int  # commands for items that never passed
    exits: dict[int, int]  # item id -> exit of the first command
    injected: dict[str, int]
    span_s: float = 0.0  # from the first announcement to the last item's first command


class GateReferee:
    def __init__(self) -> None:
        self._records: dict[int, GateRecord] = {}
        self._silences: list[tuple[float, float]] = []
        self._unknown = 0
        self._retransmissions = 0
        self._duplicates = 0
        self.unacked = 0  # first commands that arrived while the controller was silent
        self._lock = threading.Lock()

    def announce(self, item_id: int, at: float, deadline_s: float) -> None:
        with self._lock:
            self._records.setdefault(item_id, GateRecord(announced_at=at, deadline_at=at + deadline_s))

    def silence(self, start: float, duration_s: float) -> None:
        """From ``start``, the controller acknowledges nothing for ``duration_s``."""
        with self._lock:
            self._silences.append((start, start + duration_s))

    def announced_time(self, item_id: int) -> float:
        with self._lock:
            return self._records[item_id].announced_at

    def decided(self, item_id: int) -> bool:
        with self._lock:
            record = self._records.get(item_id)
            return record is not None and bool(record.commands)

    @property
    def announced(self) -> int:
        with self._lock:
            return len(self._records)

    def receive(self, command: GateCommand, now: float) -> bool:
        """Record a command; True if the controller acknowledges it."""
        with self._lock:
            silent = any(a <= now < b for a, b in self._silences)
            record = self._records.get(command.item_id)
            if record is None:
                self._unknown += 1
                return False
            if not record.commands:
                record.commands.append((now, command.exit))
                self.unacked += int(silent)
            elif command.exit == record.commands[0][1]:
                self._retransmissions += 1
            else:
                self._duplicates += 1
            return not silent

    def tally(self, injected: dict[str, int]) -> LineTally:
        with self._lock:
            records = dict(self._records)
            injected = {**injected, "unacked": self.unacked}
            return LineTally(
                items=len(records),
                gate_commands=sum(len(r.commands) for r in records.values()),
                lost=sum(1 for r in records.values() if not r.commands),
                duplicates=self._duplicates,
                retransmissions=self._retransmissions,
                late=sum(1 for r in records.values() if r.commands and r.commands[0][0] > r.deadline_at),
                unknown_item=self._unknown,
                exits={item: r.commands[0][1] for item, r in records.items() if r.commands},
                injected=injected,
                span_s=(max((r.commands[0][0] for r in records.values() if r.commands), default=0.0)
                        - min((r.announced_at for r in records.values()), default=0.0)),
            )
