"""Signed bundles, the station's refusal of bundles it cannot trust or run, and publishing that
never leaves a path missing or half-written, even when the writer is killed."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    keygen,
    load_bundle,
    sign_bundle,
    write_bundle,
)
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.hardware import files
from sortline.hardware.files import atomic_file, publish_dir, staging_dir
from sortline.hardware.recording import Recording, RecordingError, RecordingWriter


@pytest.fixture
def keys(tmp_path):
    return keygen(tmp_path / "keys" / "line3")


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.name == "line3.pub" and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(BundleError, match="never overwritten"):
        keygen(private)


@pytest.mark.parametrize("archive", [False, True])
def test_signed_bundle_verifies_with_its_key_only(tmp_path, tiny_bundle, keys, archive):
    private, public = keys
    path = tmp_path / ("b.tar.gz" if archive else "b")
    if archive:
        write_bundle(path, tiny_bundle.manifest, tiny_bundle.backbone_path, tiny_bundle.load_head())
    else:
        shutil.copytree(tiny_bundle.root, path)
    with pytest.raises(BundleError, match="unsigned"):
        load_bundle(path, public_key=public)
    sign_bundle(path, private)
    assert load_bundle(path, public_key=public).manifest.name == tiny_bundle.manifest.name
    _, other = keygen(tmp_path / "keys" / "other")
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(path, public_key=other)


def test_a_signed_manifest_cannot_be_edited(tmp_path, tiny_bundle, keys):
    private, public = keys
    root = Path(shutil.copytree(tiny_bundle.root, tmp_path / "b"))
    sign_bundle(root, private)
    data = json.loads((root / MANIFEST).read_text())
    data["decision"]["exits"] = {label: 0 for label in data["labels"]}  # reroute every class to exit 0
    (root / MANIFEST).write_text(json.dumps(data))
    load_bundle(root)  # the hashes still check out: only the signature catches it
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(root, public_key=public)
    (root / SIGNATURE).write_text("not base64 !!")
    with pytest.raises(BundleError, match="unreadable signature"):
        load_bundle(root, public_key=public)


def test_cli_keygen_sign_verify(tmp_path, tiny_bundle, capsys):
    root = shutil.copytree(tiny_bundle.root, tmp_path / "b")
    key = tmp_path / "k"
    assert main(["bundle", "keygen", str(key)]) == 0
    assert main(["bundle", "verify", str(root), "--key", f"{key}.pub", "--json"]) == 2
    assert "unsigned" in capsys.readouterr().err
    assert main(["bundle", "sign", str(root), "--key", str(key)]) == 0
    assert main(["bundle", "verify", str(root), "--key", f"{key}.pub", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["signed"] and result["ran"]["embedding"] == [4, tiny_bundle.manifest.embedding_dim]
    assert main(["bundle", "sign", str(root), "--key", f"{key}.pub"]) == 2  # a public key cannot sign
    assert "not a readable private key" in capsys.readouterr().err


def test_station_refuses_an_unsigned_bundle_when_its_file_names_a_key(tmp_path, tiny_bundle, keys):
    with pytest.raises(BundleError, match="unsigned"):
        ItemPipeline.for_station(tiny_bundle.root, threads=1, public_key=keys[1])


# --- publishing under kill -9 -----------------------------------------------------------------


def _write_bundles_forever(out: str, source: str) -> None:
    bundle = load_bundle(source)
    head = bundle.load_head()
    while True:
        write_bundle(Path(out), bundle.manifest, bundle.backbone_path, head)


def _record_forever(out: str) -> None:
    n = 0
    while True:
        target = Path(out) / f"rec{os.getpid()}-{n}"
        writer = RecordingWriter(target, ["controller"], time.monotonic())
        for i in range(50):
            writer.serial("controller", b"$1,%d,HB,0,-1*0000\n" % i, time.monotonic())
        writer.finish({"devices": ["controller"], "views": 0}, [])
        n += 1


def _kill_at_random(target, args, kills: int, rng: random.Random, check) -> int:
    """Start ``target`` in a forked process, kill -9 it after a random 2-60 ms, ``check()``;
    ``kills`` times. Returns how many checks failed."""
    context = multiprocessing.get_context("fork")
    failures = 0
    for _ in range(kills):
        process = context.Process(target=target, args=args, daemon=True)
        process.start()
        time.sleep(rng.uniform(0.002, 0.06))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        failures += not check()
    return failures


def test_killed_writers_never_leave_a_path_missing_or_half_written(tmp_path, tiny_bundle):
    """kill -9 at random points of folder and archive exports and of recordings (120 kills):
    afterwards, and at every instant in between for a concurrent reader, the path holds a whole
    bundle; a recording is whole or absent; the next writer sweeps what killed ones left."""
    rng = random.Random(13)
    out, archive = tmp_path / "line" / "bundle", tmp_path / "line" / "bundle.tar"
    head = tiny_bundle.load_head()
    for path in (out, archive):
        write_bundle(path, tiny_bundle.manifest, tiny_bundle.backbone_path, head)
    reader_failures: list[str] = []
    stop = threading.Event()

    def read_continuously() -> None:
        while not stop.is_set():
            try:
                load_bundle(out)
            except BundleError as exc:
                reader_failures.append(str(exc))

    reader = threading.Thread(target=read_continuously, daemon=True)
    reader.start()
    try:
        failed = _kill_at_random(_write_bundles_forever, (str(out), str(tiny_bundle.root)), 50, rng,
                                 lambda: load_bundle(out).manifest.name == tiny_bundle.manifest.name)
    finally:
        stop.set()
        reader.join()
    failed += _kill_at_random(_write_bundles_forever, (str(archive), str(tiny_bundle.root)), 30, rng,
                              lambda: load_bundle(archive).manifest.name == tiny_bundle.manifest.name)
    recordings = tmp_path / "recordings"
    recordings.mkdir()

    def recordings_whole() -> bool:
        try:
            for path in recordings.iterdir():
                if not path.name.startswith("."):  # staging folders are not recordings yet
                    Recording.open(path)
        except RecordingError:
            return False
        return True

    failed += _kill_at_random(_record_forever, (str(recordings),), 40, rng, recordings_whole)
    print(f"kills 120 (50 folder exports with a concurrent reader, 30 archive exports, 40 recordings), "
          f"unloadable states {failed}, reader failures {len(reader_failures)}")
    assert failed == 0 and reader_failures == []
    # the next writer of each kind sweeps what the killed ones left
    write_bundle(out, tiny_bundle.manifest, tiny_bundle.backbone_path, head)
    write_bundle(archive, tiny_bundle.manifest, tiny_bundle.backbone_path, head)
    RecordingWriter(recordings / "next", ["controller"], 0.0).finish({}, [])
    leftovers = [p.name for p in (*out.parent.iterdir(), *recordings.iterdir()) if p.name.startswith(".")]
    assert leftovers == []


def _exchange_works(folder: Path) -> bool:
    a, b = folder / "exchange-a", folder / "exchange-b"
    a.mkdir()
    b.mkdir()
    try:
        return files._exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


def test_publish_replaces_a_folder_in_one_step(tmp_path, monkeypatch):
    """The destination is never missing: the old folder is swapped for the new one by one
    exchange, and never renamed away (which the two-rename fallback would do)."""
    if not _exchange_works(tmp_path):
        pytest.skip("this kernel or file system has no renameat2(RENAME_EXCHANGE): only the fallback can run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    staging = staging_dir(out, "test")
    (staging / "new").write_text("2")
    renamed = []
    real_rename = Path.rename

    def rename(self: Path, target):
        renamed.append(self)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    publish_dir(staging, out)
    assert out not in renamed, "the destination was renamed away: the folder was missing for a moment"
    assert sorted(p.name for p in out.iterdir()) == ["new"] and not staging.exists()


def test_publish_falls_back_to_two_renames_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # as on a system without the exchange
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    staging = staging_dir(out, "test")
    (staging / "new").write_text("2")
    publish_dir(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["new"] and "two renames" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_an_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "state.pt"
    out.write_bytes(b"old")
    with atomic_file(out, "state") as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_bytes(b"new")
        assert out.read_bytes() == b"old"  # unchanged until the block ends
    assert out.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_file(out, "state") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    left = tmp_path / f".state.pt.state-{_dead_pid()}-abc"  # a writer killed mid-way
    left.write_bytes(b"x")
    with atomic_file(out, "state") as tmp:
        tmp.write_bytes(b"newer")
    assert not left.exists() and out.read_bytes() == b"newer"


def _dead_pid() -> int:
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    return process.pid


def test_an_extraction_left_by_a_killed_station_is_removed_at_the_next_load(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    left = tmp_path / "tmp" / f"sortline-bundle-{_dead_pid()}-abc123"
    (left / "bundle").mkdir(parents=True)
    (left / "bundle" / "backbone.onnx").write_bytes(b"\0" * 1000)
    alive = tmp_path / "tmp" / f"sortline-bundle-{os.getpid()}-mine"  # this process's own: kept
    alive.mkdir()
    archive = tmp_path / "b.tar"
    write_bundle(archive, tiny_bundle.manifest, tiny_bundle.backbone_path, tiny_bundle.load_head())
    load_bundle(archive)
    assert not left.exists() and alive.exists()


def test_every_command_sweeps_what_killed_runs_left_in_the_temporary_folder(tmp_path, tiny_bundle, monkeypatch):
    """A killed station leaves its unpacked bundle, a killed simulation its lines' serial links:
    the next command of any kind removes them (those of live processes stay)."""
    from sortline.edge_runtime.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead = _dead_pid()
    left = [tmp_path / "tmp" / f"sortline-{kind}-{dead}-x1y2z3" for kind in ("bundle", "line", "replay")]
    for folder in left:
        folder.mkdir()
        (folder / "controller").write_bytes(b"\0" * 1000)
    alive = tmp_path / "tmp" / f"sortline-line-{os.getpid()}-mine"
    alive.mkdir()
    assert main(["bundle", "verify", str(tiny_bundle.root)]) == 0
    assert not any(folder.exists() for folder in left) and alive.exists()


def test_an_archive_is_not_unpacked_into_the_last_of_a_disk(tmp_path, tiny_bundle, monkeypatch):
    import collections

    from sortline.edge_runtime.model import bundle as bundle_module

    archive = tmp_path / "b.tar"
    write_bundle(archive, tiny_bundle.manifest, tiny_bundle.backbone_path, tiny_bundle.load_head())
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(bundle_module.shutil, "disk_usage", lambda path: usage(1 << 40, 1 << 40, 200 << 20))
    before = set(Path(tempfile.gettempdir()).glob(f"sortline-bundle-{os.getpid()}-*"))
    with pytest.raises(BundleError, match="MiB to spare"):
        load_bundle(archive)
    assert set(Path(tempfile.gettempdir()).glob(f"sortline-bundle-{os.getpid()}-*")) == before  # nothing left


def test_a_full_inbox_drops_the_oldest_message_counted():
    import queue

    from sortline.hardware.protocol import Ack
    from sortline.hardware.serial_link import Received, SerialLink

    link = SerialLink("loop://", "controller", inbox=queue.Queue(maxsize=3))
    for item in range(5):
        link._put(Received("controller", Ack(item), 0.0))
    assert link.dropped == 2 and [link.inbox.get().message.item_id for _ in range(3)] == [2, 3, 4]
