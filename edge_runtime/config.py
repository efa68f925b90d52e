"""A station's configuration file (TOML), read by ``sortline serve`` and ``sortline record``.

::

    [station]
    bundle = "bundles/avocado-line3"     # serve: the bundle to run
    public_key = "keys/line3.pub"        # optional: run only bundles signed by its private key
    runtime = "auto"                     # auto | onnxruntime | openvino (auto: measured at start)
    threads = 1                          # optional: intra-op threads (default: measured)
    event_log = "events.jsonl"           # serve: one JSON line per item (optional)
    event_log_max_mb = 64                # rotated past this size (events.jsonl.1 …), keeping
    event_log_keep = 5                   # this many old files
    store = "enroll.sqlite"              # optional: enrolled items and head versions; serve runs
                                         # the current head and swaps in a new one while it runs
    [api]                                # optional: the daemon's HTTP side (edge_runtime/api.py)
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

    [[views]]                            # one table per view, in view order
    rgb = 0                              # an OpenCV device index, a video file, an RTSP URL,
    nir = 2                              # a GStreamer pipeline, or "folder:PATH" (images)

Relative paths are relative to the file. The file is read into typed models (pydantic) that
refuse wrong types and out-of-range values; every mistake is a :class:`ConfigError` that names
the file and the key. A key the format does not have is a mistake too (a typo must not silently
change what the station does), reported with the nearest known key.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from sortline.hardware.protocol import MAX_EXIT
from sortline.hardware.serial_link import DEFAULT_BAUD
from sortline.hardware.sources import ImageFolderSource, MultiViewRig, OpenCVCamera, Source, ViewSources

from .errors import SortlineError

SENSOR_KINDS = ("taps", "scale", "none")
FOLDER_PREFIX = "folder:"
FOLDER_FPS = 30.0  # an image folder standing in for a camera streams at a camera's rate
BAUD_RANGE = (300, 12_000_000)
RIG_MS_MAX = 10_000.0
MAX_VIEWS = 16


class ConfigError(SortlineError, ValueError):
    """A station file that is missing, unreadable or wrong; the message names file and key."""


# --- the file's schema ------------------------------------------------------------------------


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Baud = Annotated[StrictInt, Field(ge=BAUD_RANGE[0], le=BAUD_RANGE[1])]
RigMs = Annotated[float, Field(ge=0, le=RIG_MS_MAX, allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=4096)]
Camera = Annotated[StrictInt, Field(ge=0, le=255)] | Text


class _StationTable(_Table):
    bundle: Text | None = None
    event_log: Text | None = None
    public_key: Text | None = None
    store: Text | None = None
    event_log_max_mb: Annotated[float, Field(gt=0, le=1 << 20, allow_inf_nan=False)] = 64.0
    event_log_keep: Annotated[StrictInt, Field(ge=1, le=1000)] = 5
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    threads: Annotated[StrictInt, Field(ge=1, le=256)] | None = None


class _ApiTable(_Table):
    enabled: StrictBool = True
    host: Text = "127.0.0.1"  # another address only when set here
    port: Annotated[StrictInt, Field(ge=0, le=65535)] = 8750  # 0: any free port
    token: Annotated[StrictStr, Field(min_length=16, max_length=256)] | None = None


class _ControllerTable(_Table):
    port: Text
    baud: Baud = DEFAULT_BAUD
    exits: Annotated[StrictInt, Field(ge=1, le=MAX_EXIT + 1)] | None = None


class _SensorTable(_Table):
    kind: Literal["taps", "scale", "none"] = "none"
    port: Text | None = None
    baud: Baud = DEFAULT_BAUD


class _RigTable(_Table):
    tolerance_ms: RigMs = 40.0
    wait_ms: RigMs = 60.0


Range = tuple[float, float]


class _LimitsTable(_Table):
    """Defaults: ``ReadingLimits`` in station/readings.py (kept equal by a test)."""

    tap_peak_n: Range = (0.0, 500.0)
    tap_rebound: Range = (0.0, 1.0)
    tap_decay_ms: Range = (0.0, 10_000.0)
    scale_grams: Range = (-100.0, 100_000.0)

    @field_validator("*", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value  # TOML has arrays, not tuples

    @field_validator("*")
    @classmethod
    def _ordered(cls, value: Range) -> Range:
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"must be [low, high] with finite low < high, not {list(value)}")
        return value


class _ViewTable(_Table):
    rgb: Camera
    nir: Camera | None = None


class _FileModel(_Table):
    station: _StationTable = _StationTable()
    controller: _ControllerTable
    sensor: _SensorTable = _SensorTable()
    rig: _RigTable = _RigTable()
    limits: _LimitsTable = _LimitsTable()
    api: _ApiTable = _ApiTable()
    views: Annotated[list[_ViewTable], Field(min_length=1, max_length=MAX_VIEWS)]


_UNION_TAGS = frozenset({"int", "str", "float", "bool", "none"})


def read_toml(path: Path, what: str, max_bytes: int = 1 << 20) -> dict:
    """A TOML file as a dict; :class:`ConfigError` (naming ``what``) when it is missing, too
    large or not TOML."""
    try:
        if path.stat().st_size > max_bytes:
            raise ConfigError(f"{path}: over {max_bytes} bytes; not a {what}")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file ({exc})") from None


def explain(exc: ValidationError, path: Path, root: type[BaseModel]) -> ConfigError:
    """The first error, as '<file>: <key>: <what is wrong>' (with a did-you-mean for typos)."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    if error["type"] != "extra_forbidden":  # a union reports one error per member, tagged: name the key
        loc = [part for part in loc if isinstance(part, int) or not (part in _UNION_TAGS or "-" in part or "[" in part)]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] = root
        for part in loc[:-1]:
            if isinstance(part, str):
                annotation = model.model_fields[part].annotation
                model = getattr(annotation, "__args__", [annotation])[0] if part == "views" else annotation
        known = sorted(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        return ConfigError(f"{path}: unknown key {where!r}; {hint}")
    value = error.get("input")
    shown = "" if error["type"] == "missing" else f" (got {value!r:.60})"
    return ConfigError(f"{path}: {where or 'file'}: {error['msg']}{shown}")


# --- what the rest of the station uses --------------------------------------------------------


@dataclass(frozen=True)
class ViewConfig:
    rgb: int | str
    nir: int | str | None = None


@dataclass(frozen=True)
class StationFile:
    path: Path
    controller: str
    sensor_kind: str
    sensor_port: str | None
    views: tuple[ViewConfig, ...]
    tolerance_ms: float = 40.0
    wait_ms: float = 60.0
    bundle: Path | None = None
    event_log: Path | None = None
    controller_baud: int = DEFAULT_BAUD
    sensor_baud: int = DEFAULT_BAUD
    public_key: Path | None = None
    store: Path | None = None  # enrolled examples and head versions (edge_runtime/memory.py)
    event_log_max_mb: float = 64.0  # rotated past this size
    event_log_keep: int = 5
    limits: dict[str, tuple[float, float]] | None = None  # ReadingLimits fields; None: the defaults
    controller_exits: int | None = None  # the controller's exits are 0..N-1; None: any the protocol allows
    runtime: str = "auto"  # edge_runtime/runtimes.py
    threads: int | None = None  # None: measured
    api_enabled: bool = True  # the daemon's HTTP side (edge_runtime/api.py)
    api_host: str = "127.0.0.1"
    api_port: int = 8750
    api_token: str | None = field(default=None, repr=False)  # else SORTLINE_API_TOKEN; without either, the
    # API changes nothing

    def check_exits(self, exits: dict[str, int], safe_exit: int) -> None:
        """Refuse a bundle that names an exit this line's controller does not have."""
        if self.controller_exits is None:
            return
        wrong = {label: e for label, e in {**exits, "(safe)": safe_exit}.items() if e >= self.controller_exits}
        if wrong:
            raise ConfigError(f"{self.path}: the controller has exits 0..{self.controller_exits - 1}, "
                              f"the bundle sends {wrong}")

    @property
    def bauds(self) -> dict[str, int]:
        """Device name → baud rate, for the devices in :attr:`ports`."""
        return {name: self.controller_baud if name == "controller" else self.sensor_baud for name in self.ports}

    @property
    def ports(self) -> dict[str, str]:
        """Device name → pyserial URL, the controller first (as recordings want them)."""
        ports = {"controller": self.controller}
        if self.sensor_kind != "none" and self.sensor_port:
            ports[self.sensor_kind] = self.sensor_port
        return ports

    def reading_limits(self):  # -> ReadingLimits (imported here: the station package imports this module)
        from .station.readings import ReadingLimits

        return ReadingLimits(**(self.limits or {}))

    def build_rig(self) -> MultiViewRig:
        """Open every camera of every view. A camera that cannot be opened is an error now,
        not a missing view on every item later."""
        opened: list[Source] = []
        try:
            views = []
            for view in self.views:
                rgb = self._source(view.rgb, nir=False)
                opened.append(rgb)
                nir = None if view.nir is None else self._source(view.nir, nir=True)
                if nir is not None:
                    opened.append(nir)
                views.append(ViewSources(rgb, nir))
            return MultiViewRig(views, tolerance_ms=self.tolerance_ms, wait_ms=self.wait_ms)
        except Exception:
            for source in opened:
                source.close()
            raise

    def _source(self, spec: int | str, nir: bool) -> Source:
        if isinstance(spec, str) and spec.startswith(FOLDER_PREFIX):
            folder = Path(spec[len(FOLDER_PREFIX):])
            folder = folder if folder.is_absolute() else self.path.parent / folder
            return ImageFolderSource(folder, nir=nir, loop=True, fps=FOLDER_FPS)
        return OpenCVCamera(spec, nir=nir)


def load_station_file(path: str | Path) -> StationFile:
    path = Path(path)
    data = read_toml(path, "station file")
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, path, _FileModel) from None
    sensor = model.sensor
    if sensor.kind != "none" and sensor.port is None:
        raise ConfigError(f"{path}: sensor.port is needed for a {sensor.kind} sensor")

    def relative(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else path.parent / p

    return StationFile(
        path=path, controller=model.controller.port, sensor_kind=sensor.kind,
        sensor_port=sensor.port if sensor.kind != "none" else None,
        views=tuple(ViewConfig(v.rgb, v.nir) for v in model.views),
        tolerance_ms=model.rig.tolerance_ms, wait_ms=model.rig.wait_ms,
        bundle=relative(model.station.bundle), event_log=relative(model.station.event_log),
        controller_baud=model.controller.baud, sensor_baud=sensor.baud,
        public_key=relative(model.station.public_key), store=relative(model.station.store),
        event_log_max_mb=model.station.event_log_max_mb, event_log_keep=model.station.event_log_keep,
        limits=model.limits.model_dump(),
        controller_exits=model.controller.exits, runtime=model.station.runtime, threads=model.station.threads,
        api_enabled=model.api.enabled, api_host=model.api.host, api_port=model.api.port,
        api_token=model.api.token or os.environ.get("SORTLINE_API_TOKEN") or None,
    )
