"""Inference runtimes for a bundle's backbone, and the choice between them by measurement.

Two implementations of one interface (:class:`Embedder`: a batch of preprocessed views in,
``embedding`` and, where exported, ``feature_map`` out), reading the bundle's own ONNX file:

- ``onnxruntime``: ONNX Runtime's CPU provider, always installed.
- ``openvino``: Intel's OpenVINO, an optional extra (``pip install sortline[openvino]``). Its
  compiled-model cache lives outside the bundle (``$SORTLINE_CACHE_DIR``, by default
  ``~/.cache/sortline/openvino``), so a signed bundle's files are never touched.

No runtime wins everywhere (the same model can be faster on OpenVINO at a batch of four views
and on ONNX Runtime at a batch of one; Intel and AMD CPUs differ), so ``runtime = "auto"``
measures: :func:`choice.choose_runtime` times every installed runtime at every thread count on the
bundle's own input shape (one item: all its views as one batch), interleaved, for a short
budget; refuses a candidate whose embeddings differ from ONNX Runtime's; and picks the fastest.

The thread count follows the station's policy (measured in benchmarks/edge_pipeline.py): one
intra-op thread while one thread already embeds ``target_items_per_s``, leaving the other core to
capture, the serial readers and the loop; two only when one falls short and two are at least
``gain`` times faster.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from sortline.hardware.camera import ViewFrame

from .embedder import EMBEDDING_OUTPUT, OnnxEmbedder
from .preprocess import InputSpec, preprocess_views

log = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")
AUTO = "auto"
_BLAS = threading.Lock()
_blas_set = False


def one_blas_thread() -> None:
    """numpy's BLAS on one thread for the rest of this process, set by the first call; later calls
    do nothing. A station's own matrices are small (heads, fusion, the watch's statistics) and the
    embedding has the cores. The count is process-wide and is never changed again: OpenBLAS can
    hang a thread that is inside a BLAS call while another changes it (threadpoolctl issue 205),
    which is how a refit's ``threadpool_limits`` once froze the queue's thread for good."""
    global _blas_set
    with _BLAS:
        if not _blas_set:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            _blas_set = True


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
            with keeping_signal_stack():
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
            with keeping_signal_stack():
                request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(self._outputs)}

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.run_all(batch)[EMBEDDING_OUTPUT]

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))


class _SignalStack(ctypes.Structure):  # stack_t, <signal.h>
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SS_DISABLE = 2


@contextlib.contextmanager
def keeping_signal_stack() -> Iterator[None]:
    """The calling thread's alternate signal stack, as it was before the block. OpenVINO's CPU
    plugin installs one of its own on the thread that compiles a model and frees its memory with
    the model: the next signal handled on that thread (SIGTERM from a service manager, Ctrl-C)
    was then delivered onto freed memory and the process died with SIGSEGV."""
    try:
        sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):  # not a POSIX C library: nothing to keep
        yield
        return
    before = _SignalStack()
    if sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        after = _SignalStack()
        sigaltstack(None, ctypes.byref(after))
        if (after.ss_sp, after.ss_size, after.ss_flags & _SS_DISABLE) != (
                before.ss_sp, before.ss_size, before.ss_flags & _SS_DISABLE):
            restore = _SignalStack(None, _SS_DISABLE, 0) if before.ss_flags & _SS_DISABLE else before
            sigaltstack(ctypes.byref(restore), None)


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
