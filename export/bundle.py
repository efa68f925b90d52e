"""Writing bundles. A bundle appears whole or not at all: it is assembled in a temporary folder
beside the destination, verified by the same loader the station uses, then renamed (or packed
into a temporary archive that is renamed, when ``out`` ends in .tar, .tar.gz or .tgz)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sortline.edge_runtime.bundle import (
    MANIFEST,
    Bundle,
    Manifest,
    is_archive,
    load_bundle,
    manifest_json,
    sha256_file,
)
from sortline.edge_runtime.head import LogisticHead


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
