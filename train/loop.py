"""The training loop every method shares.

AdamW with warmup and a cosine schedule; bf16 autocast where the CPU or GPU has it and
channels-last; a progress bar; a CSV log per step and a JSON summary; a collapse monitor (the
std of the normalised embeddings); training-state checkpoints that resume exactly (model,
optimiser, schedule, momentum encoders and queues, the position in the data); DDP when started
by ``torchrun`` with several processes.

Exactness: the data order and every augmentation are keyed by (seed, epoch, index) (see
:mod:`sortline.train.data`), and the model's own randomness (jigsaw's permutations, its tile
offsets) by (seed, step), so an interrupted run resumed from its state file reaches the same
weights as one that never stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sortline.hardware.files import atomic_file

from .data import EpochSampler, ViewsDataset, batches_per_epoch
from .methods.base import Method

log = logging.getLogger(__name__)
STATE_FORMAT = "sortline-train-state/1"


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    seed: int = 0
    amp: str = "auto"  # auto | bf16 | off
    channels_last: bool = True
    balanced: bool = False  # class-balanced sampling (unlabeled images count as one class)
    max_seconds: float | None = None  # stop early, at a step boundary, past this
    num_workers: int | None = None  # data-loading processes; None: 0 on CPU, up to 8 on a GPU
    log_path: Path | None = None  # CSV per step; a JSON summary beside it
    state_path: Path | None = None  # training state, for resuming
    state_every: int = 200  # steps between training-state saves (and one at the end)


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    embedding_std: list[float] = field(default_factory=list)
    total_steps: int = 0
    resumed_from: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        tail = self.losses[-10:]
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 1),
            "images_per_s": round(self.images_per_s, 1),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "final_embedding_std": round(self.embedding_std[-1], 4) if self.embedding_std else None,
        }


@dataclass(frozen=True)
class Replan:
    """Once, after step ``step``, the schedule's length is set anew to ``total(result)`` steps (at
    least one more): a run planned from a short probe's speed re-plans from the speed it has
    itself kept, and its cosine then ends where the time does. Called on the main process only;
    the others take its answer."""

    step: int
    total: Callable[[TrainResult], int]


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def bf16_available(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # these probes are private; a torch without them gets plain fp32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def embedding_std(embeddings: torch.Tensor) -> float:
    """Std across the batch of L2-normalised embeddings, averaged over dimensions.

    About ``1/sqrt(D)`` for well-spread embeddings, and 0 when every input maps to one point:
    the collapse the non-contrastive methods must avoid (Chen & He, SimSiam, 2021, §4.1).
    """
    return float(F.normalize(embeddings.detach().float(), dim=1).std(dim=0).mean())


def loader_workers(dev: torch.device, requested: int | None) -> int:
    """Augmentation runs per image on the CPU. On a CPU-only machine workers would take cores
    from training itself; a GPU starves without them (691 images/s with none on an H100)."""
    if requested is not None:
        return requested
    return 0 if dev.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class _Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Distributed:
    """DDP when ``torchrun`` started several processes (it sets WORLD_SIZE, RANK, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return _Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return _Distributed(dist.get_rank(), dist.get_world_size())


def _save_state(path: Path, model: Method, optimizer, scheduler, result: TrainResult, config: TrainConfig) -> None:
    state = {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "steps": result.steps,
        "images": result.images,
        "seconds": result.seconds,
        "losses": result.losses,
        "embedding_std": result.embedding_std,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    with atomic_file(path, "state") as tmp:  # a stop at any moment leaves the last whole state
        torch.save(state, tmp)


def _replanned(replan: Replan, result: TrainResult, ddp, dev: torch.device) -> int:
    total = max(result.steps + 1, int(replan.total(result))) if ddp.main else 0
    if ddp.world > 1:
        shared = torch.tensor([total], device=dev)
        dist.broadcast(shared, src=0)
        total = int(shared.item())
    log.info("re-planned at step %d: %d steps in all (was %d)", result.steps, total, result.total_steps)
    return total


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_033 + step


def train(model: Method, dataset: ViewsDataset, config: TrainConfig, progress: bool = True,
          resume: Path | None = None, on_epoch: Callable[[float], None] | None = None,
          desc: str = "pretrain", replan: Replan | None = None) -> TrainResult:
    """Train ``model`` on ``dataset``; with ``resume``, continue from a training-state file;
    with ``replan``, the number of steps is set again once, mid-run (:class:`Replan`).

    ``on_epoch(epochs_done)`` is called after every epoch and after the last step (fine-tuning
    scores its test set there for a learning curve); it gets the model in training mode and
    must leave it so.
    """
    torch.manual_seed(config.seed)
    ddp = _init_distributed()
    dev = device()
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and bf16_available(dev))
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    method = model.to(dev, memory_format=memory_format).train()
    net: torch.nn.Module = method
    if ddp.world > 1:
        if dev.type == "cuda":  # batch statistics over every GPU's share of the batch
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        net = DistributedDataParallel(method, device_ids=[dev.index] if dev.type == "cuda" else None)
    if len(dataset) < ddp.world:
        raise ValueError(f"{len(dataset)} images cannot feed {ddp.world} processes")
    sampler = EpochSampler(dataset.labels, seed=config.seed, balanced=config.balanced, rank=ddp.rank, world=ddp.world)
    per_rank = len(dataset) // ddp.world
    workers = loader_workers(dev, config.num_workers)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                        drop_last=per_rank >= config.batch_size, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=dev.type == "cuda",
                        collate_fn=getattr(dataset, "collate", None))  # a data set that makes whole batches
    steps_per_epoch = batches_per_epoch(len(dataset), config.batch_size, ddp.world)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch)) if config.epochs > 0 else 0
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(1, total_steps // 5))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    result = TrainResult(total_steps=total_steps)
    if resume is not None:
        state = torch.load(resume, map_location=dev, weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{resume}: not a {STATE_FORMAT} file")
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.steps = result.resumed_from = int(state["steps"])
        result.images, result.seconds = int(state["images"]), float(state["seconds"])
        result.losses, result.embedding_std = list(state["losses"]), list(state["embedding_std"])
        log.info("resumed at step %d of %d", result.steps, total_steps)

    writer = None
    log_file = None
    if config.log_path and ddp.main:
        log_file = open(config.log_path, "a" if resume else "w", newline="")
        writer = csv.writer(log_file)
        if not resume:
            writer.writerow(["step", "loss", "lr", "embedding_std", "images_per_s"])
    start = time.perf_counter() - result.seconds
    bar = tqdm(total=total_steps, initial=result.steps, desc=desc, unit="step",
               disable=not progress or not ddp.main, dynamic_ncols=True)
    stopped_early = False
    try:
        while result.steps < total_steps and not stopped_early:
            epoch, done = divmod(result.steps, max(1, steps_per_epoch))
            sampler.set_epoch(epoch, skip=done * config.batch_size)
            for views, labels, *extra in loader:  # extra: what else a dataset gives (an item's sensor features)
                views = views.to(dev, non_blocking=True)  # N×V×C×S×S; the weights are channels-last
                n, v = views.shape[:2]
                labels = labels.to(dev, non_blocking=True)
                extra = [x.to(dev, non_blocking=True) for x in extra]
                torch.manual_seed(_step_seed(config.seed, result.steps))
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, embeddings = net(views, labels, *extra)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                result.steps += 1
                method.after_step(result.steps / max(1, total_steps))
                result.images += n * v * ddp.world
                result.losses.append(loss.item())
                result.embedding_std.append(embedding_std(embeddings))
                result.seconds = time.perf_counter() - start
                if replan is not None and result.steps == replan.step < total_steps:
                    total_steps = result.total_steps = _replanned(replan, result, ddp, dev)
                    bar.total = total_steps
                bar.update()
                bar.set_postfix(loss=f"{result.losses[-1]:.3f}", std=f"{result.embedding_std[-1]:.3f}")
                if writer:
                    writer.writerow([result.steps, f"{result.losses[-1]:.5f}", f"{scheduler.get_last_lr()[0]:.6g}",
                                     f"{result.embedding_std[-1]:.5f}", f"{result.images_per_s:.1f}"])
                    log_file.flush()  # someone may be watching the log of a long run
                if config.state_path and ddp.main and result.steps % config.state_every == 0:
                    _save_state(config.state_path, method, optimizer, scheduler, result, config)
                out_of_time = config.max_seconds is not None and result.seconds > config.max_seconds
                if on_epoch and (result.steps % steps_per_epoch == 0 or result.steps >= total_steps or out_of_time):
                    on_epoch(result.steps / steps_per_epoch)
                if result.steps >= total_steps:
                    break
                if out_of_time:
                    log.warning("stopping at step %d of %d: time budget of %.0f s spent",
                                result.steps, total_steps, config.max_seconds)
                    stopped_early = True
                    break
    finally:
        bar.close()
        if log_file:
            log_file.close()
    if config.state_path and ddp.main and result.steps > result.resumed_from:
        _save_state(config.state_path, method, optimizer, scheduler, result, config)
    if config.log_path and ddp.main:
        summary = {**result.to_dict(), "stopped_early": stopped_early, "bf16": use_bf16, "world_size": ddp.world,
                   "device": str(dev)}
        with atomic_file(Path(config.log_path).with_suffix(".json"), "summary") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    method.eval()
    return result
