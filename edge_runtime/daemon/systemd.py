"""systemd's notify protocol (``sd_notify``), without libsystemd: ``Type=notify`` units learn
when the station is ready, and ``WatchdogSec=`` restarts one whose loop has stopped moving.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(0.1)  # a listener that does not read must not stall the station
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notify %r failed: %s", message.split("\n")[0], exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1 (half systemd's timeout), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None
