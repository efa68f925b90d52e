"""The device end of a pseudo-terminal, for simulators.

A simulator holds the master side; the runtime opens :attr:`PtyDevice.port` (``/dev/pts/N``)
with pyserial exactly as it opens a USB serial adapter.
"""

from __future__ import annotations

import os
import select
import threading
import tty

from .protocol import Encoder, Message, Parser


class PtyDevice:
    """A simulated serial device: frames out through the master fd, parsed frames in."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw mode before anyone opens the port: no echo, no CR/LF translation, no signals.
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.parser = Parser()
        self._encoder = Encoder()
        self._lock = threading.Lock()
        self._closed = False

    def send(self, message: Message) -> None:
        self.write(self._encoder.encode(message))

    def write(self, data: bytes) -> None:
        """Raw bytes onto the wire (fault injection writes garbage through here)."""
        with self._lock:
            if self._closed:
                return
            view = memoryview(data)
            while view:
                written = os.write(self._master, view)
                view = view[written:]

    def receive(self, timeout_s: float) -> list[Message]:
        """Messages the runtime wrote, waiting up to ``timeout_s`` for the first bytes."""
        if self._closed:
            return []
        try:
            ready, _, _ = select.select([self._master], [], [], timeout_s)
            if not ready:
                return []
            data = os.read(self._master, 4096)
        except OSError:  # closed under us, or the slave side hung up
            return []
        return self.parser.feed(data)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._master)
            os.close(self._slave)

    def __enter__(self) -> PtyDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
