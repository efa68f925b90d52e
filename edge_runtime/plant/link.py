"""The plant link: the one result sink a station hands each item's record to, fanned out to the
MQTT publisher and the OPC UA server, each on threads of its own. Nothing here can delay a gate
command: ``result`` stamps the record and appends it to bounded queues, and returns."""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from sortline.edge_runtime.station.loop import Station

from .line import DriftAlarms, StationLine
from .messages import PlantResult
from .mqtt import MqttLink, MqttSettings
from .opcua import OpcUaServer, OpcUaSettings
from .users import hash_password

log = logging.getLogger(__name__)


class Plant:
    def __init__(self, mqtt: MqttSettings | None = None, opcua: OpcUaSettings | None = None,
                 simulated: bool = False) -> None:
        self.mqtt = MqttLink(mqtt) if mqtt is not None else None
        self.opcua = OpcUaServer(opcua) if opcua is not None else None
        self.simulated = simulated  # results carry IsSimulated (the demo's line)
        self.line: StationLine | None = None
        self._seq = itertools.count(1)
        self.errors = 0

    def __bool__(self) -> bool:
        return self.mqtt is not None or self.opcua is not None

    def result(self, record: dict) -> None:
        """On the station's loop, right after the item's gate command."""
        try:
            result = PlantResult.of(record, next(self._seq), time.time(), self.simulated)
        except (KeyError, TypeError, ValueError):
            self.errors += 1  # a record the station should never write; counted, never raised into the loop
            return
        if self.mqtt is not None:
            self.mqtt.offer(result)
        if self.opcua is not None:
            self.opcua.offer(result)

    def attach(self, station: Station, drift: DriftAlarms | None = None) -> Plant:
        """Commands act on ``station``; stats and alarms come from it (and ``drift``'s alarms)."""
        self.line = StationLine(station, drift)
        for side in (self.mqtt, self.opcua):
            if side is not None:
                side.line = self.line
        return self

    def start(self) -> Plant:
        if self.opcua is not None:
            self.opcua.start()
        if self.mqtt is not None:
            self.mqtt.start()
        return self

    def stop(self) -> None:
        """After the station has stopped: what is queued is sent (or spooled for the next run)."""
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.opcua is not None:
            self.opcua.stop()

    def summary(self) -> dict:
        out: dict = {}
        if self.mqtt is not None:
            out["mqtt"] = self.mqtt.status()
        if self.opcua is not None:
            out["opcua"] = self.opcua.status()
        return out


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
