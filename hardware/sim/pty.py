"""The device end of a pseudo-terminal, for simulators.

A simulator holds the master side; the runtime opens :attr:`PtyDevice.port` with pyserial
exactly as it opens a USB serial adapter. With ``link``, the port is a stable symlink to the
current ``/dev/pts/N`` (as udev's ``/dev/serial/by-id/...`` names are), so a device can
disconnect and come back as a new pseudo-terminal under the same name.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import termios
import threading
import time
import tty
from pathlib import Path

from ..protocol import Encoder, Message, Parser


class PtyDevice:
    """A simulated serial device: frames out through the master fd, parsed frames in."""

    def __init__(self, link: Path | None = None) -> None:
        self.link = Path(link) if link else None
        self.parser = Parser()
        self.encoder = Encoder()  # the device's own frame counter
        self._lock = threading.Lock()
        self._closed = True
        self._open()

    def _open(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw mode before anyone opens the port: no echo, no CR/LF translation, no signals.
        tty.setraw(self._slave)
        self._closed = False
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(os.ttyname(self._slave))
            tmp.replace(self.link)  # atomic: the name always points somewhere or nowhere new

    @property
    def port(self) -> str:
        return str(self.link) if self.link is not None else os.ttyname(self._slave)

    @property
    def connected(self) -> bool:
        return not self._closed

    def unread(self) -> int:
        """Bytes written to the wire that the runtime has not read yet (0 when unplugged)."""
        with self._lock:
            if self._closed:
                return 0
            count = array.array("i", [0])
            fcntl.ioctl(self._slave, termios.FIONREAD, count)
            return count[0]

    def drain(self, timeout_s: float) -> bool:
        """Wait until the runtime has read everything written (a device goes quiet before it is
        unplugged); False if it has not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.unread() and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.unread() == 0

    def disconnect(self) -> None:
        """Unplug: the runtime's reads fail until :meth:`reconnect`."""
        self.close()
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    def reconnect(self) -> None:
        """Plug back in, as a new pseudo-terminal under the same link."""
        with self._lock:
            if not self._closed:
                return
            self._open()

    def send(self, message: Message) -> None:
        self.write(self.encoder.encode(message))

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
