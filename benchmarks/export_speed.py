"""Inference speed of an exported backbone, against PyTorch fp32 eager measured in the same run.

    python benchmarks/export_speed.py [--backbone resnet10] [--checkpoint C] [--runs 200] [--out DIR]

Runtimes: PyTorch fp32 eager (the baseline), ONNX Runtime fp32, the int8 variants (the one
``sortline export --int8`` writes, and the alternatives it was chosen over), and fp16. Batches:
1 image, and one item's views (4). Calibration and timing inputs are simulator views through
the edge preprocessing. Prints a Markdown table (images/s, p50/p99 latency, size, ratios) and
writes it with a JSON copy to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.export.onnx_export import INPUT_NAME, compare, export_backbone
from sortline.export.quantize import convert_fp16, quantize_int8
from sortline.hardware.sim.avocado import AvocadoScenario
from sortline.train.backbones import build_backbone
from sortline.train.checkpoint import load_checkpoint
from sortline.train.data import model_input
from sortline.train.sim_data import unlabeled_views


def _variant_int8(fp32: Path, out: Path, calibration: np.ndarray, fmt: QuantFormat, act: QuantType,
                  per_channel: bool) -> Path:
    """A quantization setting other than the shipped one, for comparison."""

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration[i : i + 32] for i in range(0, len(calibration), 32))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=fmt, activation_type=act,
                    weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def _time(fn, runs: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet10")
    parser.add_argument("--checkpoint", type=Path, help="a trained backbone (default: random initialisation)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    if args.checkpoint:
        model, spec, _ = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        spec = InputSpec(size=args.image_size)
        model = build_backbone(args.backbone, in_channels=len(spec.channels)).eval()
    views = unlabeled_views(AvocadoScenario(4242), count=96, spec=spec)
    data = model_input(views, spec)
    calibration, probe = data[:256], data[-64:]
    threads = torch.get_num_threads()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = export_backbone(model, spec, tmp / "fp32.onnx")
        variants = {
            "ORT fp32": fp32,
            "ORT int8 U8S8 QDQ per-channel (shipped)": quantize_int8(fp32, tmp / "int8.onnx", calibration),
            "ORT int8 S8S8 QDQ per-channel (ORT default types)": _variant_int8(
                fp32, tmp / "s8s8.onnx", calibration, QuantFormat.QDQ, QuantType.QInt8, True),
            "ORT int8 U8S8 QDQ per-tensor": _variant_int8(
                fp32, tmp / "u8s8t.onnx", calibration, QuantFormat.QDQ, QuantType.QUInt8, False),
            "ORT int8 U8S8 QOperator per-channel": _variant_int8(
                fp32, tmp / "qop.onnx", calibration, QuantFormat.QOperator, QuantType.QUInt8, True),
            "ORT fp16": convert_fp16(fp32, tmp / "fp16.onnx"),
        }
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                    for name, p in variants.items()}
        with torch.inference_mode():
            reference = model(torch.from_numpy(probe)).numpy()
        for batch in (1, spec.views):
            x = np.ascontiguousarray(data[:batch])
            xt = torch.from_numpy(x)
            rows = {}
            with torch.inference_mode():
                rows["PyTorch fp32 eager (baseline)"] = (_time(lambda xt=xt: model(xt), args.runs), None, None)
            for name, session in tqdm(sessions.items(), desc=f"batch {batch}", leave=False):
                ms = _time(lambda s=session, x=x: s.run(["embedding"], {INPUT_NAME: x}), args.runs)
                cosine = compare(reference, session.run(["embedding"], {INPUT_NAME: probe})[0]).mean_cosine
                rows[name] = (ms, cosine, variants[name].stat().st_size)
            base = batch / np.median(rows["PyTorch fp32 eager (baseline)"][0]) * 1000
            ort32 = batch / np.median(rows["ORT fp32"][0]) * 1000
            for name, (ms, cosine, size) in rows.items():
                ips = batch / np.median(ms) * 1000
                results.append({
                    "runtime": name, "batch": batch, "images_per_s": round(ips, 1),
                    "p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "vs_pytorch": round(ips / base, 2), "vs_ort_fp32": round(ips / ort32, 2),
                    "mean_cosine_vs_pytorch": None if cosine is None else round(float(cosine), 5),
                    "model_mb": None if size is None else round(size / 1e6, 2),
                })

    title = (f"{args.backbone if not args.checkpoint else args.checkpoint.name}, {spec.size} px × "
             f"{len(spec.channels)} channels, {threads} threads, ORT {ort.__version__}, torch {torch.__version__}, "
             f"median of {args.runs} runs")
    header = "| runtime | batch | images/s | p50 ms | p99 ms | × PyTorch | × ORT fp32 | cosine | MB |"
    lines = [f"### Inference: {title}", "", header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['vs_pytorch']} | {r['vs_ort_fp32']} | {r['mean_cosine_vs_pytorch'] or '—'} | "
                     f"{r['model_mb'] or '—'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_speed.md").write_text(table)
    (args.out / "export_speed.json").write_text(json.dumps({"setup": title, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
