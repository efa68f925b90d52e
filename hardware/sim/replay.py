"""Replaying a recording to a station: its devices on pseudo-terminals, its frames from disk,
refereed as the simulated line is (the recording format: ``docs/recording.md``)."""

from __future__ import annotations

import logging
import math
import queue
import shutil
import threading
import time
from collections import deque

from ..files import private_tempdir
from ..protocol import Ack, GateCommand
from ..recording import RecordedRig, Recording
from .line import QUIET_S, REOPEN_S, REOPEN_WAIT_S  # replay mirrors how the recorded devices behaved
from .pty import PtyDevice
from .referee import GateReferee, LineTally

log = logging.getLogger(__name__)

MAX_LAG_S = 0.05  # at speed=max, how far an item may be played behind the replay's lead
DRAIN_S = 5.0  # at speed=max, the longest wait for the station to read a device's last bytes before its unplug
# (it returns as soon as they are read; 1 s was too short for a station on 2 loaded cores, whose unread
# frames then counted as dropped beyond those injected)
SETTLE_S = 0.15  # at speed=max, recorded time after which an item's readings have all been played


class ReplayedLine:
    """A recording played back to a station through pseudo-terminals, refereed by a controller
    emulator that acknowledges gate commands (except in the recorded silences).

    ``speed="realtime"`` keeps the recorded timing. ``speed="max"`` plays each announcement as
    soon as the items announced ``SETTLE_S`` (recorded) before it have their gate commands, so a
    run takes as long as the station needs; but never more than ``MAX_LAG_S`` behind the recorded spacing (the
    station judges deadlines on the recorded device clocks), and an unplugged device waits out
    its outage on its own while the others play on.
    """

    def __init__(self, recording: Recording, speed: str = "realtime") -> None:
        if speed not in ("realtime", "max"):
            raise ValueError("speed is realtime or max")
        self.recording = recording
        self.speed = speed
        self.meta = recording.meta
        self._links = private_tempdir("replay")  # swept by the next start when this process is killed
        self.devices = {d: PtyDevice(self._links / d) for d in self.meta["devices"]}
        self.controller = self.devices[self.meta["devices"][0]]
        # The item sensor: named in the metadata, or the one device beside the controller.
        self.sensor = self.meta.get("sensor") or (self.meta["devices"][1:] or ["none"])[0]
        self.rig = RecordedRig(recording)
        self.referee = GateReferee()
        self._truth = {row["item_id"]: row for row in recording.truth}
        self._stop = threading.Event()
        self._end_early = threading.Event()
        self._played = threading.Event()
        self._threads: list[threading.Thread] = []

    def port(self, device: str) -> str:
        return self.devices[device].port

    @property
    def item_ids(self) -> list[int]:
        return sorted(self._truth)

    @property
    def announced(self) -> int:
        return self.referee.announced

    def truth(self, item_id: int) -> int | None:
        return self._truth[item_id].get("label")

    def start(self) -> ReplayedLine:
        for target, name in ((self._play, "replay-play"), (self._referee, "replay-gates")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wait_announced(self, timeout_s: float) -> bool:
        return self._played.wait(timeout_s)

    def wait(self, grace_s: float = 0.5) -> LineTally:
        duration = float(self.meta.get("duration_s", 60))
        if not self._played.wait(duration * 2 + 60):
            raise TimeoutError("the replay did not finish in time")
        time.sleep(float(self.meta.get("deadline_ms", 300)) / 1000 + grace_s)
        return self.referee.tally(dict(self.meta.get("injected", {})))

    def end_early(self) -> None:
        """Play no item after this moment; the items already played finish (their bytes up to
        a deadline later in the recording)."""
        self._end_early.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for device in self.devices.values():
            device.close()
        shutil.rmtree(self._links, ignore_errors=True)

    def _timeline(self) -> list[tuple[float, int, str, object]]:
        """Everything to do, in recorded time: bytes, plug events, items passing, silences."""
        entries: list[tuple[float, int, str, object]] = []
        for device in self.meta["devices"]:
            for e in self.recording.serial_entries(device):
                kind = "bytes" if "data" in e else e["event"]
                entries.append((e["t"], len(entries), kind, (device, e.get("data"))))
        for row in self.recording.truth:
            if row.get("announced_t") is not None:
                entries.append((row["announced_t"], len(entries), "item", row["item_id"]))
        for t in self.meta.get("silences", []):
            entries.append((t, len(entries), "silence", None))
        return sorted(entries)  # ties keep file order: the index is unique

    def _play(self) -> None:
        # Chunks were logged as read, so one may end inside a frame. Writing only up to the
        # last frame end (holding the tail for the next chunk) keeps the byte sequence exact and
        # leaves no gap in which the emulator's ACK could land inside another frame.
        partial = {device: bytearray() for device in self.devices}
        start = time.monotonic() + 0.2
        lines = {device: _DeviceLine(device) for device in self.devices}  # each device's writes, in order
        unplugged: dict[str, tuple[float, float]] = {}  # device -> (recorded, played) time of its unplug
        in_flight: deque[tuple[float, int]] = deque()  # (recorded time, item) played, not yet waited on
        lead = math.inf  # the least (played - recorded) time of any item so far (speed=max)
        deadline_s = float(self.meta.get("deadline_ms", 300)) / 1000
        halt_at = math.inf  # end_early: recorded time past which nothing is played
        for t, _, kind, payload in self._timeline():
            if self._stop.is_set():
                return
            if self._end_early.is_set() and halt_at == math.inf:
                halt_at = t + deadline_s + 1.0
            if t > halt_at:
                break
            if self.speed == "realtime":
                delay = start + t - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            elif kind == "item":  # the next item waits for the station, not for the clock
                    # Wait for the items announced SETTLE_S (recorded) before this one: their
                    # readings have all been played, and a lost announcement among them has been
                    # revealed by the ones after it. And never fall more than MAX_LAG_S behind
                    # the lead the replay has built: the station reads the recorded device
                    # clocks, so an item played later than its recorded spacing would reach it
                    # already late.
                    while in_flight and in_flight[0][0] <= t - SETTLE_S:
                        if self.referee.decided(in_flight[0][1]) or time.monotonic() - t >= lead + MAX_LAG_S:
                            in_flight.popleft()
                        else:
                            time.sleep(0.0005)
                    lead = min(lead, time.monotonic() - t)
                    in_flight.append((t, payload))
            now = time.monotonic()
            if kind == "bytes":
                device, data = payload
                buffer = partial[device]
                buffer += data
                end = buffer.rfind(b"\n")
                if end >= 0:
                    lines[device].submit(0.0, self.devices[device].write, bytes(buffer[: end + 1]))
                    del buffer[: end + 1]
            elif kind == "disconnect":
                device = payload[0]
                partial[device].clear()  # what was in flight when the cable went is gone
                # At speed=max only this device waits out its outage; the others play on.
                unplug_at = now + QUIET_S if self.speed == "max" else now  # its last bytes get read
                unplugged[device] = (t, unplug_at)
                if self.speed == "max":  # the station reads slower than a replay writes: let it
                    lines[device].submit(unplug_at, _drain, self.devices[device], device)
                lines[device].submit(unplug_at, self.devices[device].disconnect)
            elif kind == "reconnect":
                device = payload[0]
                recorded_t, unplug_at = unplugged.pop(device, (t, now))
                replug_at = unplug_at + (t - recorded_t) if self.speed == "max" else now  # outages keep their length
                lines[device].submit(replug_at, self.devices[device].reconnect)
                # The recorded device waited for the station to reopen the port (pyserial flushes
                # its input on open); a loaded station may take longer than it did then. Its later
                # bytes queue behind this wait.
                lines[device].submit(replug_at + REOPEN_S, _wait_reader, self.devices[device], device, inline=False)
            elif kind == "item":
                self.referee.announce(payload, now, deadline_s)
            elif kind == "silence":
                self.referee.silence(now, float(self.meta.get("silence_ms", 0)) / 1000)
        for device, rest in partial.items():  # a stream may end inside a frame
            if rest:
                lines[device].submit(0.0, self.devices[device].write, bytes(rest))
        for line in lines.values():
            line.close()
        self._played.set()

    def _referee(self) -> None:
        while not self._stop.is_set():
            for message in self.controller.receive(timeout_s=0.05):
                if isinstance(message, GateCommand) and self.referee.receive(message, time.monotonic()):
                    self.controller.send(Ack(item_id=message.item_id))


def _drain(device: PtyDevice, name: str) -> None:
    if not device.drain(DRAIN_S):
        log.warning("replay: the station left %d bytes of the %s port unread for %.1f s; they are lost with "
                    "its unplug", device.unread(), name, DRAIN_S)


def _wait_reader(device: PtyDevice, name: str) -> None:
    if not device.wait_reader(REOPEN_WAIT_S):
        log.warning("replay: the station has not reopened the %s port in %.1f s; its bytes go out anyway",
                    name, REOPEN_S + REOPEN_WAIT_S)


class _DeviceLine:
    """One replayed device's actions (writes, unplug, replug), each no earlier than its time and
    in the order given; an action that is due and has nothing queued before it runs at once."""

    def __init__(self, name: str) -> None:
        self._actions: queue.Queue = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"replay-{name}", daemon=True)
        self._thread.start()

    def submit(self, not_before: float, action, *args, inline: bool = True) -> None:
        """Queue ``action(*args)``; with ``inline``, run it here and now if it is due and
        nothing is queued before it (an action that may block is never run inline)."""
        with self._lock:
            if inline and self._queued == 0 and time.monotonic() >= not_before:
                action(*args)
                return
            self._queued += 1
        self._actions.put((not_before, action, args))

    def close(self) -> None:
        """Wait for every queued action, then end the thread."""
        self._actions.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (entry := self._actions.get()) is not None:
            not_before, action, args = entry
            time.sleep(max(0.0, not_before - time.monotonic()))
            with self._lock:
                action(*args)
                self._queued -= 1
