"""What runs in the plant link's process: each record fanned out to the MQTT publisher and the
OPC UA server, each on threads of its own."""

from __future__ import annotations

import itertools
import logging

from .line import Line
from .messages import PlantResult
from .mqtt import MqttLink, MqttSettings
from .opcua import OpcUaServer, OpcUaSettings

log = logging.getLogger(__name__)


class PlantSides:
    """The MQTT publisher and the OPC UA server, fed the station's records: what runs in the
    plant link's own process (:class:`~.process.Plant`). ``line`` is what their commands act on
    and their stats and alarms come from."""

    def __init__(self, mqtt: MqttSettings | None = None, opcua: OpcUaSettings | None = None,
                 simulated: bool = False) -> None:
        self.mqtt = MqttLink(mqtt) if mqtt is not None else None
        self.opcua = OpcUaServer(opcua) if opcua is not None else None
        self.simulated = simulated  # results carry IsSimulated (the demo's line)
        self._seq = itertools.count(1)
        self.errors = 0

    def result(self, record: dict, at: float) -> None:
        try:
            result = PlantResult.of(record, next(self._seq), at, self.simulated)
        except (KeyError, TypeError, ValueError):
            self.errors += 1  # a record the station should never write; counted
            return
        if self.mqtt is not None:
            self.mqtt.offer(result)
        if self.opcua is not None:
            self.opcua.offer(result)

    def attach(self, line: Line) -> PlantSides:
        for side in (self.mqtt, self.opcua):
            if side is not None:
                side.line = line
        return self

    def start(self) -> PlantSides:
        if self.opcua is not None:
            self.opcua.start()
        if self.mqtt is not None:
            self.mqtt.start()
        return self

    def stop(self) -> None:
        """What is queued is sent (or spooled for the next run)."""
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.opcua is not None:
            self.opcua.stop()

    def summary(self) -> dict:
        out: dict = {"errors": self.errors} if self.errors else {}
        if self.mqtt is not None:
            out["mqtt"] = self.mqtt.status()
        if self.opcua is not None:
            out["opcua"] = self.opcua.status()
        return out
