"""A station's configuration file (TOML), read by ``sortline serve`` and ``sortline record``.

::

    [station]
    name = "line3"                       # optional: the station's name (default: the host's)
    bundle = "bundles/avocado-line3"     # serve: the bundle to run
    public_key = "keys/line3.pub"        # optional: run only bundles signed by its private key
    runtime = "auto"                     # auto | onnxruntime | openvino (auto: measured at start)
    threads = 1                          # optional: intra-op threads (default: measured)
    event_log = "events.jsonl"           # serve: one JSON line per item (optional)
    event_log_max_mb = 64                # rotated past this size (events.jsonl.1 …), keeping
    event_log_keep = 5                   # this many old files
    store = "enroll.sqlite"              # optional: enrolled items and head versions; serve runs
                                         # the current head and swaps in a new one while it runs
    [api]                                # optional: the daemon's HTTP side (daemon/api.py)
    host = "127.0.0.1"                   # the default; another address only when set here
    port = 8750                          # 0: any free port; enabled = false: no HTTP at all
    token = "…at least 16 characters…"   # or SORTLINE_API_TOKEN; without one the API changes nothing

    [controller]
    port = "/dev/serial/by-id/usb-FTDI_line3-if00-port0"   # any pyserial URL: /dev/tty*,
                                                           # socket://, rfc2217://, loop://
    baud = 115200                        # optional, per device (default 115200); at 115200 a
                                         # controller link carries ~127 items/s, a tap sensor ~41
    exits = 4                            # optional: the controller's exits are 0..3; a bundle
                                         # that sends an item elsewhere is refused at start
    [sensor]
    kind = "taps"                        # taps | scale | none
    port = "/dev/serial/by-id/usb-Acme_tap-sensor-if00"
    baud = 921600

    [rig]
    tolerance_ms = 40                    # a camera's frame must be this close to the trigger
    wait_ms = 60                         # how long a capture waits for a late frame

    [limits]                             # optional: what the sensor can physically report;
    tap_peak_n = [0, 500]                # a reading outside is garbage (counted; the item is
    tap_rebound = [0, 1]                 # decided on its views alone)
    tap_decay_ms = [0, 10000]
    scale_grams = [-100, 100000]

    [drift]                              # optional: the drift watch (docs/drift.md); on by default
    enabled = true
    reference_items = 500                # the reference is learnt from the first items
    items_between_false_alarms = 1e7     # the false-alarm budget, all statistics together
    [queue]                              # optional: the queue of unsure items (watch/unsure.py)
    folder = "queue"                     # none: no queue
    per_hour = 120                       # at most this many items an hour
    drift_per_hour = 120                 # and a sample of this many while the items drift
    max_mb = 256                         # and this much disk (the oldest go)
    [shadow]                             # optional: new heads and bundles run beside the live
    enabled = true                       # one first (docs/adaptation.md); off by default
    log = "shadow.jsonl"                 # the shadow log: both decisions of each item
    auto = false                         # promote by itself when the policy holds:
    min_items = 500                      # items seen, and labelled ones, at least; the candidate
    min_labelled = 30                    # shown not less accurate (paired test) and not more
    window_items = 1000                  # unsure; after a promotion, rolled back by itself if
                                         # the rates worsen within this many items
    [mqtt]                               # optional: results and state on the plant's broker
    url = "mqtts://broker.plant:8883"    # (docs/integration.md); topics under sortline/<name>
    username = "line3"                   # password in password_file or SORTLINE_MQTT_PASSWORD
    password_file = "mqtt.password"
    ca_file = "plant-ca.pem"
    [opcua]                              # optional: an OPC UA server (OPC 40100 Machine Vision subset)
    endpoint = "opc.tcp://0.0.0.0:4840/sortline"
    certificate = "opcua/cert.der"       # Basic256Sha256 SignAndEncrypt with this certificate
    private_key = "opcua/key.pem"
    users_file = "opcua.users"           # name:hash lines, made with `sortline plant passwd`

    [[views]]                            # one table per view, in view order
    rgb = 0                              # an OpenCV device index, a video file, an RTSP URL,
    nir = 2                              # a GStreamer pipeline, or "folder:PATH" (images)

Relative paths are relative to the file. The file is read into one typed model,
:class:`StationFile` (pydantic), which is also what ``serve`` and ``record`` run with: there is no
second copy of the settings. It refuses wrong types and out-of-range values; every mistake is a
:class:`ConfigError` that names the file and the key. A key the format does not have is a mistake
too (a typo must not silently change what the station does), reported with the nearest known key.
Defaults that the station itself has (the reading limits, the event log's rotation) are taken
from the station's own types, never written twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import cv2
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictInt, StrictStr, ValidationError

from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.model.bundle import default_signing_key
from sortline.edge_runtime.model.fusion import ReadingLimits
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.edge_runtime.station import StationConfig
from sortline.edge_runtime.tomlfile import explain, read_toml
from sortline.edge_runtime.watch import DriftConfig, QueueConfig, ShadowPolicy, StationWatch
from sortline.hardware.camera import FrameError
from sortline.hardware.protocol import MAX_EXIT
from sortline.hardware.serial_link import DEFAULT_BAUD
from sortline.hardware.sources import ImageFolderSource, MultiViewRig, OpenCVCamera, Source, ViewSources

log = logging.getLogger(__name__)

SENSOR_KINDS = ("taps", "scale", "none")
FOLDER_PREFIX = "folder:"
FOLDER_FPS = 30.0  # an image folder standing in for a camera streams at a camera's rate
BAUD_RANGE = (300, 12_000_000)
RIG_MS_MAX = 10_000.0
MAX_VIEWS = 16
API_HOST = "127.0.0.1"  # another address only when the station file sets one
API_PORT = 8750
_STATION = StationConfig()  # the station's own defaults
_DRIFT = DriftConfig()
_QUEUE = QueueConfig(Path("queue"))
_SHADOW = ShadowPolicy()


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Baud = Annotated[StrictInt, Field(ge=BAUD_RANGE[0], le=BAUD_RANGE[1])]
RigMs = Annotated[float, Field(ge=0, le=RIG_MS_MAX, allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=4096)]
Camera = Annotated[StrictInt, Field(ge=0, le=255)] | Text
Token = Annotated[StrictStr, Field(min_length=16, max_length=256)]


class StationTable(_Table):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    bundle: Text | None = None
    event_log: Text | None = None
    public_key: Text | None = None  # the key that signed the bundles this station runs
    allow_unsigned: StrictBool = False  # run bundles without a signature (warned at start and on /metrics)
    store: Text | None = None  # enrolled examples and head versions (learning/store.py)
    event_log_max_mb: Annotated[float, Field(gt=0, le=1 << 20, allow_inf_nan=False)] = _STATION.event_log_max_mb
    event_log_keep: Annotated[StrictInt, Field(ge=1, le=1000)] = _STATION.event_log_keep
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"  # model/runtimes.py
    threads: Annotated[StrictInt, Field(ge=1, le=256)] | None = None  # None: measured


class ApiSettings(_Table):
    """The daemon's HTTP side (``[api]``; daemon/api.py serves it)."""

    enabled: StrictBool = True
    host: Text = API_HOST
    port: Annotated[StrictInt, Field(ge=0, le=65535)] = API_PORT  # 0: any free port
    # else SORTLINE_API_TOKEN; without either, the API changes nothing
    token: Token | None = Field(default=None, repr=False)


class ControllerTable(_Table):
    port: Text
    baud: Baud = DEFAULT_BAUD
    exits: Annotated[StrictInt, Field(ge=1, le=MAX_EXIT + 1)] | None = None  # None: any the protocol allows


class SensorTable(_Table):
    kind: Literal["taps", "scale", "none"] = "none"
    port: Text | None = None
    baud: Baud = DEFAULT_BAUD


class RigTable(_Table):
    tolerance_ms: RigMs = 40.0
    wait_ms: RigMs = 60.0


class ViewTable(_Table):
    rgb: Camera
    nir: Camera | None = None


Count = Annotated[StrictInt, Field(ge=1, le=10_000_000)]


class DriftTable(_Table):
    """``[drift]``: the drift watch (watch/drift.py); checked again by DriftConfig."""

    enabled: StrictBool = True
    reference_items: Count = _DRIFT.reference_items
    step: Count = _DRIFT.step
    camera_window: Count = _DRIFT.camera_window
    item_window: Count = _DRIFT.item_window
    components: Annotated[StrictInt, Field(ge=1, le=256)] = _DRIFT.components
    neighbours: Annotated[StrictInt, Field(ge=1, le=1000)] = _DRIFT.neighbours
    items_between_false_alarms: Annotated[float, Field(ge=1000, le=1e15, allow_inf_nan=False)] = \
        _DRIFT.items_between_false_alarms
    border: Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)] = _DRIFT.border
    clear_blocks: Annotated[StrictInt, Field(ge=1, le=1000)] = _DRIFT.clear_blocks


class QueueTable(_Table):
    """``[queue]``: the queue of unsure items (watch/unsure.py); no folder, no queue."""

    folder: Text | None = None
    per_hour: Count = _QUEUE.per_hour
    max_items: Count = _QUEUE.max_items
    max_mb: Annotated[float, Field(gt=0, le=1 << 30, allow_inf_nan=False)] = _QUEUE.max_mb
    reserve_mb: Annotated[float, Field(ge=0, le=1 << 30, allow_inf_nan=False)] = _QUEUE.reserve_mb
    margin: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = _QUEUE.margin
    drift_per_hour: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = _QUEUE.drift_per_hour


class ShadowTable(_Table):
    """``[shadow]``: candidates beside the live version (watch/shadow.py); checked again by ShadowPolicy."""

    enabled: StrictBool = False
    log: Text | None = None
    auto: StrictBool = _SHADOW.auto
    min_items: Count = _SHADOW.min_items
    min_labelled: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = _SHADOW.min_labelled
    margin: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = _SHADOW.margin
    alpha: Annotated[float, Field(gt=0, lt=0.5, allow_inf_nan=False)] = _SHADOW.alpha
    rate_bound: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = _SHADOW.rate_bound
    window_items: Count = _SHADOW.window_items
    window_s: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)] = _SHADOW.window_s
    min_window_items: Count = _SHADOW.min_window_items
    rollback_on_drift: StrictBool = _SHADOW.rollback_on_drift


class MqttTable(_Table):
    """``[mqtt]``: results, state and commands over an MQTT broker (plant/mqtt.py, docs/integration.md)."""

    url: Text  # mqtt://host:1883 or mqtts://host:8883
    client_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None  # default sortline-<name>
    prefix: Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"^[^/#+\x00][^#+\x00]*[^/#+\x00]$")] \
        | None = None  # default sortline/<name>
    username: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    password_file: Text | None = None  # or SORTLINE_MQTT_PASSWORD
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    ca_file: Text | None = None
    cert_file: Text | None = None
    key_file: Text | None = None
    stats_every_s: Annotated[float, Field(ge=0.5, le=3600, allow_inf_nan=False)] = 10.0
    spool: Text = "mqtt-spool"  # messages wait here while the broker is away
    spool_max_mb: Annotated[float, Field(gt=0, le=1 << 20, allow_inf_nan=False)] = 64.0
    queue: Annotated[StrictInt, Field(ge=100, le=10_000_000)] = 20000
    window: Annotated[StrictInt, Field(ge=1, le=60000)] = 1000


class OpcUaTable(_Table):
    """``[opcua]``: the OPC UA server (plant/opcua.py, docs/integration.md)."""

    endpoint: Text = "opc.tcp://127.0.0.1:4840/sortline"
    certificate: Text | None = None  # the station's certificate and private key (Basic256Sha256)
    private_key: Text | None = None
    users_file: Text | None = None  # name:hash lines (sortline plant passwd)
    allow_anonymous: StrictBool = False  # anonymous sessions may browse, read and subscribe
    allow_unencrypted: StrictBool = False  # offer the None security policy too
    results: Annotated[StrictInt, Field(ge=100, le=1_000_000)] = 10000  # GetResultById answers for these


class StationFile(_Table):
    """A station file, checked; paths in it resolved against the file's folder (:attr:`path`)."""

    station: StationTable = StationTable()
    controller: ControllerTable
    sensor: SensorTable = SensorTable()
    rig: RigTable = RigTable()
    limits: ReadingLimits = ReadingLimits()
    api: ApiSettings = ApiSettings()
    drift: DriftTable = DriftTable()
    queue: QueueTable = QueueTable()
    shadow: ShadowTable = ShadowTable()
    mqtt: MqttTable | None = None
    opcua: OpcUaTable | None = None
    views: Annotated[list[ViewTable], Field(min_length=1, max_length=MAX_VIEWS)]
    _path: Path = PrivateAttr(default=Path("station.toml"))

    @property
    def path(self) -> Path:
        """The file this was read from."""
        return self._path

    def file(self, value: str | None) -> Path | None:
        """A path from the file, relative to the file's folder."""
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.path.parent / p

    def build_watch(self, on_label=None) -> StationWatch | None:
        """The drift watch, queue of unsure items and shadow this file asks for (None: none)."""
        folder = self.file(self.queue.folder)
        if not self.drift.enabled and folder is None and not self.shadow.enabled:
            return None
        drift = DriftConfig(**self.drift.model_dump(exclude={"enabled"})) if self.drift.enabled else None
        queue = QueueConfig(folder, **self.queue.model_dump(exclude={"folder"})) if folder is not None else None
        shadow = (ShadowPolicy(**self.shadow.model_dump(exclude={"enabled", "log"})) if self.shadow.enabled
                  else None)
        return StationWatch.build(drift, queue, on_label=on_label, shadow=shadow,
                                  shadow_log=self.file(self.shadow.log))

    def station_config(self, base: StationConfig = _STATION) -> StationConfig:
        """The station's settings with what this file sets."""
        return dataclasses.replace(base, limits=self.limits, event_log_max_mb=self.station.event_log_max_mb,
                                   event_log_keep=self.station.event_log_keep)

    def check_exits(self, exits: dict[str, int], safe_exit: int) -> None:
        """Refuse a bundle that names an exit this line's controller does not have."""
        have = self.controller.exits
        if have is None:
            return
        wrong = {label: e for label, e in {**exits, "(safe)": safe_exit}.items() if e >= have}
        if wrong:
            raise ConfigError(f"{self.path}: the controller has exits 0..{have - 1}, the bundle sends {wrong}")

    def check_bundle(self, spec: InputSpec, exits: dict[str, int], safe_exit: int) -> None:
        """Refuse a bundle this station cannot feed: more views than its cameras give, NIR where
        a view has no NIR camera, or an exit its controller does not have."""
        if spec.views != len(self.views):
            raise ConfigError(f"{self.path}: {len(self.views)} [[views]], the bundle decides on {spec.views}; "
                              "a station feeds its bundle the views it was fitted on")
        if "nir" in spec.channels and (blind := [i for i, v in enumerate(self.views) if v.nir is None]):
            raise ConfigError(f"{self.path}: the bundle takes NIR; views {blind} name no nir camera")
        self.check_exits(exits, safe_exit)

    def check_signing(self) -> None:
        """Only signed bundles run unless the file says otherwise: an unsigned manifest's hashes
        authenticate nothing (anyone who can write the bundle can rehash it)."""
        if self.station.public_key is None and not self.station.allow_unsigned:
            raise ConfigError(f"{self.path}: [station] names no public_key, and serve runs only signed bundles. "
                              "Name the key that signed them (sortline demo, fit and export sign with "
                              f"{default_signing_key()}: public_key = \"{default_signing_key()}.pub\"), "
                              "or set allow_unsigned = true to run unsigned ones")
        if self.unsigned_allowed:
            log.warning("%s: allow_unsigned = true: bundles run without a signature; anyone who can write a bundle "
                        "can change what this station does", self.path)

    @property
    def unsigned_allowed(self) -> bool:
        return self.station.public_key is None and self.station.allow_unsigned

    @property
    def bauds(self) -> dict[str, int]:
        """Device name → baud rate, for the devices in :attr:`ports`."""
        return {name: self.controller.baud if name == "controller" else self.sensor.baud for name in self.ports}

    @property
    def ports(self) -> dict[str, str]:
        """Device name → pyserial URL, the controller first (as recordings want them)."""
        ports = {"controller": self.controller.port}
        if self.sensor.kind != "none" and self.sensor.port:
            ports[self.sensor.kind] = self.sensor.port
        return ports

    def build_rig(self) -> MultiViewRig:
        """Open every camera of every view. A camera that cannot be opened is an error now,
        not a missing view on every item later."""
        opened: list[Source] = []
        try:
            views = []
            for i, view in enumerate(self.views):
                rgb = self._source(view.rgb, nir=False, where=f"views[{i}].rgb")
                opened.append(rgb)
                nir = None if view.nir is None else self._source(view.nir, nir=True, where=f"views[{i}].nir")
                if nir is not None:
                    opened.append(nir)
                views.append(ViewSources(rgb, nir))
            return MultiViewRig(views, tolerance_ms=self.rig.tolerance_ms, wait_ms=self.rig.wait_ms)
        except Exception:
            for source in opened:
                source.close()
            raise

    def _source(self, spec: int | str, nir: bool, where: str) -> Source:
        try:
            if isinstance(spec, str) and spec.startswith(FOLDER_PREFIX):
                return ImageFolderSource(self.file(spec[len(FOLDER_PREFIX):]), nir=nir, loop=True, fps=FOLDER_FPS)
            return OpenCVCamera(spec, nir=nir)
        except (FrameError, OSError, cv2.error) as exc:
            raise ConfigError(f"{self.path}: {where} = {spec!r}: the camera cannot be opened ({exc})") from None


def load_station_file(path: str | Path) -> StationFile:
    path = Path(path)
    data = read_toml(path, "station file")
    try:
        model = StationFile.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, path, StationFile) from None
    if model.sensor.kind != "none" and model.sensor.port is None:
        raise ConfigError(f"{path}: sensor.port is needed for a {model.sensor.kind} sensor")
    api = model.api
    if api.token is None and os.environ.get("SORTLINE_API_TOKEN"):
        try:
            api = ApiSettings.model_validate({**api.model_dump(), "token": os.environ["SORTLINE_API_TOKEN"]})
        except ValidationError as exc:
            raise ConfigError(f"SORTLINE_API_TOKEN: {exc.errors()[0]['msg']}") from None
    model = model.model_copy(update={"api": api})
    model._path = path
    return model
