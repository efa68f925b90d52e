"""Inference runtimes for a bundle's backbone, and the choice between them by measurement.

Two implementations of one interface (:class:`Embedder`: a batch of preprocessed views in,
``embedding`` and, where exported, ``feature_map`` out), reading the bundle's own ONNX file:

- ``onnxruntime``: ONNX Runtime's CPU provider, always installed.
- ``openvino``: Intel's OpenVINO, an optional extra (``pip install sortline[openvino]``). Its
  compiled-model cache lives outside the bundle (``$SORTLINE_CACHE_DIR``, by default
  ``~/.cache/sortline/openvino``), so a signed bundle's files are never touched.

No runtime wins everywhere (the same model can be faster on OpenVINO at a batch of four views
and on ONNX Runtime at a batch of one; Intel and AMD CPUs differ), so ``runtime = "auto"``
measures: :func:`choose_runtime` times every installed runtime at every thread count on the
bundle's own input shape (one item: all its views as one batch), interleaved, for a short
budget; refuses a candidate whose embeddings differ from ONNX Runtime's; and picks the fastest.

The thread count follows the station's policy (measured in benchmarks/edge_pipeline.py): one
intra-op thread while one thread already embeds ``target_items_per_s``, leaving the other core to
capture, the serial readers and the loop; two only when one falls short and two are at least
``gain`` times faster.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from sortline.hardware.camera import ItemCapture, ViewFrame

from .embedder import EMBEDDING_OUTPUT, PARITY_MIN_COSINE, OnnxEmbedder, compare
from .preprocess import InputSpec, preprocess_views

log = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")
AUTO = "auto"
# A runtime whose embeddings differ from ONNX Runtime's by more than PARITY_MIN_COSINE (the
# export's own bound between ONNX and PyTorch) is refused, however fast; and so is one whose
# decisions differ: another class for any check item, or a probability more than
# PARITY_MAX_PROB_DIFF away. (Embeddings 0.99994 alike still moved an untrained ResNet-18 head's
# confidences by up to 0.41 and changed 22 of 600 exits: benchmarks/results/runtimes.md.)
PARITY_MAX_PROB_DIFF = 0.05
# A bundle may carry check inputs (``check.npz``: preprocessed views of a few real items, written
# by the export), so that runtimes are compared on what the line shows rather than on noise.
CHECK_FILE = "check.npz"
CHECK_ITEMS = 16


class Embedder(Protocol):
    """What the station needs from a runtime."""

    name: str
    threads: int
    spec: InputSpec

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def embed_batch(self, batch: np.ndarray) -> np.ndarray: ...

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray: ...


def installed_runtimes() -> tuple[str, ...]:
    return tuple(name for name in RUNTIMES if name == "onnxruntime" or importlib.util.find_spec(name) is not None)


class OpenVinoEmbedder:
    """The bundle's ONNX file compiled by OpenVINO for the CPU, with ``threads`` inference
    threads, one stream, no pinning (the station's other threads share the cores). Safe to call
    from several threads: each has its own infer request."""

    name = "openvino"

    def __init__(self, model_path: str | Path, spec: InputSpec, threads: int = 0,
                 cache_dir: Path | None = None, precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ValueError("OpenVINO is not installed (pip install 'sortline[openvino]')") from exc
        self.spec = spec
        self.threads = threads
        core = ov.Core()
        cache = cache_dir if cache_dir is not None else default_cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        # f32 where the model is not int8: OpenVINO would otherwise compute in bf16 on CPUs that have
        # it (AVX-512 BF16, AMX), which moved a tiny head's confidences by 1.5 points on AMD EPYC
        # (tests/test_runtimes.py); "bf16" is there to be measured (benchmarks/runtimes.py).
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
                                     "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{model_path}: OpenVINO cannot compile this model ({exc})") from exc
        self.precision = precision
        self._outputs = [output.get_any_name() for output in self._compiled.outputs]
        if EMBEDDING_OUTPUT not in self._outputs:
            raise ValueError(f"{model_path}: no '{EMBEDDING_OUTPUT}' output (has {self._outputs})")
        self._local = threading.local()

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self._outputs)}

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.run_all(batch)[EMBEDDING_OUTPUT]

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))


def default_cache_dir() -> Path | None:
    """Where OpenVINO keeps compiled models (outside every bundle); None if it cannot be made."""
    root = os.environ.get("SORTLINE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = Path(root) / "sortline" / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path


def make_embedder(runtime: str, model_path: str | Path, spec: InputSpec, threads: int = 0,
                  spin: bool = False, precision: str = "f32") -> Embedder:
    """One runtime at a fixed thread count (0: the runtime's default). ``spin`` is ONNX Runtime's
    busy-waiting of idle threads; the station turns it off (embedder.py). ``precision`` is
    OpenVINO's for the layers that are not int8."""
    if runtime == "onnxruntime":
        return OnnxEmbedder(model_path, spec, threads=threads, spin=spin)
    if runtime == "openvino":
        return OpenVinoEmbedder(model_path, spec, threads=threads, precision=precision)
    raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join((AUTO, *RUNTIMES))}")


@dataclass
class Candidate:
    runtime: str
    threads: int
    ms: float = float("nan")  # median ms to embed one item (its views as one batch)
    min_cosine: float = float("nan")  # against ONNX Runtime's embeddings of the same input
    max_prob_diff: float = float("nan")  # against ONNX Runtime's class probabilities (with a head)
    refused: str | None = None

    @property
    def key(self) -> str:
        return f"{self.runtime}/{self.threads}"


@dataclass
class RuntimeChoice:
    embedder: Embedder
    candidates: list[Candidate] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0
    check_items: int = 0  # whole items compared against ONNX Runtime
    check_source: str = "noise"  # or "given": real items (the bundle's check.npz)

    @property
    def runtime(self) -> str:
        return self.embedder.name

    @property
    def threads(self) -> int:
        return self.embedder.threads

    @property
    def key(self) -> str:
        return f"{self.runtime}/{self.threads}"

    def summary(self) -> str:
        timed = ", ".join(f"{c.key} {c.ms:.2f} ms" if c.refused is None else f"{c.key} refused ({c.refused})"
                          for c in self.candidates)
        return f"{self.key} ({timed}; {self.rounds} rounds in {self.seconds:.2f} s)"


def write_check_set(path: Path, inputs: np.ndarray) -> Path:
    """Save preprocessed views (``N×C×S×S``, whole items) as a bundle's check inputs."""
    np.savez_compressed(path, inputs=np.asarray(inputs, np.float16))
    return path


def load_check_set(bundle) -> np.ndarray | None:
    """The bundle's check inputs (``N×C×S×S`` float32), or None if it has none; BundleError if
    they do not fit its input."""
    from .bundle import BundleError

    if CHECK_FILE not in bundle.manifest.files:
        return None
    spec = bundle.manifest.input
    try:
        with np.load(bundle.root / CHECK_FILE, allow_pickle=False) as data:
            inputs = data["inputs"]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{bundle.root / CHECK_FILE}: unreadable check inputs ({exc})") from exc
    expected = (len(spec.channels), spec.size, spec.size)
    if (inputs.ndim != 4 or inputs.shape[1:] != expected or not 0 < len(inputs) <= 64 * spec.views
            or len(inputs) % spec.views or not np.isfinite(inputs).all()):
        raise BundleError(f"{bundle.root / CHECK_FILE}: check inputs of shape {inputs.shape}; expected whole items "
                          f"of {spec.views} views × {expected}, finite")
    return inputs.astype(np.float32)


def _check_input(spec: InputSpec, items: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images (blurred noise, in the normalised range): closer to photographs than
    white noise, and the same on every machine."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, (items * spec.views, len(spec.channels), 4, 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, -(-spec.size // 4), axis=2), -(-spec.size // 4), axis=3)[
        ..., : spec.size, : spec.size]


def _run_check(name: str, model_path: str | Path, spec: InputSpec, threads: int,
               check: np.ndarray) -> tuple[Embedder, np.ndarray]:
    """Build one runtime and embed the check inputs; ValueError for anything that goes wrong
    (ONNX Runtime and OpenVINO raise exception types of their own)."""
    try:
        embedder = make_embedder(name, model_path, spec, threads=threads)
        return embedder, embedder.embed_batch(check)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{name}/{threads} cannot run this model on its input {tuple(check.shape[1:])}: {exc}") \
            from exc


def choose_runtime(model_path: str | Path, spec: InputSpec, runtime: str = AUTO, threads: int | None = None,
                   budget_s: float = 2.0, target_items_per_s: float = 200.0, gain: float = 1.3,
                   min_rounds: int = 5, max_cores: int = 2, check: np.ndarray | None = None,
                   score: Callable[[np.ndarray], np.ndarray] | None = None) -> RuntimeChoice:
    """Build every candidate (``runtime`` or, for "auto", each installed one; ``threads`` or
    1..min(2, cores)), check it against ONNX Runtime, time them interleaved on one item for
    ``budget_s`` (at least ``min_rounds`` rounds), and return the fastest under the thread policy
    (module docstring). :class:`ValueError` if no candidate can run the model.

    ``check``: preprocessed views of whole items to compare on (default: smooth noise);
    ``score``: embeddings of those items → one row of class probabilities per item (the head),
    so that decisions are compared too, not only embeddings."""
    names = installed_runtimes() if runtime == AUTO else (runtime,)
    if runtime != AUTO and runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join((AUTO, *RUNTIMES))}")
    counts = [threads] if threads else list(range(1, min(max_cores, os.cpu_count() or 1) + 1))
    started = time.perf_counter()
    source = "noise" if check is None else "given"
    check = _check_input(spec) if check is None else check
    # ONNX Runtime is the reference: its first candidate, or one built for the purpose when the
    # user named another runtime. A model it cannot run is refused outright.
    reference = (None if names[0] == "onnxruntime"
                 else _run_check("onnxruntime", model_path, spec, 1, check)[1])
    reference_scores = score(reference) if score is not None and reference is not None else None
    built: list[tuple[Candidate, Embedder]] = []
    candidates: list[Candidate] = []
    for name in names:
        for count in counts:
            candidate = Candidate(name, count)
            candidates.append(candidate)
            try:
                embedder, embeddings = _run_check(name, model_path, spec, count, check)
            except ValueError as exc:
                if runtime != AUTO or name == "onnxruntime":
                    raise
                candidate.refused = f"cannot run: {exc}"
                continue
            if reference is None:
                reference = embeddings
                reference_scores = score(reference) if score is not None else None
            candidate.min_cosine = compare(reference, embeddings).min_cosine
            if candidate.min_cosine < PARITY_MIN_COSINE:
                candidate.refused = f"embeddings differ from ONNX Runtime's (min cosine {candidate.min_cosine:.5f})"
            elif reference_scores is not None:
                scores = score(embeddings)
                candidate.max_prob_diff = float(np.abs(scores - reference_scores).max())
                flipped = int((scores.argmax(1) != reference_scores.argmax(1)).sum())
                if flipped or candidate.max_prob_diff > PARITY_MAX_PROB_DIFF:
                    candidate.refused = (f"decisions differ from ONNX Runtime's ({flipped} of {len(scores)} check "
                                         f"items change class, probabilities up to {candidate.max_prob_diff:.3f} "
                                         "apart)")
            if candidate.refused is not None:
                if runtime != AUTO and name != "onnxruntime":
                    raise ValueError(f"{candidate.key}: {candidate.refused}")
                log.warning("%s refused: %s", candidate.key, candidate.refused)
                continue
            built.append((candidate, embedder))
    if not built:
        raise ValueError(f"{model_path}: no runtime can run this model: "
                         + "; ".join(f"{c.key}: {c.refused}" for c in candidates))
    item = check[: spec.views]
    for _, embedder in built:  # the first runs allocate
        embedder.embed_batch(item)
    times: dict[str, list[float]] = {c.key: [] for c, _ in built}
    rounds = 0
    budget_end = started + budget_s
    round_s = 0.0
    # at least min_rounds; more while the next round still ends within the budget
    while rounds < min_rounds or (time.perf_counter() + round_s <= budget_end and rounds < 200):
        round_started = time.perf_counter()
        for candidate, embedder in built:
            t = time.perf_counter()
            embedder.embed_batch(item)
            times[candidate.key].append(time.perf_counter() - t)
        round_s = time.perf_counter() - round_started
        rounds += 1
    for candidate, _ in built:
        candidate.ms = float(np.median(times[candidate.key])) * 1000
    best_at = {count: min((c for c, _ in built if c.threads == count), key=lambda c: c.ms, default=None)
               for count in counts}
    count = counts[0]
    if len(counts) > 1 and best_at[1] is not None and best_at[2] is not None:
        fast_enough = 1000.0 / best_at[1].ms >= target_items_per_s
        count = 2 if not fast_enough and best_at[1].ms / best_at[2].ms >= gain else 1
    best = best_at[count] or min((c for c, _ in built), key=lambda c: c.ms)
    chosen = next(embedder for c, embedder in built if c is best)
    choice = RuntimeChoice(chosen, candidates, rounds, time.perf_counter() - started, len(check) // spec.views,
                           source)
    log.info("runtime: %s", choice.summary())
    return choice


def bench_bundle(bundle, runtime: str = AUTO, threads: int | None = None, budget_s: float = 2.0,
                 whole_item_runs: int = 30) -> dict:
    """``sortline bench``: every runtime and thread count timed on the bundle (median ms to embed
    one item, its views as one batch), what ``auto`` picks, and whole items per second with the
    pick (preprocessing from camera-size frames, embedding, fusion, head)."""
    from .pipeline import ItemPipeline  # it builds on this module

    spec = bundle.manifest.input
    pipeline = ItemPipeline.for_station(bundle, threads=threads, runtime=runtime, budget_s=budget_s)
    choice = pipeline.runtime_choice
    rng = np.random.default_rng(0)
    frame = 2 * spec.size  # frames come larger than the model's input and are resized, as at a station
    views = tuple(ViewFrame(rgb=rng.integers(0, 256, (frame, frame, 3), np.uint8),
                            nir=rng.integers(0, 256, (frame, frame), np.uint8) if "nir" in spec.channels else None)
                  for _ in range(spec.views))
    capture = ItemCapture(0, views)
    pipeline.classify(capture, [])
    times = []
    for _ in range(whole_item_runs):
        t = time.perf_counter()
        pipeline.classify(capture, [])
        times.append(time.perf_counter() - t)
    return {
        "bundle": bundle.version,
        "input": [spec.views, len(spec.channels), spec.size, spec.size],
        "runtimes": {c.key: round(c.ms, 4) for c in choice.candidates if c.refused is None},
        "refused": {c.key: c.refused for c in choice.candidates if c.refused is not None},
        "min_cosine": {c.key: round(c.min_cosine, 6) for c in choice.candidates if c.refused is None},
        "max_prob_diff": {c.key: round(c.max_prob_diff, 6) for c in choice.candidates if c.refused is None},
        "check_items": choice.check_items,
        "chosen": choice.key,
        "items_per_s": round(1.0 / float(np.median(times)), 1),
        "whole_item_runs": whole_item_runs,
        "rounds": choice.rounds,
        "seconds": round(choice.seconds, 2),
    }
