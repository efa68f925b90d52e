"""The gate channel: each item's one command to the controller, resent until acknowledged or
until its gate has passed."""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from sortline.hardware.protocol import GateCommand, Message

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, message: Message) -> bool: ...


@dataclass
class _Unacked:
    command: GateCommand
    sent_at: float
    deadline_at: float


@dataclass
class _Exchange:
    """One item's command on the wire: how often it went out and came back acknowledged.

    A command is counted unacknowledged once its timeout passes; if every transmission is
    acknowledged in the end, the acknowledgement was slow, not missing, and the count is undone.
    """

    sent: int = 1
    acked: int = 0
    overdue: bool = False


@dataclass
class GateStats:
    gate_commands: int = 0  # first transmissions that reached the port
    acks: int = 0
    retransmissions: int = 0
    unacked: int = 0  # commands with a transmission the controller never acknowledged


class GateChannel:
    def __init__(self, link: Sender, ack_timeout_s: float = 0.05, remember: int = 10000) -> None:
        self.link = link
        self.ack_timeout_s = ack_timeout_s
        self.remember = remember
        self.stats = GateStats()
        self._unacked: dict[int, _Unacked] = {}
        self._due: list[tuple[float, int]] = []  # (resend at, item id): heap; acknowledged entries skipped
        self._exchanges: OrderedDict[int, _Exchange] = OrderedDict()

    def send(self, item_id: int, exit: int, now: float, deadline_at: float) -> bool:
        """Send the item's one command and keep it until acknowledged or ``deadline_at``."""
        command = GateCommand(item_id=item_id, exit=exit)
        sent = self.link.send(command)
        self.stats.gate_commands += int(sent)
        self._unacked[item_id] = _Unacked(command, now, deadline_at)
        heapq.heappush(self._due, (now + self.ack_timeout_s, item_id))
        self._exchanges[item_id] = _Exchange()
        if len(self._exchanges) > self.remember:
            self._exchanges.popitem(last=False)
        return sent

    def ack(self, item_id: int) -> None:
        self.stats.acks += int(self._unacked.pop(item_id, None) is not None)
        exchange = self._exchanges.get(item_id)
        if exchange is None:
            return
        exchange.acked += 1
        if exchange.overdue and exchange.acked >= exchange.sent:
            exchange.overdue = False  # slow, not missing: every transmission came back
            self.stats.unacked -= 1

    def next_due(self) -> float | None:
        while self._due and self._stale(*self._due[0]):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def _stale(self, at: float, item_id: int) -> bool:
        waiting = self._unacked.get(item_id)
        return waiting is None or waiting.sent_at + self.ack_timeout_s != at

    def resend_due(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            at, item_id = heapq.heappop(self._due)
            if self._stale(at, item_id):
                continue
            waiting = self._unacked[item_id]
            exchange = self._exchanges.get(item_id)
            if exchange is not None and not exchange.overdue:
                exchange.overdue = True
                self.stats.unacked += 1
            if now >= waiting.deadline_at:  # the item has passed the gate: nothing left to steer
                del self._unacked[item_id]
                continue
            self.link.send(waiting.command)
            waiting.sent_at = now
            heapq.heappush(self._due, (now + self.ack_timeout_s, item_id))
            self.stats.retransmissions += 1
            if exchange is not None:
                exchange.sent += 1
