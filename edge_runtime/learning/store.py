"""The station's embedding memory and its head versions, in one SQLite file (the *store*).

- ``examples``: the fused features of every enrolled example, with its label, where it came
  from and when. Features are raw little-endian float32 bytes; nothing is pickled.
- ``heads``: every head the station has fitted, as a numbered version (its arrays as npz
  bytes, read with ``allow_pickle=False``), with its exits, open-set prototypes and the checks
  it passed. Version 0 is the bundle's own head, which the store never holds.
- ``meta``: which backbone made the features (its sha256: features of another model would be
  meaningless) and which head version is current.

Every change is one SQLite transaction in WAL mode with ``synchronous=FULL``: a process killed
at any moment, or a power loss, leaves the store as it was before the change or after it, never
between (``tests/test_enroll.py`` kills writers at random points to check it).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.bundle import json_finite
from sortline.edge_runtime.model.labels import label_problem

SCHEMA = 1
MAX_EXAMPLES = 200_000  # a station's memory, all classes together
MAX_SOURCE_CHARS = 1000
BUNDLE_VERSION = 0  # the head that came with the bundle


class StoreError(SortlineError, ValueError):
    """A store that cannot be used as asked; the message names the file and the fault."""


def store_for(base: str | Path, backbone_sha256: str) -> Path:
    """The store file of a backbone: ``base`` while it does not exist or holds this backbone's
    examples, else ``<stem>-<first 12 hex digits of the backbone's sha256><suffix>`` beside it. A
    station whose bundle was retrained (another backbone) keeps its own examples and heads there,
    and the first bundle's store stays as it was, for a rollback."""
    base = Path(base)
    if not base.is_file() or _meta(base).get("backbone_sha256", backbone_sha256) == backbone_sha256:
        return base
    return base.with_name(f"{base.stem}-{backbone_sha256[:12]}{base.suffix}")


def _meta(path: Path) -> dict[str, str]:
    """A store file's meta table, read only."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a readable sortline store ({exc})") from exc


@dataclass(frozen=True)
class Examples:
    ids: np.ndarray  # (N,) int64
    labels: tuple[str, ...]  # (N,)
    sources: tuple[str, ...]
    features: np.ndarray  # (N, F) float32
    calibrates: np.ndarray  # (N,) bool: the backbone never trained on it (it may calibrate the open set)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class HeadRecord:
    version: int
    created: str
    parent: int
    labels: tuple[str, ...]
    exits: dict[str, int]
    examples: int  # how many examples it was fitted on
    metrics: dict = field(default_factory=dict)
    head: bytes = b""  # LogisticHead npz bytes
    openset: bytes = b""  # OpenSet npz bytes, or empty
    check_head: bytes = b""  # the head fitted without the held-back examples, which checked it

    def summary(self) -> dict:
        return {"version": self.version, "created": self.created, "parent": self.parent,
                "labels": len(self.labels), "examples": self.examples, "metrics": self.metrics}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def check_label(label: object) -> str:
    """``label`` if it keeps the label rule (``model/labels.py``); :class:`StoreError` otherwise."""
    if (problem := label_problem(label)) is not None:
        raise StoreError(f"{problem}; got {label!r:.60}")
    return label


_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS examples (
        id INTEGER PRIMARY KEY, label TEXT NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL,
        features BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS heads (
        version INTEGER PRIMARY KEY, created TEXT NOT NULL, parent INTEGER NOT NULL, labels TEXT NOT NULL,
        exits TEXT NOT NULL, examples INTEGER NOT NULL, metrics TEXT NOT NULL, head BLOB NOT NULL,
        openset BLOB NOT NULL, check_head BLOB NOT NULL)""",
)
# Whether an example may calibrate the open set: 0 for one the backbone trained on (OpenSet.fit).
_CALIBRATES = "ALTER TABLE examples ADD COLUMN calibrates INTEGER NOT NULL DEFAULT 1"


class _Transaction:
    """One write transaction: taken at once (``BEGIN IMMEDIATE``), committed or rolled back whole."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class EmbeddingStore:
    """One store file, bound to one backbone. Opening creates it when it does not exist."""

    def __init__(self, path: str | Path, backbone_sha256: str, feature_count: int, bundle_name: str = "",
                 create: bool = True) -> None:
        self.path = Path(path)
        self.backbone_sha256, self.feature_count = backbone_sha256, int(feature_count)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no such store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init(backbone_sha256, bundle_name)
        except sqlite3.DatabaseError as exc:  # not a database, or a corrupt one
            raise StoreError(f"{self.path}: not a readable sortline store ({exc})") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open ({exc})") from exc

    @classmethod
    def open_existing(cls, path: str | Path) -> EmbeddingStore:
        """A store as it is, whatever backbone it was made for (to list or roll back heads)."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: no such store")
        meta = _meta(path)
        if "backbone_sha256" not in meta or "feature_count" not in meta:
            raise StoreError(f"{path}: not a sortline store (no backbone recorded)")
        return cls(path, meta["backbone_sha256"], int(meta["feature_count"]), create=False)

    def _init(self, backbone_sha256: str, bundle_name: str) -> None:
        with self._write():
            for table in _TABLES:
                self._db.execute(table)
            if "calibrates" not in {row[1] for row in self._db.execute("PRAGMA table_info(examples)")}:
                self._db.execute(_CALIBRATES)  # a store made before the column: every example calibrates
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                rows = {"schema": str(SCHEMA), "backbone_sha256": backbone_sha256,
                        "feature_count": str(self.feature_count), "bundle": bundle_name,
                        "current": str(BUNDLE_VERSION), "created": _now()}
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
                return
        if meta.get("schema") != str(SCHEMA):
            raise StoreError(f"{self.path}: store schema {meta.get('schema')!r}; this runtime reads {SCHEMA}")
        if meta.get("backbone_sha256") != backbone_sha256 or meta.get("feature_count") != str(self.feature_count):
            raise StoreError(
                f"{self.path}: made with the backbone {meta.get('backbone_sha256', '?')[:12]}… "
                f"({meta.get('feature_count')} features, bundle {meta.get('bundle')!r}); this bundle's is "
                f"{backbone_sha256[:12]}… ({self.feature_count}). Its examples would mean nothing to this model: "
                "use a new store and enroll again")

    def _write(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- examples -----------------------------------------------------------------------------

    def add(self, label: str, features: np.ndarray, source: str) -> list[int]:
        """Add examples of ``label`` (rows of ``features``), all or none; returns their ids."""
        return self.add_groups({label: features}, source)[label]

    def add_groups(self, groups: dict[str, np.ndarray], source: str, meta: dict[str, str] | None = None,
                   calibrates: bool = True) -> dict[str, list[int]]:
        """Add examples of several labels and set ``meta`` keys, in one transaction; not
        ``calibrates``: the backbone trained on them (the open set leaves them out)."""
        checked = {}
        for label, features in groups.items():
            x = np.atleast_2d(np.asarray(features, dtype=np.float32))
            if x.ndim != 2 or x.shape[1] != self.feature_count or not len(x):
                raise StoreError(f"examples of shape {x.shape}; this store holds rows of {self.feature_count} features")
            if not np.isfinite(x).all():
                raise StoreError("examples with NaN or infinite features are not stored")
            checked[check_label(label)] = x
        source = str(source)[:MAX_SOURCE_CHARS]
        created = _now()
        ids: dict[str, list[int]] = {}
        with self._write() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM examples").fetchone()
            adding = sum(len(x) for x in checked.values())
            if count + adding > MAX_EXAMPLES:
                raise StoreError(f"{self.path}: holds {count} examples; {adding} more would pass {MAX_EXAMPLES}")
            for label, x in checked.items():
                ids[label] = [int(db.execute(
                    "INSERT INTO examples (label, source, created, features, calibrates) VALUES (?, ?, ?, ?, ?)",
                    (label, source, created, row.astype("<f4").tobytes(), int(calibrates))).lastrowid) for row in x]
            for key, value in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        return ids

    def remove(self, label: str) -> int:
        """Forget every example of ``label``; returns how many."""
        with self._write() as db:
            return db.execute("DELETE FROM examples WHERE label = ?", (label,)).rowcount

    def examples(self) -> Examples:
        rows = self._db.execute("SELECT id, label, source, features, calibrates FROM examples ORDER BY id").fetchall()
        width = self.feature_count * 4
        bad = [r[0] for r in rows if len(r[3]) != width]
        if bad:
            raise StoreError(f"{self.path}: examples {bad[:5]} have the wrong size; the store is damaged")
        features = (np.frombuffer(b"".join(r[3] for r in rows), "<f4").reshape(len(rows), self.feature_count)
                    if rows else np.zeros((0, self.feature_count), np.float32))
        return Examples(np.array([r[0] for r in rows], np.int64), tuple(r[1] for r in rows),
                        tuple(r[2] for r in rows), features.astype(np.float32),
                        np.array([bool(r[4]) for r in rows], bool))

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT label, COUNT(*) FROM examples GROUP BY label ORDER BY MIN(id)"))

    # --- heads ----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def current(self) -> int:
        return int(self.meta("current") or BUNDLE_VERSION)

    def commit_head(self, record: HeadRecord, activate: bool = True) -> int:
        """Store a new head version (and make it current), in one transaction; returns its number."""
        metrics = json.dumps(json_finite(record.metrics))
        with self._write() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM heads").fetchone()
            version = int(last) + 1
            db.execute("INSERT INTO heads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (version, _now(), record.parent, json.dumps(list(record.labels)), json.dumps(record.exits),
                        record.examples, metrics, record.head, record.openset, record.check_head))
            if activate:
                db.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(version),))
        return version

    def activate(self, version: int) -> None:
        with self._write() as db:
            if version != BUNDLE_VERSION and db.execute("SELECT 1 FROM heads WHERE version = ?",
                                                        (version,)).fetchone() is None:
                raise StoreError(f"{self.path}: no head version {version}")
            db.execute("UPDATE meta SET value = ? WHERE key = 'current'", (str(int(version)),))

    def rollback(self, version: int | None = None) -> int:
        """Make ``version`` current (default: the current one's parent), after reading it back
        whole; returns it."""
        from sortline.edge_runtime.model.head import HeadError, LogisticHead, OpenSet

        if version is None:
            if self.current == BUNDLE_VERSION:
                raise StoreError(f"{self.path}: the bundle's own head is current; nothing to roll back")
            version = self.head(self.current).parent
        if version != BUNDLE_VERSION:
            record = self.head(version)
            try:
                LogisticHead.load(io.BytesIO(record.head))
                if record.openset:
                    OpenSet.from_bytes(record.openset)
            except HeadError as exc:
                raise StoreError(f"{self.path}: head version {version} is damaged ({exc})") from exc
        self.activate(version)
        return version

    def head(self, version: int) -> HeadRecord:
        row = self._db.execute("SELECT * FROM heads WHERE version = ?", (int(version),)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no head version {version}")
        return _record(row)

    def heads(self) -> list[HeadRecord]:
        return [_record(row) for row in self._db.execute(
            "SELECT version, created, parent, labels, exits, examples, metrics, x'', x'', x'' FROM heads "
            "ORDER BY version")]

    def integrity(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]


def _record(row: tuple) -> HeadRecord:
    version, created, parent, labels, exits, examples, metrics, head, openset, check_head = row
    try:
        return HeadRecord(int(version), str(created), int(parent), tuple(json.loads(labels)),
                          {str(k): int(v) for k, v in json.loads(exits).items()}, int(examples),
                          json.loads(metrics), bytes(head), bytes(openset), bytes(check_head))
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"head version {version}: malformed record ({exc})") from exc
