"""Backbone → ONNX with a dynamic batch, checked by onnx.checker and against PyTorch."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.embedder import EMBEDDING_OUTPUT, FEATURE_MAP_OUTPUT, Parity, compare  # noqa: F401
from sortline.edge_runtime.model.preprocess import InputSpec

log = logging.getLogger(__name__)
INPUT_NAME = "image"
OPSET = 18
MIN_SIDE, MAX_SIDE = 32, 4096  # input sides the exported model accepts (a ResNet's stride is 32)


class ParityError(SortlineError, RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


class _WithFeatureMap(torch.nn.Module):
    """Both outputs of a backbone: the pooled embedding and the map it pools."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.backbone.feature_map(x)
        return self.backbone.pooling(fmap), fmap


def export_backbone(model: torch.nn.Module, spec: InputSpec, path: Path) -> Path:
    """Write ``model`` as a single-file ONNX model at ``path``: input ``image`` (``N×C×S×S``),
    outputs ``embedding`` (``N×D``) and, where the model has ``feature_map``, ``feature_map``
    (``N×D×h×w``). The batch dimension is dynamic, and so are the height and width (from
    ``MIN_SIDE`` px): the station feeds ``S×S`` views, sliding-window detection whole frames."""
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    outputs = [EMBEDDING_OUTPUT]
    if hasattr(model, "feature_map"):
        model = _WithFeatureMap(model)
        outputs.append(FEATURE_MAP_OUTPUT)
    example = torch.zeros(2, len(spec.channels), spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    # The exporter narrates every pass on stdout; keep the user's terminal for our own output.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def torch_embeddings(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """The PyTorch model's embeddings, the reference for parity checks."""
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()
