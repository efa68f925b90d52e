"""The training loop every method shares: AdamW, warmup + cosine, bf16 autocast where the CPU
or GPU has it, channels-last, a progress bar, a CSV log and a collapse monitor."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

log = logging.getLogger(__name__)


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
    max_seconds: float | None = None  # stop early, at a step boundary, past this
    num_workers: int | None = None  # data-loading processes; None: 0 on CPU, up to 8 on a GPU
    log_path: Path | None = None


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    embedding_std: list[float] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        tail = self.losses[-10:]
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "images_per_s": round(self.images_per_s, 1),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "final_embedding_std": round(self.embedding_std[-1], 4) if self.embedding_std else None,
        }


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def train(model: nn.Module, dataset: Dataset, config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train ``model`` whose ``forward(view1, view2)`` returns ``(loss, embeddings)``."""
    torch.manual_seed(config.seed)
    dev = device()
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and bf16_available(dev))
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format).train()
    generator = torch.Generator().manual_seed(config.seed)
    workers = loader_workers(dev, config.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= config.batch_size,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=dev.type == "cuda",
    )
    total_steps = max(1, math.ceil(config.epochs * len(loader))) if config.epochs > 0 else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(1, total_steps // 5))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    result = TrainResult()
    writer = None
    log_file = open(config.log_path, "w", newline="") if config.log_path else None
    if log_file:
        writer = csv.writer(log_file)
        writer.writerow(["step", "loss", "lr", "embedding_std", "images_per_s"])
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="pretrain", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        while result.steps < total_steps:
            for view1, view2 in loader:
                view1 = view1.to(dev, memory_format=memory_format, non_blocking=True)
                view2 = view2.to(dev, memory_format=memory_format, non_blocking=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, embeddings = model(view1, view2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                result.steps += 1
                result.images += 2 * len(view1)
                result.losses.append(loss.item())
                result.embedding_std.append(embedding_std(embeddings))
                result.seconds = time.perf_counter() - start
                bar.update()
                bar.set_postfix(loss=f"{result.losses[-1]:.3f}", std=f"{result.embedding_std[-1]:.3f}")
                if writer:
                    writer.writerow([result.steps, f"{result.losses[-1]:.5f}", f"{scheduler.get_last_lr()[0]:.6g}",
                                     f"{result.embedding_std[-1]:.5f}", f"{result.images_per_s:.1f}"])
                    log_file.flush()  # someone may be watching the log of a long run
                if result.steps >= total_steps:
                    break
                if config.max_seconds is not None and result.seconds > config.max_seconds:
                    log.warning("stopping at step %d of %d: time budget of %.0f s spent",
                                result.steps, total_steps, config.max_seconds)
                    total_steps = result.steps
                    break
    finally:
        bar.close()
        if log_file:
            log_file.close()
    model.eval()
    return result
