"""The bundle: what a station loads, and how one is written (by the desktop's export and by a
device that refits its head). A folder with ``manifest.json``, the backbone as ONNX and
the head as arrays, or that folder as one tar archive (``.tar``, ``.tar.gz``, ``.tgz``).
Loading checks the schema and the sha256 of every file, and refuses anything else with an
error that says what is wrong. Nothing in a bundle is unpickled.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import hashlib
import json
import math
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SortlineError
from .fusion import FusionSpec
from .head import HeadError, LogisticHead
from .preprocess import InputSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class BundleError(SortlineError, ValueError):
    """A bundle that must not be loaded; the message names the file and the fault."""


@dataclass(frozen=True)
class DecisionPolicy:
    """Which exit each class goes to, and when an item goes to the safe exit instead."""

    exits: dict[str, int]
    safe_exit: int
    min_confidence: float = 0.5

    def to_dict(self) -> dict:
        return {"exits": dict(self.exits), "safe_exit": self.safe_exit, "min_confidence": self.min_confidence}

    @classmethod
    def from_dict(cls, data: dict) -> DecisionPolicy:
        return cls(
            exits={str(k): int(v) for k, v in data["exits"].items()},
            safe_exit=int(data["safe_exit"]),
            min_confidence=float(data["min_confidence"]),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    input: InputSpec
    embedding_dim: int
    labels: tuple[str, ...]
    decision: DecisionPolicy
    fusion: FusionSpec
    backbone: str = "backbone.onnx"
    head: str | None = "head.npz"  # None: embeddings only, until items are enrolled
    metrics: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "created": self.created,
            "input": self.input.to_dict(),
            "embedding_dim": self.embedding_dim,
            "labels": list(self.labels),
            "decision": self.decision.to_dict(),
            "fusion": self.fusion.to_dict(),
            "backbone": self.backbone,
            "head": self.head,
            "metrics": self.metrics,
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        expected = set(cls("", InputSpec(), 1, (), DecisionPolicy({}, 0), FusionSpec()).to_dict())
        if not isinstance(data, dict):
            raise BundleError("manifest is not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version is {data.get('schema_version')!r}; this runtime reads {SCHEMA_VERSION}"
            )
        if unknown := set(data) - expected:
            raise BundleError(f"manifest has unknown fields {sorted(unknown)}")
        if missing := expected - set(data):
            raise BundleError(f"manifest lacks fields {sorted(missing)}")
        try:
            manifest = cls(
                name=str(data["name"]),
                created=str(data["created"]),
                input=InputSpec.from_dict(data["input"]),
                embedding_dim=int(data["embedding_dim"]),
                labels=tuple(str(x) for x in data["labels"]),
                decision=DecisionPolicy.from_dict(data["decision"]),
                fusion=FusionSpec.from_dict(data["fusion"]),
                backbone=str(data["backbone"]),
                head=None if data["head"] is None else str(data["head"]),
                metrics=dict(data["metrics"]),
                files={str(k): str(v) for k, v in data["files"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"manifest field is malformed: {exc!r}") from exc
        if set(manifest.labels) - set(manifest.decision.exits):
            raise BundleError(f"labels without an exit: {sorted(set(manifest.labels) - set(manifest.decision.exits))}")
        for name in (manifest.backbone, manifest.head):
            if name is not None and name not in manifest.files:
                raise BundleError(f"manifest does not list a hash for {name}")
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_json(manifest: Manifest) -> str:
    def finite(value: object) -> object:  # JSON has no NaN: write null instead
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(manifest.to_dict()), indent=2, sort_keys=False) + "\n"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its manifest and the paths of its files."""

    root: Path
    manifest: Manifest

    @property
    def version(self) -> str:
        """The bundle's name and the first 12 hex digits of its manifest's sha256: the manifest
        lists every file's hash, so this names the exact contents."""
        return f"{self.manifest.name}@{sha256_file(self.root / MANIFEST)[:12]}"

    @property
    def backbone_path(self) -> Path:
        return self.root / self.manifest.backbone

    def load_head(self) -> LogisticHead:
        if self.manifest.head is None:
            raise BundleError(f"{self.root}: this bundle has no head yet (embeddings only); enroll items first")
        try:
            head = LogisticHead.load(self.root / self.manifest.head)
        except HeadError as exc:
            raise BundleError(str(exc)) from exc
        expected = self.manifest.fusion.feature_count(self.manifest.embedding_dim)
        if head.n_features != expected or head.labels != self.manifest.labels:
            raise BundleError(
                f"head does not match the manifest: {head.n_features} features for {head.labels}, "
                f"expected {expected} for {self.manifest.labels}"
            )
        return head


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def _extract(archive: Path) -> Path:
    """Unpack a bundle archive into a private temporary folder (removed at exit)."""
    target = Path(tempfile.mkdtemp(prefix="sortline-bundle-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, "..", links out of the folder and devices.
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive}: not a readable bundle archive ({exc})") from exc
    for root in [target, *sorted(d for d in target.iterdir() if d.is_dir())]:
        if (root / MANIFEST).is_file():
            return root
    raise BundleError(f"{archive}: the archive holds no {MANIFEST}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle folder or archive; raises :class:`BundleError` on any fault."""
    path = Path(path)
    if path.is_file() and is_archive(path):
        root = _extract(path)
    elif path.is_dir():
        root = path
    else:
        raise BundleError(f"{path}: no such bundle folder or archive")
    manifest_path = root / MANIFEST
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{manifest_path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable ({exc})") from exc
    manifest = Manifest.from_dict(data)
    for name, expected in manifest.files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"manifest names a file outside the bundle: {name}")
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(f"{file}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…")
    return Bundle(root=root, manifest=manifest)


# --- writing --------------------------------------------------------------------------------
# A bundle appears whole or not at all: it is assembled in a temporary folder beside the
# destination, verified by the same loader the station uses, then renamed (or packed into a
# temporary archive that is renamed, when ``out`` ends in .tar, .tar.gz or .tgz).


def write_bundle(out: Path, manifest: Manifest, backbone: Path, head: LogisticHead | None,
                 extra_files: Mapping[str, Path] | None = None) -> Bundle:
    """Write ``out`` (replacing an older bundle there) and return it, loaded and verified.

    Without a head the bundle only embeds; ``manifest.head`` is then set to None."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if head is None:
            manifest = dataclasses.replace(manifest, head=None)
        else:
            head.save(staging / manifest.head)
        shutil.copyfile(backbone, staging / manifest.backbone)
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, staging / name)
        names = [n for n in (manifest.backbone, manifest.head) if n is not None] + list(extra_files or {})
        final = dataclasses.replace(
            manifest,
            files={name: sha256_file(staging / name) for name in names},
            created=manifest.created or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        (staging / MANIFEST).write_text(manifest_json(final), encoding="utf-8")
        # Refuse to publish what a station would refuse to load.
        written = load_bundle(staging)
        if final.head is not None:
            written.load_head()
        if is_archive(out):
            _publish_archive(staging, out)
        else:
            _publish_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(out)


def _publish_folder(staging: Path, out: Path) -> None:
    if out.exists():
        retired = out.with_name(f".{out.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)


def _publish_archive(staging: Path, out: Path) -> None:
    packed = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(packed, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tar:
            tar.add(staging, arcname="bundle")
        packed.replace(out)
    finally:
        packed.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
