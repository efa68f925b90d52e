"""Bundles load only when whole and untampered; writing one is all-or-nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model.bundle import MANIFEST, BundleError, load_bundle, write_bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle.root, tmp_path / "b"))


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / MANIFEST).read_text())
    edit(data)
    (root / MANIFEST).write_text(json.dumps(data))


def test_written_bundle_verifies_and_lists_every_file(tiny_bundle):
    bundle = load_bundle(tiny_bundle.root)
    assert set(bundle.manifest.files) == {"backbone.onnx", "head.npz", "check.npz", "examples.npz"}
    assert bundle.load_head().labels == bundle.manifest.labels


def test_tampered_backbone_is_refused(bundle_copy):
    model = bundle_copy / "backbone.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_copy)


def test_truncated_head_is_refused(bundle_copy):
    head = bundle_copy / "head.npz"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(BundleError, match="head.npz"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(surprise=1), "unknown fields"),
        (lambda d: d.pop("labels"), "lacks fields"),
        (lambda d: d["files"].update({"../escape.onnx": "0" * 64}), "outside the bundle"),
        (lambda d: d["files"].pop("head.npz"), "hash for head.npz"),
        (lambda d: d["decision"]["exits"].pop("both"), "without an exit"),
        (lambda d: d["input"].update(size="big"), "malformed"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_missing_pieces_are_named(bundle_copy, tmp_path):
    (bundle_copy / "backbone.onnx").unlink()
    with pytest.raises(BundleError, match="backbone.onnx.*missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(bundle_copy)


def test_failed_write_leaves_nothing_behind(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle.root)
    wrong = dataclasses.replace(bundle.manifest, embedding_dim=999, files={})  # head no longer fits
    out = tmp_path / "out"
    with pytest.raises(BundleError, match="head does not match"):
        write_bundle(out, wrong, bundle.backbone_path, bundle.load_head())
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its staging folder


def test_rewrite_replaces_an_older_bundle_atomically(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle.root)
    out = tmp_path / "out"
    write_bundle(out, dataclasses.replace(bundle.manifest, files={}, name="v1"), bundle.backbone_path,
                 bundle.load_head())
    write_bundle(out, dataclasses.replace(bundle.manifest, files={}, name="v2"), bundle.backbone_path,
                 bundle.load_head())
    assert load_bundle(out).manifest.name == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_verify_reports_ok_and_errors(tiny_bundle, bundle_copy, capsys):
    assert main(["bundle", "verify", str(tiny_bundle.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"] is True
    (bundle_copy / "head.npz").write_bytes(b"x")
    assert main(["bundle", "verify", str(bundle_copy), "--json"]) == 2
    captured = capsys.readouterr()
    assert "sha256" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_archive_round_trip(tiny_bundle, tmp_path, suffix):
    bundle = load_bundle(tiny_bundle.root)
    out = tmp_path / f"b{suffix}"
    written = write_bundle(out, dataclasses.replace(bundle.manifest, files={}), bundle.backbone_path,
                           bundle.load_head(), extra_files={name: bundle.root / name
                                                            for name in ("check.npz", "examples.npz")})
    assert out.is_file() and written.manifest.files == bundle.manifest.files
    assert load_bundle(out).load_head().labels == bundle.manifest.labels
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_tampered_or_hostile_archives_are_refused(tiny_bundle, tmp_path):
    tampered = tmp_path / "t.tar"
    with tarfile.open(tampered, "w") as tar:
        for f in tiny_bundle.root.iterdir():
            if f.name == "head.npz":
                evil = tmp_path / "head.npz"
                evil.write_bytes(f.read_bytes()[:-1] + b"x")
                tar.add(evil, arcname=f"bundle/{f.name}")
            else:
                tar.add(f, arcname=f"bundle/{f.name}")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tampered)
    escaping = tmp_path / "e.tar"
    with tarfile.open(escaping, "w") as tar:
        tar.add(tiny_bundle.root / MANIFEST, arcname="../../manifest.json")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load_bundle(escaping)
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load_bundle(tmp_path / "junk.tar.gz")


@pytest.mark.parametrize("label, ok", [
    ("Granny-Smith", True), ("Tom & Jerry's <5 kg>", True), ('"quoted"', True), ("Äpfel 1,5 kg", True),
    ("", False), (" padded", False), ("padded ", False), ("two\nlines", False), ("tab\there", False),
    ("x" * 201, False), (7, False), (None, False),
])
def test_one_label_rule_for_every_source(label, ok, tmp_path, tiny_bundle):
    """model/labels.py: printable text of 1..200 characters without outer spaces, markup allowed;
    a manifest, a policy and the store refuse the same labels."""
    import dataclasses

    from sortline.edge_runtime.learning.store import StoreError
    from sortline.edge_runtime.learning.store import check_label as store_check
    from sortline.edge_runtime.model.labels import LabelRuleError, check_label
    from sortline.edge_runtime.model.policy import DecisionPolicy, PolicyError

    if ok:
        assert check_label(label) == store_check(label) == label
        assert DecisionPolicy.from_dict({"exits": {label: 1}, "safe_exit": 0}).exits == {label: 1}
    else:
        with pytest.raises(LabelRuleError):
            check_label(label)
        with pytest.raises(StoreError):
            store_check(label)
        with pytest.raises(PolicyError):
            DecisionPolicy.from_dict({"exits": {label: 1}, "safe_exit": 0})
    if isinstance(label, str) and label:  # a manifest carries it as written
        m = tiny_bundle.manifest
        labels = (label, *m.labels[1:])
        policy = DecisionPolicy({**{k: v for k, v in m.decision.exits.items() if k != m.labels[0]}, label: 1}, 0)
        manifest = dataclasses.replace(m, labels=labels, decision=policy, files={}, created="")
        head = dataclasses.replace(tiny_bundle.load_head(), labels=labels)
        if ok:
            assert write_bundle(tmp_path / "b", manifest, tiny_bundle.backbone_path, head).manifest.labels == labels
        else:
            with pytest.raises(BundleError, match="label"):
                write_bundle(tmp_path / "b", manifest, tiny_bundle.backbone_path, head)
