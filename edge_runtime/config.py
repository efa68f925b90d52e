"""A station's configuration file (TOML), read by ``sortline serve`` and ``sortline record``.

::

    [station]
    bundle = "bundles/avocado-line3"     # serve: the bundle to run
    event_log = "events.jsonl"           # serve: one JSON line per item (optional)

    [controller]
    port = "/dev/serial/by-id/usb-FTDI_line3-if00-port0"   # any pyserial URL: /dev/tty*,
                                                           # socket://, rfc2217://, loop://
    baud = 115200                        # optional, per device (default 115200); at 115200 a
                                         # controller link carries ~140 items/s, a tap sensor ~44
    [sensor]
    kind = "taps"                        # taps | scale | none
    port = "/dev/serial/by-id/usb-Acme_tap-sensor-if00"
    baud = 921600

    [rig]
    tolerance_ms = 40                    # a camera's frame must be this close to the trigger
    wait_ms = 60                         # how long a capture waits for a late frame

    [[views]]                            # one table per view, in view order
    rgb = 0                              # an OpenCV device index, a video file, an RTSP URL,
    nir = 2                              # a GStreamer pipeline, or "folder:PATH" (images)

Relative paths are relative to the file. Every mistake is a :class:`ConfigError` that names
the file and the key; a key the file format does not have is a mistake too (a typo must not
silently change what the station does), reported with the nearest known key.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sortline.hardware.serial_link import DEFAULT_BAUD
from sortline.hardware.sources import ImageFolderSource, MultiViewRig, OpenCVCamera, Source, ViewSources

from .errors import SortlineError

SENSOR_KINDS = ("taps", "scale", "none")
FOLDER_PREFIX = "folder:"
FOLDER_FPS = 30.0
BAUD_RANGE = (300, 12_000_000)  # an image folder standing in for a camera streams at a camera's rate


class ConfigError(SortlineError, ValueError):
    """A station file that is missing, unreadable or wrong; the message names file and key."""


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


def _table(data: dict, key: str, path: Path, required: bool = True) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}: no [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a table")
    return value


KEYS = {  # every key a station file may have, by table: anything else is a mistake, not a no-op
    "": {"station", "controller", "sensor", "rig", "views"},
    "station": {"bundle", "event_log"},
    "controller": {"port", "baud"},
    "sensor": {"kind", "port", "baud"},
    "rig": {"tolerance_ms", "wait_ms"},
    "views": {"rgb", "nir"},
}
RIG_MS_MAX = 10_000.0


def _known_keys(table: dict, name: str, path: Path) -> None:
    known = sorted(KEYS[name.split("[")[0]])
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            where = f"{name}.{key}" if name else key
            raise ConfigError(f"{path}: unknown key {where!r}{hint}")


def _rig_ms(rig: dict, key: str, default: float, path: Path) -> float:
    value = rig.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= RIG_MS_MAX:
        raise ConfigError(f"{path}: rig.{key} must be a number of milliseconds from 0 to {RIG_MS_MAX:g}, "
                          f"not {value!r}")
    return float(value)


def _camera(value: object, where: str, path: Path) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ConfigError(f"{path}: {where} must be a device index, a URL or file, or 'folder:PATH'")
    return value


def load_station_file(path: str | Path) -> StationFile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such station file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file ({exc})") from None
    _known_keys(data, "", path)
    controller = _table(data, "controller", path)
    _known_keys(controller, "controller", path)
    port = controller.get("port")
    if not isinstance(port, str) or not port:
        raise ConfigError(f"{path}: controller.port must be a pyserial URL or device path")
    sensor = _table(data, "sensor", path, required=False)
    _known_keys(sensor, "sensor", path)
    kind = sensor.get("kind", "none")
    if kind not in SENSOR_KINDS:
        raise ConfigError(f"{path}: sensor.kind is {kind!r}; one of {SENSOR_KINDS}")
    sensor_port = sensor.get("port")
    if kind != "none" and (not isinstance(sensor_port, str) or not sensor_port):
        raise ConfigError(f"{path}: sensor.port is needed for a {kind} sensor")
    views_data = data.get("views")
    if not isinstance(views_data, list) or not views_data:
        raise ConfigError(f"{path}: at least one [[views]] table is needed")
    views = []
    for i, view in enumerate(views_data):
        if not isinstance(view, dict) or "rgb" not in view:
            raise ConfigError(f"{path}: views[{i}] needs an rgb camera")
        _known_keys(view, f"views[{i}]", path)
        nir = view.get("nir")
        views.append(ViewConfig(_camera(view["rgb"], f"views[{i}].rgb", path),
                                None if nir is None else _camera(nir, f"views[{i}].nir", path)))
    rig = _table(data, "rig", path, required=False)
    station = _table(data, "station", path, required=False)
    _known_keys(rig, "rig", path)
    _known_keys(station, "station", path)
    tolerance_ms, wait_ms = _rig_ms(rig, "tolerance_ms", 40.0, path), _rig_ms(rig, "wait_ms", 60.0, path)

    def relative(value: object, key: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{path}: station.{key} must be a path")
        p = Path(value)
        return p if p.is_absolute() else path.parent / p

    return StationFile(path, port, kind, sensor_port if kind != "none" else None, tuple(views), tolerance_ms, wait_ms,
                       relative(station.get("bundle"), "bundle"), relative(station.get("event_log"), "event_log"),
                       _baud(controller, "controller", path), _baud(sensor, "sensor", path))


def _baud(table: dict, name: str, path: Path) -> int:
    value = table.get("baud", DEFAULT_BAUD)
    lo, hi = BAUD_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{path}: {name}.baud must be a whole number of baud from {lo} to {hi}, not {value!r}")
    return value
