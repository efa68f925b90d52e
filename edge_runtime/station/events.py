"""The event log: one JSON line per item."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


class EventLog:
    """One JSON line per item, stamped with UTC time. A full or failing disk is counted,
    never fatal: the line does not stop because a log cannot be written.

    Rotated by size: past ``max_bytes`` the file becomes ``PATH.1`` (``PATH.1`` becomes
    ``PATH.2``, …, up to ``keep`` old files) and a new one is started."""

    def __init__(self, path: Path | None, max_bytes: int = 64 << 20, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.errors = 0
        self.rotations = 0
        self._file = None
        self._size = 0
        self._lock = threading.Lock()  # the loop writes items, a watcher its alarms
        if path is not None:
            self._open()

    def _open(self) -> None:
        try:
            self._file = open(self.path, "a", encoding="utf-8")
            self._size = self._file.tell()
        except OSError as exc:
            self._file = None
            self.errors += 1
            log.error("event log %s cannot be opened: %s (items are still sorted)", self.path, exc)

    def _rotate(self) -> None:
        self._file.close()
        try:
            for k in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{k}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{k + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self.rotations += 1
        except OSError as exc:
            self.errors += 1
            log.error("event log %s cannot be rotated: %s (it keeps growing)", self.path, exc)
        self._open()

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        stamped = {"utc": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
        line = json.dumps(stamped) + "\n"
        with self._lock:
            if self._file is not None:  # closed meanwhile (a watcher's line after the loop ended)
                self._write(line)

    def _write(self, line: str) -> None:
        try:
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self._rotate()
                if self._file is None:
                    return
            self._file.write(line)
            self._file.flush()
            self._size += len(line)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("event log %s: %s (further errors are only counted)", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    self.errors += 1
                self._file = None
