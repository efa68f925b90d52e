"""The plant link in a process of its own.

The station's process hands each record over in a few microseconds: :meth:`Plant.result` appends
it to a bounded deque on the loop; a thread sends what gathered every ``TICK_S`` down a pipe (the
write releases the GIL). The MQTT publisher and the OPC UA server run in the child
(:class:`~.link.PlantSides`), at a lower priority (``nice`` +10): JSON, paho and asyncua take
their CPU there, when the station's process does not need it, never from the interpreter that
decides items. (Publishing costs about a tenth of a core at 300 results/s; at that rate a 2-core
station is three quarters busy with its own work: benchmarks/results/plant_mqtt.md.)

Commands the child takes (MQTT ``cmd/*``, OPC UA ``Halt``…) come back up the pipe and are
applied to the station here; the station's counters, state and alarms go down every second. If
the child dies it is started again (every ``RESTART_S`` at most), and what it held is counted lost.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.station.loop import Station

from .line import DriftAlarms, StationLine, change
from .messages import LaneCommand
from .mqtt import MqttSettings
from .opcua import OpcUaSettings
from .users import hash_password

log = logging.getLogger(__name__)
TICK_S = 0.01
SNAPSHOT_S = 1.0  # the station's counters and alarms go to the child this often
MAX_WAITING = 100_000  # records waiting for the pipe; past it they are counted lost
RESTART_S = 5.0
NICE = 10  # the child yields the CPU to the station's process whenever both want it
START_TIMEOUT_S = 60.0


class PlantError(SortlineError, RuntimeError):
    """The plant link cannot start (a port in use, a certificate that does not load, …)."""


class Plant:
    """The station's one result sink for the plant network (MQTT, OPC UA): ``result`` on the loop,
    ``attach`` to the station, ``start``, ``stop`` after the station, ``summary`` any time."""

    def __init__(self, mqtt: MqttSettings | None = None, opcua: OpcUaSettings | None = None,
                 simulated: bool = False) -> None:
        self.mqtt_settings, self.opcua_settings, self.simulated = mqtt, opcua, simulated
        self.line: StationLine | None = None
        self.lost = 0  # records the station handed over that never reached the child
        self._waiting: deque[tuple[dict, float]] = deque()
        self._status: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child = self._conn = None
        self._send = threading.Lock()

    def __bool__(self) -> bool:
        return self.mqtt_settings is not None or self.opcua_settings is not None

    def result(self, record: dict) -> None:
        """On the station's loop, right after the item's gate command: never blocks."""
        if len(self._waiting) >= MAX_WAITING:
            self.lost += 1
        else:
            self._waiting.append((record, time.time()))

    def attach(self, station: Station, drift: DriftAlarms | None = None) -> Plant:
        """Commands act on ``station``; stats and alarms come from it (and ``drift``'s alarms)."""
        self.line = StationLine(station, drift)
        return self

    def start(self) -> Plant:
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="plant", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self._child = ctx.Process(target=child_main, name="sortline-plant", daemon=True,
                                  args=(child_end, self.mqtt_settings, self.opcua_settings, self.simulated))
        self._child.start()
        child_end.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._child.terminate()
            raise PlantError("the plant link's process did not start")
        kind, body = self._conn.recv()
        if kind == "error":
            self._child.join(5)
            raise PlantError(f"the plant link did not start: {body}")
        self._status = body

    def _run(self) -> None:
        next_snapshot = restart_at = time.monotonic()
        while not self._stop.is_set():
            time.sleep(TICK_S)
            now = time.monotonic()
            try:
                if not self._child.is_alive():
                    if now >= restart_at:
                        restart_at = now + RESTART_S
                        self._restart()
                    continue
                self._flush(now >= next_snapshot)
                if now >= next_snapshot:
                    next_snapshot = now + SNAPSHOT_S
                self._take_messages()
            except (OSError, EOFError, ValueError):
                log.exception("the plant link's pipe")
            except Exception:  # commands applied here must never end the thread
                log.exception("the plant link")

    def _flush(self, snapshot: bool) -> None:
        batch = [self._waiting.popleft() for _ in range(len(self._waiting))]
        if batch:
            with self._send:
                self._conn.send(("results", batch))
        if snapshot and self.line is not None:
            with self._send:
                self._conn.send(("station", {"stats": self.line.stats(), "alarms": self.line.new_alarms()}))

    def _take_messages(self) -> None:
        while self._conn.poll():
            kind, body = self._conn.recv()
            if kind == "status":
                self._status = body
            elif kind == "command" and self.line is not None:
                self.line.apply(LaneCommand(body["action"], body["lane"]), body["source"])

    def _restart(self) -> None:
        held = self._status.get("mqtt", {}).get("waiting", 0)
        self.lost += held
        log.error("the plant link's process died (exit code %s); starting it again (%d results it held are "
                  "lost; its spool is kept)", self._child.exitcode, held)
        try:
            self._spawn()
        except (PlantError, OSError, EOFError) as exc:
            log.error("the plant link cannot be started again: %s", exc)

    def stop(self, timeout_s: float = 20.0) -> None:
        """After the station has stopped: the last records go down, the child sends or spools what
        it holds, says goodbye (MQTT ``offline``) and reports what it did."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._child is None or not self._child.is_alive():
            return
        try:
            self._flush(snapshot=self.line is not None)
            with self._send:
                self._conn.send(("stop", None))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._conn.poll(max(0.0, deadline - time.monotonic())):
                kind, body = self._conn.recv()
                if kind in ("status", "summary"):
                    self._status = body
                if kind == "summary":
                    break
        except (OSError, EOFError):
            log.error("the plant link's process ended before its summary")
        self._child.join(5)
        if self._child.is_alive():
            self._child.terminate()

    def summary(self) -> dict:
        out = dict(self._status)
        if self.lost:
            out["lost_before_the_link"] = self.lost
        return out


class MirroredLine:
    """The station as the child sees it (a :class:`~.line.Line`): commands go up the pipe, and
    what they did is mirrored here at once; counters and alarms come down every second."""

    def __init__(self, conn, lock: threading.Lock) -> None:
        self.conn, self.lock = conn, lock
        self._stats: dict = {}
        self._alarms: list[dict] = []
        self._halted, self._paused = False, set()

    def update(self, body: dict) -> None:
        self._stats = body["stats"]
        self._halted, self._paused = body["stats"].get("halted", False), set(body["stats"].get("paused_lanes", ()))
        self._alarms.extend(body["alarms"])

    def apply(self, command: LaneCommand, source: str) -> dict:
        with self.lock:
            self.conn.send(("command", {"action": command.action, "lane": command.lane, "source": source}))
        self._halted = change(command, self._halted, self._paused)
        return self.state()

    def state(self) -> dict:
        return {"halted": self._halted, "paused_lanes": sorted(self._paused)}

    def stats(self) -> dict:
        return {**self._stats, **self.state()}

    def new_alarms(self) -> list[dict]:
        alarms, self._alarms = self._alarms, []
        return alarms


def child_main(conn, mqtt: MqttSettings | None, opcua: OpcUaSettings | None, simulated: bool) -> None:
    """The plant link's process: the sides started, then records, snapshots and the stop taken
    from the pipe; its status sent up every ``SNAPSHOT_S / 4``."""
    from .link import PlantSides

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its sessions and subscriptions, at INFO, every one
    try:
        os.nice(NICE)  # off the decision path: under load the station's process gets the CPU first
    except OSError:
        pass
    lock = threading.Lock()
    line = MirroredLine(conn, lock)
    sides = PlantSides(mqtt, opcua, simulated).attach(line)
    try:
        sides.start()
    except Exception as exc:  # a port in use, a certificate that does not load: said to the parent
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", sides.summary()))
    next_status = 0.0
    while True:
        if conn.poll(0.05):
            try:
                kind, body = conn.recv()
            except EOFError:  # the station's process is gone
                break
            if kind == "results":
                for record, at in body:
                    sides.result(record, at)
            elif kind == "station":
                line.update(body)
            elif kind == "stop":
                break
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + SNAPSHOT_S / 4
            with lock:
                conn.send(("status", sides.summary()))
    sides.stop()
    with lock:
        conn.send(("summary", sides.summary()))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def local_plant(mqtt_url: str | None, opcua_endpoint: str | None, spool: Path | None, name: str = "demo",
                simulated: bool = True) -> Plant | None:
    """The plant link of a demo or replay run: results under ``sortline/<name>`` on the broker at
    ``mqtt_url``; an OPC UA server on a loopback ``opcua_endpoint`` that anyone on this machine may
    read without credentials (unencrypted), and that takes method calls from the user
    ``operator`` when SORTLINE_OPCUA_PASSWORD is set. A station file's ``[opcua]`` is the way to
    serve beyond this machine."""
    mqtt = opcua = None
    if mqtt_url is not None:
        mqtt = MqttSettings(url=mqtt_url, prefix=f"sortline/{name}", client_id=f"sortline-{name}-{os.getpid()}",
                            spool=spool, stats_every_s=2.0)
    if opcua_endpoint is not None:
        if urlsplit(opcua_endpoint).hostname not in LOOPBACK:
            raise ValueError(f"{opcua_endpoint}: a run's OPC UA server listens on this machine only (127.0.0.1); "
                             "serve it further with [opcua] in a station file")
        password = os.environ.get("SORTLINE_OPCUA_PASSWORD")
        opcua = OpcUaSettings(endpoint=opcua_endpoint, name=f"sortline {name}", allow_anonymous=True,
                              allow_unencrypted=True, users={"operator": hash_password(password)} if password else {})
        log.warning("OPC UA on %s: anonymous reading, unencrypted (this machine only)%s", opcua_endpoint,
                    "; user 'operator' may call methods" if password else
                    "; set SORTLINE_OPCUA_PASSWORD for a user 'operator' who may call Halt and the others")
    return Plant(mqtt, opcua, simulated=simulated) if mqtt or opcua else None
