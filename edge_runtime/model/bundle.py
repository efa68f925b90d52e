"""The bundle: what a station loads, and how one is written (by the desktop's export and by a
device that refits its head). A folder with ``manifest.json``, the backbone as ONNX and
the head as arrays, or that folder as one tar archive (``.tar``, ``.tar.gz``, ``.tgz``).
Loading checks the schema, every value's range (exits the controller accepts, finite numbers,
sizes) and the sha256 of every file, and refuses anything else with an error that says what is
wrong. Nothing in a bundle is unpickled.

A bundle may be signed: ``manifest.sig`` holds an ed25519 signature over ``manifest.json``,
which lists every other file's hash, so one signature covers the whole bundle. A station whose
file names a public key loads only bundles that key's private half signed
(``docs/security.md``).
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tarfile
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sortline.edge_runtime.errors import SortlineError
from sortline.hardware.files import atomic_file, private_tempdir, publish_dir, publish_file, staging_dir

from .fusion import FusionSpec
from .head import HeadError, LogisticHead
from .labels import label_problem
from .policy import DecisionPolicy, PolicyError
from .preprocess import InputSpec

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Sizes a bundle may have: a manifest is a few kB, a backbone tens of MB.
MAX_MANIFEST_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 4 << 30  # all files together, also when an archive is unpacked
MAX_ARCHIVE_MEMBERS = 256
KEEP_FREE_BYTES = 256 << 20  # an archive is not unpacked into the last 256 MiB of a disk
MAX_LABELS = 10_000
MAX_NAME_CHARS = 200
MAX_EMBEDDING_DIM = 65_536


class BundleError(SortlineError, ValueError):
    """A bundle that must not be loaded; the message names the file and the fault."""


def _decision(data: object) -> DecisionPolicy:
    try:
        return DecisionPolicy.from_dict(data, "manifest decision")
    except PolicyError as exc:
        raise BundleError(str(exc)) from None


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"manifest {where}: {value!r:.40} is not text")
    return value


def _typed(value: object, kind: type, where: str) -> typing.Any:
    if not isinstance(value, kind):
        raise BundleError(f"manifest {where}: {type(value).__name__} {value!r:.40}, not a JSON "
                          f"{ {dict: 'object', list: 'array'}.get(kind, kind.__name__)}")
    return value


def _hashes(value: object) -> dict[str, str]:
    files = _typed(value, dict, "files")
    for name, digest in files.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BundleError(f"manifest files.{name!s:.60}: {digest!r:.40} is not a sha256 in hex")
    return dict(files)


def _whole(value: object, where: str) -> int:
    """A JSON whole number (not a bool, not 2.5, not a 250-digit string)."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
        raise BundleError(f"manifest {where}: {value!r:.40} is not a whole number in range")
    return value


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

    @property
    def backbone_sha256(self) -> str:
        """The backbone file's sha256 as listed ("" in a manifest not yet written; a loaded one
        always lists it, and its file was checked against it)."""
        return self.files.get(self.backbone, "")

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
                name=_text(data["name"], "name"),
                created=_text(data["created"], "created"),
                input=InputSpec.from_dict(_typed(data["input"], dict, "input")),
                embedding_dim=_whole(data["embedding_dim"], "embedding_dim"),
                labels=tuple(_text(x, "labels") for x in _typed(data["labels"], list, "labels")),
                decision=_decision(_typed(data["decision"], dict, "decision")),
                fusion=FusionSpec.from_dict(_typed(data["fusion"], dict, "fusion")),
                backbone=_text(data["backbone"], "backbone"),
                head=None if data["head"] is None else _text(data["head"], "head"),
                metrics=_typed(data["metrics"], dict, "metrics"),
                files=_hashes(data["files"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"manifest field is malformed: {exc!r}") from exc
        if set(manifest.labels) - set(manifest.decision.exits):
            raise BundleError(f"labels without an exit: {sorted(set(manifest.labels) - set(manifest.decision.exits))}")
        if not 0 < len(manifest.name) <= MAX_NAME_CHARS or len(manifest.labels) > MAX_LABELS:
            raise BundleError(f"manifest name of {len(manifest.name)} characters or {len(manifest.labels)} labels: "
                              f"names are 1..{MAX_NAME_CHARS} characters, at most {MAX_LABELS} labels")
        if len(set(manifest.labels)) != len(manifest.labels):
            raise BundleError("manifest labels must be unique")
        for label in manifest.labels:
            if (problem := label_problem(label)) is not None:
                raise BundleError(f"manifest label {label!r:.60}: {problem}")
        if not 0 < manifest.embedding_dim <= MAX_EMBEDDING_DIM:
            raise BundleError(f"manifest embedding_dim {manifest.embedding_dim} is outside 1..{MAX_EMBEDDING_DIM}")
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


def json_finite(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(json_finite(manifest.to_dict()), indent=2, sort_keys=False) + "\n"


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
        expected = self.manifest.fusion.feature_count(self.manifest.embedding_dim)
        try:
            head = LogisticHead.load(self.root / self.manifest.head, len(self.manifest.labels), expected)
        except HeadError as exc:
            raise BundleError(str(exc)) from exc
        if head.n_features != expected or head.labels != self.manifest.labels:
            raise BundleError(
                f"head does not match the manifest: {head.n_features} features for {head.labels}, "
                f"expected {expected} for {self.manifest.labels}"
            )
        return head


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def _extract(archive: Path) -> Path:
    """Unpack a bundle archive into a private temporary folder (removed at exit; one left by a
    killed process is removed by the next extraction)."""
    target = private_tempdir("bundle")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            total, members = 0, []
            for member in tar:  # headers first: a small archive must not unpack into 1 GB
                members.append(member)
                total += member.size
                if len(members) > MAX_ARCHIVE_MEMBERS or total > MAX_BUNDLE_BYTES:
                    raise BundleError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} entries or "
                                      f"{MAX_BUNDLE_BYTES >> 20} MiB unpacked; not a bundle")
            _check_members(archive, members)
            free = shutil.disk_usage(target).free - KEEP_FREE_BYTES  # one extraction never fills the disk
            if total > free:
                raise BundleError(f"{archive}: unpacks to {total >> 20} MiB, and {target.parent} has "
                                  f"{max(0, free) >> 20} MiB to spare")
            # The "data" filter refuses absolute paths, "..", links out of the folder and devices.
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"{archive}: not a readable bundle archive ({exc})") from exc
    except BundleError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for root in [target, *sorted(d for d in target.iterdir() if d.is_dir())]:
        if (root / MANIFEST).is_file():
            return root
    raise BundleError(f"{archive}: the archive holds no {MANIFEST}")


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """One bundle an archive: one manifest, at its top or in one folder, nothing beside it."""
    manifests = [m.name for m in members if Path(m.name).name == MANIFEST]
    if len(manifests) > 1:
        raise BundleError(f"{archive}: {len(manifests)} manifests ({', '.join(manifests[:4])}); an archive holds "
                          "one bundle")
    if manifests:
        top = Path(manifests[0]).parent
        if outside := [m.name for m in members if top not in Path(m.name).parents and Path(m.name) != top]:
            raise BundleError(f"{archive}: {outside[:4]} lie outside the bundle's folder {str(top) or '.'}")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_manifest(root: Path) -> tuple[bytes, Manifest]:
    path = root / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes, over the {MAX_MANIFEST_BYTES} a manifest may have")
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from exc
    return raw, Manifest.from_dict(data)


def load_bundle(path: str | Path, public_key: str | Path | None = None) -> Bundle:
    """Read and verify a bundle folder or archive; raises :class:`BundleError` on any fault.
    With ``public_key`` (a file written by :func:`keygen`), the bundle must carry a valid
    signature by its private key."""
    path = Path(path)
    if path.is_file() and is_archive(path):
        root = _extract(path)
    elif path.is_dir():
        root = path
    else:
        raise BundleError(f"{path}: no such bundle folder or archive")
    for _attempt in range(3):  # a bundle swapped while it was read is read again
        raw, manifest = _read_manifest(root)
        try:
            _check_files(root, manifest)
        except BundleError:
            if _changed(root / MANIFEST, raw):
                continue
            raise
        if public_key is not None:
            verify_signature(root, raw, load_public_key(public_key))
        return Bundle(root=root, manifest=manifest)
    raise BundleError(f"{path}: changed three times while it was read")


def _changed(path: Path, raw: bytes) -> bool:
    try:
        return path.read_bytes() != raw
    except OSError:
        return True


def _check_files(root: Path, manifest: Manifest) -> None:
    listed = {Path(name) for name in manifest.files} | {Path(MANIFEST), Path(SIGNATURE)}
    folders = {parent for name in listed for parent in name.parents}
    try:
        present = [p.relative_to(root) for p in itertools.islice(root.rglob("*"), 4 * MAX_ARCHIVE_MEMBERS)]
    except OSError as exc:
        raise BundleError(f"{root}: unreadable ({exc})") from exc
    if len(present) == 4 * MAX_ARCHIVE_MEMBERS:
        raise BundleError(f"{root}: {len(present)} entries or more; a bundle holds a few files")
    if unlisted := sorted(str(p) for p in present if p not in listed and p not in folders):
        raise BundleError(f"{root}: {unlisted[:4]} not listed in the manifest; a bundle holds only the files its "
                          "manifest hashes (an ONNX model's external data among them)")
    total = 0
    for name, expected in manifest.files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts or name in (MANIFEST, SIGNATURE):
            raise BundleError(f"manifest names a file outside the bundle: {name}")
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing")
        total += file.stat().st_size
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"{root}: files over {MAX_BUNDLE_BYTES >> 20} MiB; not a bundle")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(f"{file}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…")


# --- signing --------------------------------------------------------------------------------


SIGNING_KEY_ENV = "SORTLINE_SIGNING_KEY"


def default_signing_key() -> Path:
    """Where ``demo``, ``fit`` and ``export`` keep the key they sign with: ``$SORTLINE_SIGNING_KEY``,
    else ``$XDG_CONFIG_HOME/sortline/signing.key`` (``~/.config/sortline/signing.key``)."""
    if given := os.environ.get(SIGNING_KEY_ENV):
        return Path(given)
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "sortline" / "signing.key"


def signing_key(path: Path | None = None) -> Path:
    """The private key to sign with: ``path`` (which must exist), else the default one, made
    (:func:`keygen`) the first time it is needed."""
    if path is not None:
        if not Path(path).is_file():
            raise BundleError(f"{path}: no such private key (sortline bundle keygen {path} makes one)")
        return Path(path)
    key = default_signing_key()
    if not key.exists():
        keygen(key)
        log.warning("made a signing key %s; stations that run its bundles name %s as [station] public_key",
                    key, public_key_path(key))
    return key


def public_key_path(private_path: str | Path) -> Path:
    """Where a private key's public half lies: ``KEY.pub`` beside ``KEY``."""
    private_path = Path(private_path)
    return private_path.with_name(private_path.name + ".pub")


def keygen(private_path: Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: ``private_path`` (PEM, readable by its owner only) and
    ``private_path.pub`` (PEM), which a station file names. Refuses to overwrite a key."""
    private_path = Path(private_path)
    public_path = public_key_path(private_path)
    if private_path.exists() or public_path.exists():
        raise BundleError(f"{private_path}: a key is already there; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _load_key(path: str | Path, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    path = Path(path)
    kind = "private" if private else "public"
    try:
        data = path.read_bytes()
        if len(data) > 4096:
            raise ValueError("too large for a key file")
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except FileNotFoundError:
        raise BundleError(f"{path}: no such {kind} key file") from None
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not a readable {kind} key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise BundleError(f"{path}: not an ed25519 {kind} key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    return _load_key(path, private=False)


def verify_signature(root: Path, manifest_bytes: bytes, key: Ed25519PublicKey) -> None:
    sig_path = root / SIGNATURE
    try:
        signature = base64.b64decode(sig_path.read_bytes()[:256].strip(), validate=True)
    except FileNotFoundError:
        raise BundleError(f"{root}: unsigned ({SIGNATURE} is missing), and only signed bundles may run here") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{sig_path}: unreadable signature ({exc})") from None
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{root}: the signature does not match (another key signed it, or the manifest "
                          "changed since)") from None


def sign_bundle(path: str | Path, private_key: str | Path) -> Bundle:
    """Sign a verified bundle in place: a folder gains ``manifest.sig``; an archive is repacked
    with it and replaced in one step."""
    path = Path(path)
    key = _load_key(private_key, private=True)
    bundle = load_bundle(path)
    signature = base64.b64encode(key.sign((bundle.root / MANIFEST).read_bytes())) + b"\n"
    if is_archive(path):
        staging = staging_dir(path, "bundle")
        try:
            shutil.copytree(bundle.root, staging, dirs_exist_ok=True)
            (staging / SIGNATURE).write_bytes(signature)
            _publish_archive(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        with atomic_file(bundle.root / SIGNATURE, "signature") as tmp:
            tmp.write_bytes(signature)
    return load_bundle(path)


# --- writing --------------------------------------------------------------------------------
# A bundle appears whole or not at all, and an older bundle at the same path stays in place until
# the new one replaces it in one step (hardware/files.py): it is assembled in a staging folder
# beside the destination, verified by the same loader the station uses, then swapped in (or
# packed into an archive beside it that is renamed over ``out``).


def write_bundle(out: Path, manifest: Manifest, backbone: Path, head: LogisticHead | None,
                 extra_files: Mapping[str, Path] | None = None) -> Bundle:
    """Write ``out`` (replacing an older bundle there) and return it, loaded and verified.

    Without a head the bundle only embeds; ``manifest.head`` is then set to None."""
    out = Path(out)
    staging = staging_dir(out, "bundle")
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
            publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(out)


def _publish_archive(staging: Path, out: Path) -> None:
    packed = staging.with_name(staging.name + ".tar")  # a leftover the next writer sweeps
    try:
        with tarfile.open(packed, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tar:
            tar.add(staging, arcname="bundle")
        publish_file(packed, out)
    finally:
        packed.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def with_policy(bundle: Bundle, policy: DecisionPolicy, out: Path, private_key: str | Path | None = None) -> Bundle:
    """A new version of ``bundle`` at ``out`` with ``policy`` as its decision policy (every
    other file as it was), signed with ``private_key`` when given."""
    if missing := set(bundle.manifest.labels) - set(policy.exits):
        raise BundleError(f"the policy gives no exit to {sorted(missing)}")
    m = bundle.manifest
    extra = {name: bundle.root / name for name in m.files if name not in (m.backbone, m.head)}
    head = bundle.load_head() if m.head is not None else None
    written = write_bundle(Path(out), dataclasses.replace(m, decision=policy, files={}, created=""),
                           bundle.backbone_path, head, extra_files=extra)
    return sign_bundle(out, private_key) if private_key is not None else written
