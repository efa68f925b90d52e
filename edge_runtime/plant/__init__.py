"""The station on the plant network, beside the line and off its decision path:

- ``messages.py``: :class:`PlantResult` (one item's result, the same fields over MQTT and OPC UA)
  and the lane commands, checked;
- ``line.py``: :class:`StationLine`, the running station as commands act on it (pause, resume,
  halt) and as its stats and alarms are read;
- ``spool.py``: :class:`Spool`, messages kept on disk, in order and capped, while the broker is away;
- ``mqtt.py``: :class:`MqttLink`, results, status, stats and alarms to an MQTT broker, commands from it;
- ``users.py``: OPC UA users (password hashes) and what anonymous sessions and users may do;
- ``certs.py``: a self-signed application certificate for the OPC UA server;
- ``opcua.py``: :class:`OpcUaServer`, a subset of OPC 40100 Machine Vision (state machine, results
  and their events);
- ``link.py``: :class:`PlantSides`, each record fanned out to MQTT and OPC UA (in the plant link's
  process);
- ``process.py``: :class:`Plant`, the station's one result sink for the plant network: records
  down a pipe to a process of its own, commands back up; the plant link of a demo or replay.

docs/integration.md has the topics, payloads, nodes and security settings.
"""

from .certs import make_certificate
from .link import PlantSides
from .messages import CommandError, LaneCommand, PlantResult, parse_command
from .mqtt import MqttLink, MqttSettings
from .opcua import OpcUaServer, OpcUaSettings
from .process import Plant, local_plant
from .spool import Spool
from .users import hash_password

__all__ = ["CommandError", "LaneCommand", "MqttLink", "MqttSettings", "OpcUaServer", "OpcUaSettings", "Plant",
           "PlantResult", "PlantSides", "Spool", "hash_password", "local_plant", "make_certificate",
           "parse_command"]
