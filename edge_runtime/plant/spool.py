"""Messages kept on disk, in order, while the plant's broker is away.

JSON lines in segment files (``spool-00000001.jsonl``, …) in one folder, at most ``max_bytes`` in
all: past it the oldest segment is given up, and each of its messages is counted as lost (never
silently). A full or failing disk is counted the same way; the line goes on. Segments left by an
earlier run are sent first when the broker comes back (a station restarted while it was away)."""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)
SEGMENT_BYTES = 1 << 20

Entry = tuple[str, str, float]  # topic, payload (JSON text), when it was decided (UTC seconds)


class Spool:
    def __init__(self, folder: Path, max_bytes: int = 64 << 20, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder, self.max_bytes, self.segment_bytes = folder, max_bytes, segment_bytes
        self.lost = 0  # messages given up: the cap, or a disk that would not take them
        self.errors = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._segments: deque[list] = deque()  # [path, bytes, entries] oldest first
        for path in sorted(folder.glob("spool-*.jsonl")):
            with open(path, "rb") as f:
                self._segments.append([path, path.stat().st_size, sum(1 for _ in f)])
        self._next = 1 + max((int(p.stem.split("-")[1]) for p, _, _ in self._segments), default=0)
        self._writer = None  # the newest segment, open for appending
        self._reading: deque[Entry] = deque()  # what is left of the oldest segment, read in
        self._read_from: Path | None = None

    def __len__(self) -> int:
        return sum(s[2] for s in self._segments) - self._read_consumed()

    def _read_consumed(self) -> int:
        if self._read_from is None or not self._segments or self._segments[0][0] != self._read_from:
            return 0
        return self._segments[0][2] - len(self._reading)

    @property
    def bytes(self) -> int:
        return sum(s[1] for s in self._segments)

    def append(self, entry: Entry) -> bool:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        size = len(line.encode())
        while self._segments and self.bytes + size > self.max_bytes:
            self._give_up_oldest()
        try:
            if self._writer is None or self._segments[-1][1] + size > self.segment_bytes:
                self._new_segment()
            self._writer.write(line)
            self._writer.flush()
        except OSError as exc:
            self.errors += 1
            self.lost += 1
            if self.errors == 1:
                log.error("MQTT spool %s: %s (messages that cannot be kept are counted as lost)", self.folder, exc)
            self._close_writer()
            return False
        self._segments[-1][1] += size
        self._segments[-1][2] += 1
        return True

    def peek(self) -> Entry | None:
        """The oldest message kept, or None."""
        if not self._reading and not self._load_oldest():
            return None
        return self._reading[0]

    def pop(self) -> None:
        """The oldest message has gone to the broker's client: forget it (and its segment, once empty)."""
        self._reading.popleft()
        if not self._reading and self._segments and self._segments[0][0] == self._read_from:
            self._drop_segment()

    def _load_oldest(self) -> bool:
        while self._segments:
            if self._writer is not None and len(self._segments) == 1:
                self._close_writer()  # read the segment being written: later messages start a new one
            path = self._segments[0][0]
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                self.errors += 1
                log.error("MQTT spool segment %s cannot be read: %s (its messages are lost)", path, exc)
                self._give_up_oldest()
                continue
            entries = [e for e in map(_entry, lines) if e is not None]
            self.lost += len(lines) - len(entries)
            if entries:
                self._reading, self._read_from = deque(entries), path
                self._segments[0][2] = len(entries)
                return True
            self._drop_segment()
        return False

    def _give_up_oldest(self) -> None:
        path, _, count = self._segments[0]
        self.lost += count - self._read_consumed()
        log.warning("MQTT spool over %d bytes: %d messages in %s given up", self.max_bytes, count, path.name)
        if self._writer is not None and len(self._segments) == 1:
            self._close_writer()
        self._drop_segment()

    def _drop_segment(self) -> None:
        path = self._segments.popleft()[0]
        if path == self._read_from:
            self._reading, self._read_from = deque(), None
        try:
            path.unlink(missing_ok=True)
        except OSError:
            self.errors += 1

    def _new_segment(self) -> None:
        self._close_writer()
        path = self.folder / f"spool-{self._next:08d}.jsonl"
        self._next += 1
        self._writer = open(path, "a", encoding="utf-8")
        self._segments.append([path, 0, 0])

    def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                self.errors += 1
            self._writer = None

    def close(self) -> None:
        self._close_writer()
        if self._read_from is not None and self._segments and self._segments[0][0] == self._read_from:
            self._rewrite_oldest()

    def _rewrite_oldest(self) -> None:
        """What is left of a half-sent segment, kept for the next run."""
        path = self._segments[0][0]
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in self._reading))
            os.replace(tmp, path)
        except OSError:
            self.errors += 1


def _entry(line: str) -> Entry | None:
    try:
        topic, payload, at = json.loads(line)
    except (ValueError, TypeError):
        return None
    if not isinstance(topic, str) or not isinstance(payload, str) or not isinstance(at, int | float):
        return None
    return topic, payload, float(at)
