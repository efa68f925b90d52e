"""One serial device as a stream of messages, over any pyserial URL.

The same :class:`SerialLink` opens ``/dev/ttyUSB0``, a simulator's pseudo-terminal,
``socket://host:port``, ``rfc2217://...`` or ``loop://``: the driver code on the line and in the
tests is the same code.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from .errors import SortlineError
from .protocol import Encoder, Message, Parser, ParserStats

log = logging.getLogger(__name__)
DEFAULT_BAUD = 115200  # 8N1, the protocol's default (docs/protocol.md)


class LinkError(SortlineError, OSError):
    """A serial device that cannot be opened (missing, busy, or a URL pyserial does not know)."""


@dataclass(frozen=True)
class Received:
    """A message and where and when it arrived (``time.monotonic()`` seconds)."""

    source: str
    message: Message
    at: float


class SerialLink:
    """A reader thread that parses frames into a bounded queue, plus a locked writer.

    Several links may share one ``inbox`` so a consumer waits on all devices at once. When
    the inbox is full the oldest message is dropped and counted: a stalled consumer must
    not grow memory without bound on a line that keeps running.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        baudrate: int = DEFAULT_BAUD,
        inbox: queue.Queue[Received] | None = None,
        read_timeout_s: float = 0.02,
        reconnect_s: float = 0.5,
        on_bytes: Callable[[bytes, float], None] | None = None,
        on_event: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_bytes(data, t)`` sees every chunk read, before parsing, and ``on_event(kind, t)``
        sees "disconnect" and "reconnect" (``t`` is ``time.monotonic()``): a recorder's hooks."""
        self.url = url
        self.name = name
        self.baudrate = baudrate
        self.inbox: queue.Queue[Received] = inbox if inbox is not None else queue.Queue(maxsize=4096)
        self.parser = Parser(name)
        self.dropped = 0  # messages lost to a full inbox
        self.reconnects = 0
        self.write_errors = 0
        self._read_timeout_s = read_timeout_s
        self._reconnect_s = reconnect_s
        self._encoder = Encoder()
        self._on_bytes = on_bytes
        self._on_event = on_event
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> ParserStats:
        return self.parser.stats

    def open(self) -> SerialLink:
        """Open the port and start reading; :class:`LinkError` if the port cannot be opened."""
        try:
            self._port = self._open_port()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"{self.name}: cannot open {self.url!r} ({exc})") from exc
        self._thread = threading.Thread(target=self._read_loop, name=f"serial-{self.name}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._port is not None:
            self._port.close()

    def __enter__(self) -> SerialLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: Message) -> bool:
        """Write one frame; False (and counted) if the port is gone, never an exception."""
        frame = self._encoder.encode(message)
        with self._write_lock:
            try:
                if self._port is None or not self._port.is_open:
                    raise serial.SerialException("port not open")
                self._port.write(frame)
                return True
            except (serial.SerialException, OSError) as exc:
                self.write_errors += 1
                log.warning("%s: write failed: %s", self.name, exc)
                return False

    def _open_port(self) -> serial.SerialBase:
        return serial.serial_for_url(
            self.url, baudrate=self.baudrate, timeout=self._read_timeout_s, write_timeout=1.0
        )

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                port = self._port
                if port is None or not port.is_open:
                    raise serial.SerialException("port closed")
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                # pyserial raises TypeError from read() when the fd vanished under it.
                if self._stop.is_set():
                    return
                log.warning("%s: read failed (%s); reconnecting", self.name, exc)
                if self._on_event:
                    self._on_event("disconnect", time.monotonic())
                self._reconnect()
                continue
            if not data:
                continue
            now = time.monotonic()
            if self._on_bytes:
                self._on_bytes(data, now)
            for message in self.parser.feed(data):
                self._put(Received(self.name, message, now))

    def _reconnect(self) -> None:
        with self._write_lock:
            if self._port is not None:
                try:
                    self._port.close()
                except (serial.SerialException, OSError):
                    pass
                self._port = None
        while not self._stop.wait(self._reconnect_s):
            try:
                port = self._open_port()
            except (serial.SerialException, OSError):
                continue
            with self._write_lock:
                self._port = port
            self.reconnects += 1
            log.info("%s: reconnected to %s", self.name, self.url)
            if self._on_event:
                self._on_event("reconnect", time.monotonic())
            return

    def _put(self, item: Received) -> None:
        while True:
            try:
                self.inbox.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.inbox.get_nowait()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("%s: inbox full, dropped the oldest message (%d so far)", self.name, self.dropped)
                except queue.Empty:
                    pass
