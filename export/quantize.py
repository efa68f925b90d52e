"""Static int8 quantization with ONNX Runtime, calibrated on real (preprocessed) images.

Format choice, measured on this 2-core AVX-512 VNNI CPU (see ../shared/MEASURED.md and the
closing note of the first issue): activations uint8 with per-channel int8 weights (U8S8) run
3× faster than fp32 ORT, while ORT's documented default of int8 activations (S8S8) is *slower*
than fp32 here: its int8×int8 GEMM lacks the VNNI u8×s8 kernel. QDQ and QOperator tie for
U8S8; QDQ is the portable one, so that is the default. ORT's quantization pre-processing
(shape inference, graph optimisation) is applied as its documentation advises; it changed
little here (1.10 vs 1.15 ms for 4 views, same accuracy) because the dynamo exporter has
already folded batch norm into the convolutions.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .onnx_export import INPUT_NAME

log = logging.getLogger(__name__)


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, batch_size: int = 32) -> Path:
    """Quantize ``fp32_path`` into ``out_path`` (U8S8, QDQ, per-channel weights).

    ``calibration`` is an ``N×C×S×S`` array that went through the same preprocessing as the
    device's input; a few hundred views cover the activation ranges.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty N×C×S×S array, got shape {calibration.shape}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        batches = (calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size))
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(batches),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    return out_path


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Weights and arithmetic in float16, input and outputs kept float32.

    Half the size. On a 2-core AVX-512 x86 CPU ONNX Runtime ran it at 0.92-0.94× the speed of
    fp32 (benchmarks/export_speed.py): it pays on GPUs and ARM devices with fp16 arithmetic.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return out_path
