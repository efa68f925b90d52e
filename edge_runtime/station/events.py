"""The event log: one JSON line per item."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


class EventLog:
    """One JSON line per item, stamped with UTC time. A full or failing disk is counted,
    never fatal: the line does not stop because a log cannot be written."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.errors = 0
        self._file = None
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8")
            except OSError as exc:
                self.errors += 1
                log.error("event log %s cannot be opened: %s (items are still sorted)", path, exc)

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        stamped = {"utc": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
        try:
            self._file.write(json.dumps(stamped) + "\n")
            self._file.flush()
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("event log %s: %s (further errors are only counted)", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                self.errors += 1
