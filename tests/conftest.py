"""Shared fixtures. Nothing here needs ../shared or the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sortline.edge_runtime.bundle import Bundle, DecisionPolicy, Manifest
from sortline.edge_runtime.embedder import EMBEDDING_OUTPUT, OnnxEmbedder
from sortline.edge_runtime.fusion import FusionSpec
from sortline.edge_runtime.preprocess import InputSpec
from sortline.hardware.sim.avocado import CLASSES, TAPS_PER_ITEM

SPEC = InputSpec(size=32, views=4)
EXITS = {"A": 1, "external": 2, "internal": 3, "both": 3}


def tiny_backbone_onnx(path: Path, channels: int = 4, width: int = 16, seed: int = 0) -> Path:
    """A real conv net as an ONNX graph (conv 3×3 → ReLU → conv 3×3 stride 2 → ReLU → GAP)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (width, channels, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.15, (width, width, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], [EMBEDDING_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, None, None])],
        [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_tiny_bundle(out: Path, work: Path, labeled_fruit: int = 120) -> Bundle:
    """A bundle whose head is fitted on the tiny backbone's embeddings of simulated fruit."""
    from sortline.export.bundle import write_bundle
    from sortline.hardware.sim.avocado import make_fruit, render_views, tap_series
    from sortline.train.fusion_head import fit_fusion_head
    from sortline.train.sim_data import SimItem

    onnx_path = tiny_backbone_onnx(work / "tiny.onnx")
    embedder = OnnxEmbedder(onnx_path, SPEC)
    items = []
    for i in range(labeled_fruit):
        fruit = make_fruit(i, seed=77, label=i % 4 if i < 16 else None)  # every class present
        items.append(SimItem(fruit.label, render_views(fruit), tap_series(fruit)))
    head, fusion = fit_fusion_head(embedder, items, CLASSES, FusionSpec.for_sensor("taps", TAPS_PER_ITEM))
    manifest = Manifest(
        name="tiny-test",
        input=SPEC,
        embedding_dim=16,
        labels=CLASSES,
        decision=DecisionPolicy(EXITS, safe_exit=0, min_confidence=0.4),
        fusion=fusion,
        metrics={"note": "test fixture"},
    )
    return write_bundle(out, manifest, onnx_path, head)


def make_tiny_checkout_bundle(out: Path, work: Path, labeled_items: int = 150, products: int = 6) -> Bundle:
    """A checkout bundle: the tiny backbone on RGB, its head fitted on drawn products and their
    weights from the scale."""
    from sortline.export.bundle import write_bundle
    from sortline.hardware.sim.checkout import Catalog, CheckoutScenario
    from sortline.train.fusion_head import fit_fusion_head
    from sortline.train.sim_data import sim_items

    scenario = CheckoutScenario(Catalog.procedural(products), seed=78)
    spec = InputSpec.for_channels(scenario.channels, 32, views=scenario.views)
    onnx_path = tiny_backbone_onnx(work / "tiny-rgb.onnx", channels=3)
    items = list(sim_items(scenario, labeled_items))
    head, fusion = fit_fusion_head(OnnxEmbedder(onnx_path, spec), items, scenario.classes,
                                   FusionSpec.for_sensor("scale", scenario.readings_expected))
    manifest = Manifest(
        name="tiny-checkout-test",
        input=spec,
        embedding_dim=16,
        labels=scenario.classes,
        decision=DecisionPolicy({name: 1 for name in scenario.classes}, safe_exit=0, min_confidence=0.3),
        fusion=fusion,
        metrics={"note": "test fixture"},
    )
    return write_bundle(out, manifest, onnx_path, head)


@pytest.fixture(scope="session")
def tiny_checkout_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    work = tmp_path_factory.mktemp("tiny-checkout")
    return make_tiny_checkout_bundle(work / "bundle", work)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    work = tmp_path_factory.mktemp("tiny")
    return make_tiny_bundle(work / "bundle", work)
