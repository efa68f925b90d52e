"""The device end of a pseudo-terminal, for simulators.

A simulator holds the master side; the runtime opens :attr:`PtyDevice.port` with pyserial
exactly as it opens a USB serial adapter. With ``link``, the port is a stable symlink to the
current ``/dev/pts/N`` (as udev's ``/dev/serial/by-id/...`` names are), so a device can
disconnect and come back as a new pseudo-terminal under the same name.

The device keeps no slave descriptor of its own, so the master sees a hang-up (``POLLHUP``)
exactly while no runtime has the port open. That matters because pyserial flushes the input
when it opens a port: bytes written before the runtime has (re)opened it are lost, as they would
be on a real wire, and so are bytes written after its ``open()`` but before its flush. The master
runs in packet mode (``TIOCPKT``), so the kernel reports that flush to the device, and
:meth:`PtyDevice.wait_reader` waits for it: only then does what the device writes reach the
runtime.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import struct
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
        self._read_lock = threading.Lock()  # one reader of the master at a time
        self._pending = bytearray()  # runtime's bytes read while waiting for its flush
        self._closed = True
        self._open()

    def _open(self) -> None:
        self._master, slave = os.openpty()
        # Raw mode before anyone opens the port: no echo, no CR/LF translation, no signals.
        # The settings outlive this descriptor: they belong to the pseudo-terminal.
        tty.setraw(slave)
        self._tty = os.ttyname(slave)
        os.close(slave)
        # Packet mode (after setraw's own flush): each read of the master starts with a status
        # byte, so the runtime's flush of its input (pyserial's, at the end of its open) is seen.
        fcntl.ioctl(self._master, termios.TIOCPKT, struct.pack("i", 1))
        self._flushed = False
        self._pending.clear()
        self._closed = False
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._tty)
            tmp.replace(self.link)  # atomic: the name always points somewhere or nowhere new

    @property
    def port(self) -> str:
        return str(self.link) if self.link is not None else self._tty

    @property
    def connected(self) -> bool:
        return not self._closed

    def _reader_open(self) -> bool:
        poll = select.poll()
        poll.register(self._master, select.POLLHUP)
        return not any(event & select.POLLHUP for _, event in poll.poll(0))

    def reader_open(self) -> bool:
        """Whether a runtime has the port open now."""
        with self._lock:
            if self._closed:
                return False
            if not self._reader_open():
                self._flushed = False  # the next open flushes again
                return False
            return True

    def reader_ready(self) -> bool:
        """Whether a runtime has the port open and has flushed its input since it opened it (as
        pyserial does at the end of its open): bytes written now reach it. A reopen of the same
        pseudo-terminal is seen if the device looked while the port was closed (any call of this,
        :meth:`reader_open` or :meth:`receive`); a replug is always seen."""
        if not self.reader_open():
            return False
        if not self._flushed:
            self._read_master()
        return self._flushed

    def wait_reader(self, timeout_s: float) -> bool:
        """Wait until a runtime has the port open and flushed (:meth:`reader_ready`); False if
        none has within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.reader_ready():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def _read_master(self, timeout_s: float = 0.0) -> None:
        """Read what the master has, waiting up to ``timeout_s`` for it: the runtime's bytes go to
        the pending buffer, a packet-mode status byte is checked for the runtime's flush of its input."""
        if not self._readable(timeout_s):  # waits outside the lock
            return
        with self._read_lock:
            if self._closed or not self._readable(0.0):  # another reader may have taken it
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:  # closed under us, or the slave side hung up
                return
            if not data:
                return
            if data[0] == termios.TIOCPKT_DATA:
                self._pending += data[1:]
            elif data[0] & termios.TIOCPKT_FLUSHREAD:
                self._flushed = True

    def _readable(self, timeout_s: float) -> bool:
        """Whether the master has the runtime's bytes or a status byte to read, waiting up to
        ``timeout_s`` (a hang-up alone is not)."""
        try:
            poll = select.poll()
            poll.register(self._master, select.POLLIN | select.POLLPRI)
            events = poll.poll(timeout_s * 1000)
        except (OSError, ValueError):  # closed under us
            return False
        return bool(events) and bool(events[0][1] & (select.POLLIN | select.POLLPRI))

    def unread(self) -> int:
        """Bytes written to the wire that the runtime has not read yet (0 when unplugged, or
        when no runtime has the port open: it would flush them when it opens it)."""
        with self._lock:
            if self._closed or not self._reader_open():
                return 0
            # The count needs a slave descriptor; the runtime's keeps the terminal alive meanwhile.
            try:
                slave = os.open(self._tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                return 0
            try:
                count = array.array("i", [0])
                fcntl.ioctl(slave, termios.FIONREAD, count)
                return count[0]
            finally:
                os.close(slave)

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
        if not self._pending:
            if not self.reader_open():  # no runtime has the port open: nothing to read
                time.sleep(timeout_s)
                return []
            self._read_master(timeout_s)
        with self._read_lock:
            data, self._pending = bytes(self._pending), bytearray()
        return self.parser.feed(data)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._master)

    def __enter__(self) -> PtyDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
