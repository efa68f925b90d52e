"""Every input in the hostile corpus (tests/hostile/, see make_corpus.py) meets its real
boundary and must end as the clear error that expected.json names: never a traceback, a hang,
or an accept. ``python tests/test_hostile.py`` prints the tally."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sortline.edge_runtime.daemon.config import ConfigError, load_station_file
from sortline.edge_runtime.datasets import DatasetError, load_image_set
from sortline.edge_runtime.learning.enroll import bundle_examples
from sortline.edge_runtime.model.bundle import MANIFEST, BundleError, load_bundle, sha256_file
from sortline.edge_runtime.model.choice import load_check_set
from sortline.edge_runtime.model.fusion import ReadingLimits
from sortline.edge_runtime.model.pipeline import ItemPipeline, PipelineInputError
from sortline.hardware.camera import FrameError
from sortline.hardware.images import decode_image
from sortline.hardware.protocol import FIELD_RANGES, Parser, ScaleReading, TapReading

CORPUS = Path(__file__).parent / "hostile"
sys.path.insert(0, str(CORPUS))
from line_check import clean_line_with  # noqa: E402  (tests/hostile/line_check.py)

EXPECTED: dict[str, dict[str, str]] = json.loads((CORPUS / "expected.json").read_text())
CASES = [(kind, name) for kind, names in EXPECTED.items() for name in names]


class Accepted(AssertionError):
    """The boundary let a hostile input through."""


def _serial(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    parser = Parser("corpus")
    messages = parser.feed(path.read_bytes()) + parser.feed(b"\n")  # a newline ends an open frame
    if expected == "implausible":
        if len(messages) != 1:
            raise Accepted(f"expected one parsed frame, got {messages}")
        readings_expected = 5 if type(messages[0]).__name__ == "TapReading" else 1
        problem = ReadingLimits().check(messages[0], readings_expected)
        if problem is None:
            raise Accepted(f"{messages[0]} passed the reading limits")
        return problem
    for message in messages:
        for field, (lo, hi) in FIELD_RANGES[message.TYPE].items():
            assert lo <= getattr(message, field) <= hi
    if messages or getattr(parser.stats, expected) < 1:
        raise Accepted(f"parsed {messages}; counters {parser.stats.as_dict()}")
    return expected


def _apply(data: dict, key: str, value: object) -> None:
    head, _, rest = key.partition(".")
    if head == "files" or not rest:  # file names have dots of their own
        if rest:
            data[head][rest] = value
        else:
            data[head] = value
        return
    _apply(data[head], rest, value)


def _bundle_with(edit: dict, work: Path, bundle_root: Path) -> Path:
    root = Path(shutil.copytree(bundle_root, work / "b", dirs_exist_ok=True))
    text = (root / MANIFEST).read_text()
    if "!raw" in edit:  # the manifest's text replaced
        (root / MANIFEST).write_text(edit["!raw"])
    elif "!raw_bytes" in edit:
        (root / MANIFEST).write_bytes(bytes.fromhex(edit["!raw_bytes"]))
    elif "!raw_sub" in edit:
        old, new = edit["!raw_sub"]
        assert old in text
        (root / MANIFEST).write_text(text.replace(old, new, 1))
    else:
        data = json.loads(text)
        for key, value in edit.items():
            _apply(data, key, value)
        (root / MANIFEST).write_text(json.dumps(data))
    return root


def _manifest(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    root = _bundle_with(json.loads(path.read_text()), work, bundle_root)
    load_bundle(root)
    raise Accepted("the bundle loaded")


def _model(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    if path.suffix == ".json":  # a manifest edit on a real model
        root = _bundle_with(json.loads(path.read_text()), work, bundle_root)
    else:  # another model in place of the backbone, its hash updated: the manifest checks out
        root = Path(shutil.copytree(bundle_root, work / "b", dirs_exist_ok=True))
        shutil.copyfile(path, root / "backbone.onnx")
    data = json.loads((root / MANIFEST).read_text())
    data["files"]["backbone.onnx"] = sha256_file(root / "backbone.onnx")
    (root / MANIFEST).write_text(json.dumps(data))
    bundle = load_bundle(root)
    try:  # the station's own path first: choosing a runtime runs the model before anything else
        ItemPipeline.for_station(bundle, threads=1, budget_s=0.05)
    except BundleError:
        pass
    else:
        raise Accepted("the station would run this bundle")
    ItemPipeline(bundle, threads=1)  # and the check that `bundle verify` and reloads use
    raise Accepted("bundle verify would pass this bundle")


def _station_file(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    """What serve checks before it takes items: the file, signing, the bundle's needs, the cameras."""
    station = load_station_file(path)
    station.check_signing()
    if station.station.public_key is not None:  # a key it names must exist and be one
        load_bundle(bundle_root, public_key=station.file(station.station.public_key))
    manifest = load_bundle(bundle_root).manifest
    station.check_bundle(manifest.input, manifest.decision.exits, manifest.decision.safe_exit)
    station.build_rig()  # never reached in the corpus: its cameras are not on this machine
    raise Accepted("the station would start")


def _image(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    image = decode_image(path.read_bytes(), what=path.name)
    raise Accepted(f"decoded a {image.shape} image")


def _archive(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    outside = [Path("/tmp/sortline-absolute.txt"), path.parent.parent / "escaped.txt"]
    try:
        load_bundle(path)
    finally:
        if written := [str(p) for p in outside if p.exists()]:
            raise Accepted(f"wrote outside its folder: {written}")
    raise Accepted("the archive loaded")


def _pipeline(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    case = json.loads(path.read_text())
    pipeline = ItemPipeline(load_bundle(bundle_root), threads=1)
    shape = case.get("shape", [pipeline.manifest.input.views, pipeline.manifest.embedding_dim])
    embeddings = np.full(shape, float(case.get("fill", 0.5)), np.float32)
    good = [TapReading(7, i, 5, 8.4, 0.5, 9.7, 1500 + i) for i in range(5)]
    types = {cls.TYPE: cls for cls in (TapReading, ScaleReading)}
    readings = [types[kind](**fields) for kind, fields in case["readings"]] if "readings" in case else good
    decision = pipeline.decide(7, embeddings, readings)
    views_only = pipeline.decide(8, embeddings, [])
    if expected != "left out" or pipeline.rejected_readings != 1 or decision.probabilities != views_only.probabilities:
        raise Accepted(f"decided {decision.label} at {decision.confidence:.3f} on these readings")
    return expected


def _bundle_file(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    target = {"head": "head.npz", "check": "check.npz", "examples": "examples.npz"}[path.name.split("-")[0]]
    root = Path(shutil.copytree(bundle_root, work / "b", dirs_exist_ok=True))
    shutil.copyfile(path, root / target)
    data = json.loads((root / MANIFEST).read_text())
    data["files"][target] = sha256_file(root / target)
    (root / MANIFEST).write_text(json.dumps(data))
    bundle = load_bundle(root)
    bundle.load_head()
    load_check_set(bundle)
    bundle_examples(bundle)
    raise Accepted(f"{target} loaded")


def _bundle_archive(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    recipe = json.loads(path.read_text())
    staging = work / "staging"
    for copy in range(recipe.get("copies", 1)):
        root = Path(shutil.copytree(bundle_root, staging / f"bundle{copy or ''}"))
        for name, content in recipe.get("extra", {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(bytes(content) if isinstance(content, int) else content.encode())
    for name, content in recipe.get("outside", {}).items():
        (staging / name).write_text(content)
    if recipe.get("folder"):
        load_bundle(staging / "bundle")
        raise Accepted("the folder loaded")
    archive = work / "bundle.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(staging.iterdir()):
            tar.add(entry, arcname=entry.name)
    load_bundle(archive)
    raise Accepted("the archive loaded")


def _dataset(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    images = load_image_set(path)
    raise Accepted(f"{len(images)} images listed")


def _stream(path: Path, expected: str, work: Path, bundle_root: Path) -> str:
    check = clean_line_with(path.read_bytes())
    if check.harmed:
        raise Accepted(f"real items given up {check.given_up}, placed off on the clock {check.misplaced}")
    if expected != "unharmed" and getattr(check, expected) < 1:
        raise Accepted(f"nothing counted it as {expected}: {check}")
    return expected


JUDGES = {"serial": _serial, "manifests": _manifest, "models": _model, "station_files": _station_file,
          "images": _image, "archives": _archive, "pipeline": _pipeline,
          "bundle_files": _bundle_file, "bundle_archives": _bundle_archive, "datasets": _dataset,
          "streams": _stream}
CLEAR = (BundleError, ConfigError, FrameError, PipelineInputError, DatasetError)


def judge(kind: str, name: str, work: Path, bundle_root: Path) -> tuple[str, str]:
    """('clear', what caught it) | ('accepted', why) | ('crash', the exception)."""
    expected = EXPECTED[kind][name]
    try:
        return "clear", JUDGES[kind](CORPUS / kind / name, expected, work, bundle_root)
    except Accepted as exc:
        return "accepted", str(exc)
    except CLEAR as exc:
        if re.search(expected, str(exc)):
            return "clear", str(exc)
        return "accepted", f"refused, but not for the named fault: {exc}"
    except Exception as exc:  # anything else is a crash: the message must be a clear error
        return "crash", repr(exc)


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{k}/{n}" for k, n in CASES])
def test_hostile_input_is_a_clear_error(kind, name, tmp_path, tiny_bundle):
    outcome, detail = judge(kind, name, tmp_path, tiny_bundle.root)
    assert outcome == "clear", detail


def test_corpus_covers_every_boundary():
    assert {kind: len(names) for kind, names in EXPECTED.items() if len(names) < 3} == {}
    assert len(CASES) >= 80


if __name__ == "__main__":  # the tally, as the closing notes quote it
    import tempfile
    from collections import Counter

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_tiny_bundle(Path(tmp) / "bundle", Path(tmp))
        tally: Counter[str] = Counter()
        for kind, name in CASES:
            work = Path(tempfile.mkdtemp(dir=tmp))
            outcome, detail = judge(kind, name, work, bundle.root)
            tally[outcome] += 1
            if outcome != "clear":
                print(f"{outcome}: {kind}/{name}: {detail}")
    print(f"inputs tried {len(CASES)}, clear errors {tally['clear']}, crashes or hangs {tally['crash']}, "
          f"wrong accepts {tally['accepted']}")
