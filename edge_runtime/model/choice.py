"""The choice of a runtime and its thread count by measurement (``runtime = "auto"``; the policy
is in ``runtimes.py``'s docstring), and the bundle's check inputs it compares them on."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arrays import read_npz
from .bundle import BundleError
from .embedder import PARITY_MIN_COSINE, compare
from .preprocess import InputSpec
from .runtimes import AUTO, RUNTIMES, Embedder, installed_runtimes, make_embedder

log = logging.getLogger(__name__)
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
Score = Callable[[np.ndarray], np.ndarray]


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
    if CHECK_FILE not in bundle.manifest.files:
        return None
    spec = bundle.manifest.input
    most = 64 * spec.views * len(spec.channels) * spec.size * spec.size
    try:
        inputs = read_npz(bundle.root / CHECK_FILE, {"inputs": most}, what=str(bundle.root / CHECK_FILE))["inputs"]
    except (ValueError, KeyError) as exc:
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
                   score: Score | None = None) -> RuntimeChoice:
    """Build every candidate (``runtime`` or, for "auto", each installed one; ``threads`` or
    1..min(2, cores)), check it against ONNX Runtime, time them interleaved on one item for
    ``budget_s`` (at least ``min_rounds`` rounds), and return the fastest under the thread policy
    (``runtimes.py``). :class:`ValueError` if no candidate can run the model.

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
    candidates, built = _build(model_path, spec, names, counts, runtime, check, score)
    if not built:
        raise ValueError(f"{model_path}: no runtime can run this model: "
                         + "; ".join(f"{c.key}: {c.refused}" for c in candidates))
    rounds = _time(built, check[: spec.views], started + budget_s, min_rounds)
    best = _pick([c for c, _ in built], counts, target_items_per_s, gain)
    chosen = next(embedder for c, embedder in built if c is best)
    choice = RuntimeChoice(chosen, candidates, rounds, time.perf_counter() - started, len(check) // spec.views,
                           source)
    log.info("runtime: %s", choice.summary())
    return choice


class _Reference:
    """ONNX Runtime's embeddings (and, with a head, class probabilities) of the check inputs:
    what every other candidate must agree with."""

    def __init__(self, score: Score | None, embeddings: np.ndarray | None = None) -> None:
        self.score, self.embeddings, self.scores = score, None, None
        if embeddings is not None:
            self.set(embeddings)

    def set(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings
        self.scores = self.score(embeddings) if self.score is not None else None

    def disagreement(self, candidate: Candidate, embeddings: np.ndarray) -> str | None:
        """Why the candidate's embeddings are refused, or None (it is scored on the way)."""
        candidate.min_cosine = compare(self.embeddings, embeddings).min_cosine
        if candidate.min_cosine < PARITY_MIN_COSINE:
            return f"embeddings differ from ONNX Runtime's (min cosine {candidate.min_cosine:.5f})"
        if self.scores is None:
            return None
        scores = self.score(embeddings)
        candidate.max_prob_diff = float(np.abs(scores - self.scores).max())
        flipped = int((scores.argmax(1) != self.scores.argmax(1)).sum())
        if flipped or candidate.max_prob_diff > PARITY_MAX_PROB_DIFF:
            return (f"decisions differ from ONNX Runtime's ({flipped} of {len(scores)} check items change class, "
                    f"probabilities up to {candidate.max_prob_diff:.3f} apart)")
        return None


def _build(model_path: str | Path, spec: InputSpec, names: tuple[str, ...], counts: list[int], runtime: str,
           check: np.ndarray, score: Score | None) -> tuple[list[Candidate], list[tuple[Candidate, Embedder]]]:
    """Every candidate, and those that run the model and agree with ONNX Runtime, built."""
    # ONNX Runtime is the reference: its first candidate, or one built for the purpose when the
    # user named another runtime. A model it cannot run is refused outright.
    reference = _Reference(score, None if names[0] == "onnxruntime"
                           else _run_check("onnxruntime", model_path, spec, 1, check)[1])
    candidates: list[Candidate] = []
    built: list[tuple[Candidate, Embedder]] = []
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
            if reference.embeddings is None:
                reference.set(embeddings)
            candidate.refused = reference.disagreement(candidate, embeddings)
            if candidate.refused is not None:
                if runtime != AUTO and name != "onnxruntime":
                    raise ValueError(f"{candidate.key}: {candidate.refused}")
                log.warning("%s refused: %s", candidate.key, candidate.refused)
                continue
            built.append((candidate, embedder))
    return candidates, built


def _time(built: list[tuple[Candidate, Embedder]], item: np.ndarray, budget_end: float, min_rounds: int) -> int:
    """Time the candidates interleaved on one item (at least ``min_rounds`` rounds; more while
    the next round still ends within the budget); sets each one's median ms; returns the rounds."""
    for _, embedder in built:  # the first runs allocate
        embedder.embed_batch(item)
    times: dict[str, list[float]] = {c.key: [] for c, _ in built}
    rounds, round_s = 0, 0.0
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
    return rounds


def _pick(timed: list[Candidate], counts: list[int], target_items_per_s: float, gain: float) -> Candidate:
    """The thread policy: one thread while it embeds ``target_items_per_s``; two only when one
    falls short and two are at least ``gain`` times faster; the fastest runtime at that count."""
    best_at = {count: min((c for c in timed if c.threads == count), key=lambda c: c.ms, default=None)
               for count in counts}
    count = counts[0]
    if len(counts) > 1 and best_at[1] is not None and best_at[2] is not None:
        fast_enough = 1000.0 / best_at[1].ms >= target_items_per_s
        count = 2 if not fast_enough and best_at[1].ms / best_at[2].ms >= gain else 1
    return best_at[count] or min(timed, key=lambda c: c.ms)
