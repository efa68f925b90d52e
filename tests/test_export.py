"""ONNX export keeps parity with PyTorch; int8 stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.export.onnx_export import compare, export_backbone, torch_embeddings
from sortline.export.quantize import quantize_int8
from sortline.train.backbones import build_backbone

SPEC = InputSpec(size=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=4).eval()
    path = export_backbone(backbone, SPEC, tmp_path_factory.mktemp("onnx") / "b.onnx")
    return backbone, path


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 4, SPEC.size, SPEC.size)).astype(np.float32)


def test_fp32_onnx_matches_pytorch_for_any_batch_size(exported):
    backbone, path = exported
    embedder = OnnxEmbedder(path, SPEC)
    for n in (1, 5):
        batch = _batch(n, seed=n)
        parity = compare(torch_embeddings(backbone, batch), embedder.embed_batch(batch))
        assert parity.min_cosine >= 0.999, parity


def test_int8_stays_close_to_fp32(exported, tmp_path):
    _, path = exported
    calibration = _batch(64, seed=1)
    int8_path = quantize_int8(path, tmp_path / "int8.onnx", calibration)
    fp32, int8 = OnnxEmbedder(path, SPEC), OnnxEmbedder(int8_path, SPEC)
    batch = _batch(16, seed=2)
    parity = compare(fp32.embed_batch(batch), int8.embed_batch(batch))
    assert parity.mean_cosine > 0.98, parity
    assert int8_path.stat().st_size < path.stat().st_size / 2


def test_bad_models_and_calibration_are_refused(tmp_path, exported):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="cannot load"):
        OnnxEmbedder(broken, SPEC)
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(exported[1], tmp_path / "x.onnx", np.zeros((0, 4, 32, 32), np.float32))


@pytest.mark.parametrize("pool", ["avg", "lca"])
def test_the_exported_model_takes_any_frame_size_and_pools_like_the_backbone(tmp_path, pool):
    """Detection runs the model on whole frames: both outputs match PyTorch at sizes other than
    the export's, and an LCA backbone's embedding is its LCA pooling (the edge's window pooling
    reproduces it from the feature map)."""
    from sortline.edge_runtime.detection.pooling import pool_window

    torch.manual_seed(1)
    spec = InputSpec.for_channels(("r", "g", "b"), size=64)
    backbone = build_backbone("resnet10", in_channels=3, pool=pool).eval()
    embedder = OnnxEmbedder(export_backbone(backbone, spec, tmp_path / "m.onnx"), spec)
    for shape in [(2, 3, 64, 64), (1, 3, 160, 224), (1, 3, 97, 33)]:
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        out = embedder.run_all(x)
        with torch.no_grad():
            fmap = backbone.feature_map(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out["feature_map"], fmap, atol=1e-4)
        assert compare(torch_embeddings(backbone, x), out["embedding"]).min_cosine >= 0.9999
        edge = np.stack([pool_window(m, pool) for m in out["feature_map"]])
        np.testing.assert_allclose(edge, out["embedding"], rtol=1e-4, atol=1e-5)
