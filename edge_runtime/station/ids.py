"""Item ids as the controller hands them out: announcements, gaps, repeats and counter resets.

The controller numbers items consecutively. An id skipped over was announced and lost on the
wire (or is only late, when frames were reordered): it waits ``unannounced_wait_s`` for its
announcement and is then due for a safe-exit command of its own. A jump of more than
``max_gap`` ids, forwards or backwards, is a restarted controller, not that many lost items.

A heartbeat names the last id the controller announced, which reveals announcements lost at
the end of a burst. One frame is never enough to act on ids the station has not seen: a claim
beyond the announcements is held until a second heartbeat repeats it (or an announcement beyond
it opens the gap itself), an announcement of a claimed id refutes the claim, and a heartbeat
never resets the counter. So a single forged or corrupted heartbeat cannot send a real item to
the safe exit, nor make the station forget the ids it has seen.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

log = logging.getLogger(__name__)

NEW = "new"
REPEATED = "repeated"


class ItemIds:
    def __init__(self, max_gap: int = 32, remember: int = 10000, unannounced_wait_s: float = 0.06) -> None:
        self.max_gap = max_gap
        self.remember = remember
        self.unannounced_wait_s = unannounced_wait_s
        self.highest: int | None = None
        self.resets = 0
        self.claims_refused = 0  # heartbeat claims that were never repeated, refuted, or beyond max_gap
        self._claim: tuple[int, float] | None = None  # a heartbeat's unconfirmed last id, and when
        self._seen: OrderedDict[int, None] = OrderedDict()  # announced or given up as unannounced
        self._skipped: dict[int, float] = {}  # id not announced (yet) -> when the gap was noticed

    def announced(self, item_id: int, at: float) -> str:
        """Note an announcement: NEW, or REPEATED for an id already seen since the last reset."""
        if self._claim is not None and self.highest is not None and self.highest < item_id <= self._claim[0]:
            self._refuse_claim(f"id {item_id} was announced after a heartbeat said {self._claim[0]} had been")
        self._note(item_id, at, announced=True)
        if item_id in self._seen:
            return REPEATED
        self._skipped.pop(item_id, None)  # it was late, not lost
        self._remember(item_id)
        return NEW

    def seen(self, item_id: int) -> bool:
        """Announced (or given up as unannounced) since the last counter reset."""
        return item_id in self._seen

    def heartbeat(self, last_item_id: int, at: float) -> None:
        """A heartbeat names the last id the controller announced: ids up to it were announced.
        A claim beyond the ids seen counts once a second heartbeat repeats it."""
        if last_item_id < 0 or self.highest is None or last_item_id <= self.highest:
            return  # nothing announced yet (the station started mid-line), or nothing new
        if last_item_id - self.highest > self.max_gap:
            self._refuse_claim(f"a heartbeat claimed id {last_item_id}, {last_item_id - self.highest} beyond "
                               f"the last announced ({self.highest}); only an announcement restarts the count")
            return
        claim, self._claim = self._claim, (last_item_id, at)
        if claim is not None:  # repeated: the ids up to both claims were announced and lost
            self._note(min(claim[0], last_item_id), claim[1], announced=False)  # missed since the first

    def _refuse_claim(self, why: str) -> None:
        self.claims_refused += 1
        self._claim = None
        if self.claims_refused == 1 or self.claims_refused % 1000 == 0:
            log.warning("heartbeat claim #%d refused: %s", self.claims_refused, why)

    def due_unannounced(self, now: float) -> list[int]:
        """Skipped ids whose announcement has not come within the wait: each needs a command."""
        due = [i for i, t in self._skipped.items() if now - t >= self.unannounced_wait_s]
        for item_id in due:
            del self._skipped[item_id]
            self._remember(item_id)
        return due

    def all_skipped(self) -> list[int]:
        """Every id still waiting for its announcement (at shutdown: all are due, and so are the
        ids a last heartbeat claimed: the line has stopped, nothing can refute it)."""
        if self._claim is not None:
            self._note(self._claim[0], self._claim[1], announced=False)
            self._claim = None
        due, self._skipped = list(self._skipped), {}
        for item_id in due:
            self._remember(item_id)
        return due

    def next_due(self) -> float | None:
        return min(self._skipped.values()) + self.unannounced_wait_s if self._skipped else None

    def _note(self, item_id: int, at: float, announced: bool) -> None:
        if self.highest is not None:
            step = item_id - self.highest
            if step > self.max_gap or -step > self.max_gap:
                log.warning("item ids jumped from %d to %d: taking it for a counter reset", self.highest, item_id)
                self.resets += 1
                self._seen.clear()  # ids start over: an old id is a new item now
                self._skipped.clear()
                self._claim = None
                self.highest = item_id
                return
            for skipped in range(self.highest + 1, item_id if announced else item_id + 1):
                if skipped not in self._seen:
                    self._skipped.setdefault(skipped, at)
        if self.highest is None or item_id > self.highest:
            self.highest = item_id
        if self._claim is not None and self._claim[0] <= self.highest:
            self._claim = None  # the ids it named are accounted for

    def _remember(self, item_id: int) -> None:
        self._seen[item_id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
