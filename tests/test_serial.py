"""The serial link over real pseudo-terminals and pyserial URL handlers."""

from __future__ import annotations

import os
import queue
import termios
import time

import serial

from sortline.hardware.protocol import Ack, Encoder, GateCommand, ItemArrival
from sortline.hardware.serial_link import SerialLink
from sortline.hardware.sim.pty import PtyDevice


def _drain(link: SerialLink, n: int, timeout_s: float = 3.0) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        try:
            out.append(link.inbox.get(timeout=0.05).message)
        except queue.Empty:
            pass
    return out


def test_messages_cross_a_real_pty_both_ways():
    with PtyDevice() as device, SerialLink(device.port, "controller") as link:
        arrivals = [ItemArrival(item_id=i, lane=0, t_ms=i, deadline_ms=300) for i in range(20)]
        for a in arrivals:
            device.send(a)
        assert _drain(link, 20) == arrivals
        assert link.send(GateCommand(item_id=3, exit=2))
        got, deadline = [], time.monotonic() + 3
        while not got and time.monotonic() < deadline:
            got = device.receive(0.1)
        assert got == [GateCommand(item_id=3, exit=2)]


def test_garbage_on_the_wire_is_counted_and_skipped():
    with PtyDevice() as device, SerialLink(device.port, "taps") as link:
        device.write(b"\x00\x13garbage$1,5,ACK,1*0000\n")  # noise, then a frame with a bad CRC
        device.send(Ack(item_id=7))
        assert _drain(link, 1) == [Ack(item_id=7)]
        assert link.stats.garbage_bytes == 9
        assert link.stats.bad_crc == 1


def test_same_driver_runs_on_pyserial_loop_url():
    with SerialLink("loop://", "loop") as link:
        link.send(GateCommand(item_id=1, exit=1))
        assert _drain(link, 1) == [GateCommand(item_id=1, exit=1)]


def test_full_inbox_drops_oldest_and_counts():
    inbox: queue.Queue = queue.Queue(maxsize=5)
    with PtyDevice() as device, SerialLink(device.port, "c", inbox=inbox) as link:
        for i in range(12):
            device.send(Ack(item_id=i))
        deadline = time.monotonic() + 3
        while link.stats.frames < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.dropped == 7
        assert [inbox.get_nowait().message.item_id for _ in range(5)] == [7, 8, 9, 10, 11]


def test_write_to_a_closed_port_reports_false():
    link = SerialLink("loop://", "x").open()
    link.close()
    assert link.send(Ack(item_id=1)) is False
    assert link.write_errors == 1


def test_link_reconnects_when_the_device_comes_back(tmp_path):
    device = PtyDevice(link=tmp_path / "tap-sensor")
    link = SerialLink(device.port, "taps", reconnect_s=0.05).open()
    try:
        device.send(Ack(item_id=1))
        assert _drain(link, 1) == [Ack(item_id=1)]
        device.disconnect()
        time.sleep(0.3)  # the reader notices and keeps trying the same name
        device.reconnect()
        deadline = time.monotonic() + 5
        while link.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.reconnects == 1
        device.send(Ack(item_id=2))
        assert _drain(link, 1) == [Ack(item_id=2)]
        assert link.send(GateCommand(item_id=2, exit=1))  # writing works again too
    finally:
        link.close()
        device.close()


def test_a_device_waits_for_the_runtimes_flush_not_just_its_open(tmp_path):
    """pyserial flushes the input at the end of its open: bytes a device writes between the
    runtime's open() and that flush are lost, so a device is only ready for it after the flush."""
    device = PtyDevice(link=tmp_path / "sensor")
    fd = os.open(device.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)  # opened, not yet flushed
    try:
        assert device.reader_open() and not device.reader_ready() and not device.wait_reader(0.05)
        command = GateCommand(item_id=7, exit=1)
        os.write(fd, Encoder().encode(command))  # the runtime talks before its flush
        assert not device.wait_reader(0.05)  # (which reads the master)
        termios.tcflush(fd, termios.TCIFLUSH)  # what pyserial's open does last
        assert device.wait_reader(1.0) and device.reader_ready()
        assert device.receive(1.0) == [command]  # the runtime's bytes read while waiting are kept
        device.send(Ack(item_id=1))
        deadline = time.monotonic() + 2
        while device.unread() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert device.unread() > 0  # what is written now stays for the runtime to read
        os.close(fd)
        assert not device.reader_open() and not device.reader_ready()  # closed: the next open flushes again
        fd = os.open(device.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        assert device.reader_open() and not device.reader_ready()
    finally:
        os.close(fd)
        device.close()


def test_a_device_knows_when_the_runtime_has_its_port_open_and_what_it_has_not_read(tmp_path):
    device = PtyDevice(link=tmp_path / "scale")
    try:
        assert not device.reader_open() and not device.wait_reader(0.05)
        assert device.receive(timeout_s=0.05) == []  # no reader: waits out the timeout, no error
        device.send(Ack(item_id=1))  # before the open: pyserial flushes it, as on a real wire
        assert device.unread() == 0
        with serial.serial_for_url(device.port, timeout=1.0) as port:  # open, not reading yet
            assert device.wait_reader(2.0) and port.in_waiting == 0  # flushed on open
            device.send(Ack(item_id=2))
            deadline = time.monotonic() + 2
            while device.unread() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            pending = device.unread()
            assert pending > 0 and port.read(pending) and device.unread() == 0
        assert not device.reader_open()
        link = SerialLink(device.port, "scale", reconnect_s=0.05).open()
        try:
            assert device.wait_reader(2.0)
            device.send(Ack(item_id=3))
            assert _drain(link, 1) == [Ack(item_id=3)]
            assert device.drain(2.0) and device.unread() == 0
        finally:
            link.close()
        assert not device.reader_open()
        device.disconnect()
        assert not device.reader_open() and device.unread() == 0
    finally:
        device.close()
