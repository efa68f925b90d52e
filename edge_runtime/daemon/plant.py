"""The plant link a station file asks for (``[mqtt]``, ``[opcua]``): settings read, credentials
loaded, every mistake a :class:`ConfigError` that names the file and the key."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.plant import MqttSettings, OpcUaSettings, Plant
from sortline.edge_runtime.plant.users import read_users

from .config import StationFile

MAX_SECRET_FILE = 4096


def station_name(station_file: StationFile) -> str:
    return station_file.station.name or socket.gethostname().split(".")[0] or "station"


def build_plant(station_file: StationFile) -> Plant | None:
    """The plant link of ``station_file`` (None when it has neither ``[mqtt]`` nor ``[opcua]``)."""
    if station_file.mqtt is None and station_file.opcua is None:
        return None
    try:
        return Plant(mqtt_settings(station_file), opcua_settings(station_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{station_file.path}: {exc}") from None


def mqtt_settings(station_file: StationFile) -> MqttSettings | None:
    t = station_file.mqtt
    if t is None:
        return None
    name, file = station_name(station_file), station_file.file
    password = os.environ.get("SORTLINE_MQTT_PASSWORD")
    if t.password_file is not None:
        password = _secret(file(t.password_file), "mqtt.password_file")
    return MqttSettings(url=t.url, prefix=t.prefix or f"sortline/{name}", client_id=t.client_id or f"sortline-{name}",
                        username=t.username, password=password, protocol=t.protocol, ca_file=file(t.ca_file),
                        cert_file=file(t.cert_file), key_file=file(t.key_file), stats_every_s=t.stats_every_s,
                        queue=t.queue, window=t.window, spool=file(t.spool), spool_max_mb=t.spool_max_mb)


def opcua_settings(station_file: StationFile) -> OpcUaSettings | None:
    t = station_file.opcua
    if t is None:
        return None
    file = station_file.file
    for key in ("certificate", "private_key"):
        path = file(getattr(t, key))
        if path is not None and not path.is_file():
            raise ConfigError(f"{station_file.path}: opcua.{key} = {path}: no such file")
    users = {}
    if t.users_file is not None:
        try:
            users = read_users(file(t.users_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{station_file.path}: opcua.users_file: {exc}") from None
    return OpcUaSettings(endpoint=t.endpoint, name=f"sortline {station_name(station_file)}",
                         application_uri=f"urn:sortline:{station_name(station_file)}",
                         certificate=file(t.certificate), private_key=file(t.private_key), users=users,
                         allow_anonymous=t.allow_anonymous, allow_unencrypted=t.allow_unencrypted, results=t.results)


def _secret(path: Path, key: str) -> str:
    try:
        if path.stat().st_size > MAX_SECRET_FILE:
            raise ConfigError(f"{key} = {path}: larger than {MAX_SECRET_FILE} bytes")
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key} = {path}: cannot be read ({exc})") from None
