"""Inference runtimes (edge_runtime/model/runtimes.py): ONNX Runtime always, OpenVINO when installed,
and ``auto``'s choice between them by measurement. On the edge install (no OpenVINO) the
OpenVINO tests skip and the rest check that ONNX Runtime alone works."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model import choice as choosing
from sortline.edge_runtime.model import runtimes
from sortline.edge_runtime.model.bundle import BundleError
from sortline.edge_runtime.model.choice import choose_runtime
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.model.runtimes import AUTO, installed_runtimes, make_embedder
from sortline.hardware.camera import ItemCapture
from sortline.hardware.sim.avocado import make_fruit, render_views, tap_series

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is an optional extra, not installed here")


def test_onnxruntime_is_always_there_and_openvino_only_when_installed():
    assert installed_runtimes()[0] == "onnxruntime"
    assert ("openvino" in installed_runtimes()) == HAS_OPENVINO


@needs_openvino
def test_openvino_agrees_with_onnxruntime_on_every_output(tiny_bundle):
    spec = tiny_bundle.manifest.input
    batch = np.random.default_rng(1).normal(0, 1, (8, len(spec.channels), spec.size, spec.size)).astype(np.float32)
    ort = make_embedder("onnxruntime", tiny_bundle.backbone_path, spec, threads=1).run_all(batch)
    ov = make_embedder("openvino", tiny_bundle.backbone_path, spec, threads=1).run_all(batch)
    assert set(ov) == set(ort)
    for name in ort:
        assert ov[name].shape == ort[name].shape
        np.testing.assert_allclose(ov[name], ort[name], rtol=1e-3, atol=1e-4)


@needs_openvino
def test_auto_times_every_runtime_and_thread_count_and_picks_the_fastest(tiny_bundle, monkeypatch):
    monkeypatch.setattr(choosing.os, "cpu_count", lambda: 2)
    choice = choose_runtime(tiny_bundle.backbone_path, tiny_bundle.manifest.input, AUTO, budget_s=0.3)
    assert {c.key for c in choice.candidates} == {"onnxruntime/1", "onnxruntime/2", "openvino/1", "openvino/2"}
    assert all(c.refused is None and c.min_cosine >= choosing.PARITY_MIN_COSINE for c in choice.candidates)
    same_threads = [c for c in choice.candidates if c.threads == choice.threads]
    assert choice.key == min(same_threads, key=lambda c: c.ms).key
    assert choice.rounds >= 5 and choice.seconds < 5


def test_a_runtime_whose_embeddings_differ_is_refused_however_fast(tiny_bundle, monkeypatch):
    class Wrong:
        name, threads = "openvino", 1

        def __init__(self, real):
            self.spec = real.spec
            self.real = real

        def embed_batch(self, batch):
            return self.real.embed_batch(batch)[:, ::-1].copy()  # a shuffled embedding: fast, and wrong

    real_make = runtimes.make_embedder

    def make(runtime, path, spec, threads=0, spin=False):
        real = real_make("onnxruntime", path, spec, threads=threads)
        return Wrong(real) if runtime == "openvino" else real

    monkeypatch.setattr(choosing, "make_embedder", make)
    monkeypatch.setattr(choosing, "installed_runtimes", lambda: ("onnxruntime", "openvino"))
    choice = choose_runtime(tiny_bundle.backbone_path, tiny_bundle.manifest.input, AUTO, threads=1, budget_s=0.1)
    (refused,) = [c for c in choice.candidates if c.refused]
    assert refused.runtime == "openvino" and "differ from ONNX Runtime" in refused.refused
    assert choice.runtime == "onnxruntime"


def test_a_runtime_that_is_not_installed_is_a_clear_error(tiny_bundle, monkeypatch):
    monkeypatch.setattr(runtimes.importlib.util, "find_spec", lambda name: None)  # as on the edge install
    monkeypatch.setitem(sys.modules, "openvino", None)  # importing it fails, installed or not
    assert installed_runtimes() == ("onnxruntime",)
    assert choose_runtime(tiny_bundle.backbone_path, tiny_bundle.manifest.input, AUTO, budget_s=0.1).runtime == \
        "onnxruntime"
    with pytest.raises(BundleError, match="OpenVINO is not installed"):
        ItemPipeline.for_station(tiny_bundle, runtime="openvino")


@needs_openvino
def test_decisions_are_the_same_on_either_runtime(tiny_bundle):
    pipelines = [ItemPipeline(tiny_bundle, embedder=make_embedder(name, tiny_bundle.backbone_path,
                                                                   tiny_bundle.manifest.input, threads=1))
                 for name in ("onnxruntime", "openvino")]
    for item in range(40):
        fruit = make_fruit(item, seed=9)
        capture = ItemCapture(item, tuple(render_views(fruit)))
        ort, ov = (p.classify(capture, tap_series(fruit)) for p in pipelines)
        assert (ort.label, ort.exit) == (ov.label, ov.exit)
        assert abs(ort.confidence - ov.confidence) < 1e-3


def test_bench_reports_every_candidate_and_the_choice(tiny_bundle, capsys):
    assert main(["bench", "--bundle", str(tiny_bundle.root), "--budget", "0.3", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["runtimes"]) == {f"{name}/1" for name in installed_runtimes()}
    assert result["chosen"] in result["runtimes"] and result["items_per_s"] > 0
    assert result["input"] == [4, 4, 32, 32]


def test_station_file_names_the_runtime(tmp_path):
    from sortline.edge_runtime.daemon.config import ConfigError, load_station_file

    path = tmp_path / "station.toml"
    path.write_text('[station]\nruntime = "openvino"\nthreads = 2\n'
                    '[controller]\nport = "loop://"\n[[views]]\nrgb = 0\n')
    station = load_station_file(path)
    assert (station.station.runtime, station.station.threads) == ("openvino", 2)
    path.write_text('[station]\nruntime = "tensorrt"\n[controller]\nport = "loop://"\n[[views]]\nrgb = 0\n')
    with pytest.raises(ConfigError, match="station.runtime"):
        load_station_file(path)


def test_runtimes_are_compared_on_the_bundles_own_check_items_and_decisions(tiny_bundle, monkeypatch):
    """A runtime with embeddings alike (cosine over 0.999) but a head that decides otherwise on
    the bundle's check items is refused."""
    check = choosing.load_check_set(tiny_bundle)
    assert check.shape == (8 * 4, 4, 32, 32)
    real_make = runtimes.make_embedder

    class Nudged:
        name, threads = "openvino", 1

        def __init__(self, real):
            self.spec, self.real = real.spec, real

        def embed_batch(self, batch):
            e = self.real.embed_batch(batch)
            return e + 0.02 * e.std() * np.sign(np.arange(e.shape[1]) % 2 - 0.5)  # close, but not the same

    monkeypatch.setattr(choosing, "make_embedder", lambda runtime, path, spec, threads=0, spin=False: (
        Nudged(real_make("onnxruntime", path, spec, threads)) if runtime == "openvino"
        else real_make(runtime, path, spec, threads)))
    monkeypatch.setattr(choosing, "installed_runtimes", lambda: ("onnxruntime", "openvino"))
    pipeline = ItemPipeline.for_station(tiny_bundle, threads=1, budget_s=0.1)
    choice = pipeline.runtime_choice
    (nudged,) = [c for c in choice.candidates if c.runtime == "openvino"]
    assert nudged.min_cosine >= choosing.PARITY_MIN_COSINE
    assert nudged.refused is not None and "decisions differ" in nudged.refused
    assert choice.runtime == "onnxruntime" and choice.check_items == 8 and choice.check_source == "given"


def test_check_inputs_that_do_not_fit_the_bundle_are_refused(tmp_path, tiny_bundle):
    import shutil

    from sortline.edge_runtime.model.bundle import load_bundle, sha256_file

    root = shutil.copytree(tiny_bundle.root, tmp_path / "b")
    choosing.write_check_set(root / "check.npz", np.zeros((3, 4, 32, 32)))  # 3 views: not whole items
    data = json.loads((root / "manifest.json").read_text())
    data["files"]["check.npz"] = sha256_file(root / "check.npz")
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="whole items"):
        choosing.load_check_set(load_bundle(root))


@needs_openvino
def test_openvino_leaves_the_threads_signal_stack_as_it_was(tiny_bundle):
    """OpenVINO's CPU plugin installs an alternate signal stack on the compiling thread and frees
    it with the model; a signal handled there afterwards (SIGTERM, Ctrl-C) died with SIGSEGV."""
    import ctypes

    from sortline.edge_runtime.model.runtimes import _SignalStack

    sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack

    def current() -> tuple:
        stack = _SignalStack()
        assert sigaltstack(None, ctypes.byref(stack)) == 0
        return stack.ss_sp, stack.ss_size, stack.ss_flags

    before = current()
    embedder = make_embedder("openvino", tiny_bundle.backbone_path, tiny_bundle.manifest.input, threads=1)
    embedder.embed_batch(np.zeros((4, 4, 32, 32), np.float32))
    assert current() == before
    del embedder
    assert current() == before
