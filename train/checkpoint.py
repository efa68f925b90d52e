"""Backbone checkpoints: the weights plus what is needed to rebuild and feed the model."""

from __future__ import annotations

from pathlib import Path

import torch

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.hardware.files import atomic_file

from .backbones import Backbone, build_backbone

FORMAT = "sortline-backbone/1"


class CheckpointError(SortlineError, ValueError):
    """A checkpoint that is missing, unreadable or not a sortline backbone."""


def save_checkpoint(path: Path, backbone: Backbone, spec: InputSpec, **meta: object) -> Path:
    """Write atomically (``hardware/files.py``): a crash never leaves half a checkpoint."""
    path = Path(path)
    with atomic_file(path, "checkpoint") as tmp:
        torch.save(
            {"format": FORMAT, "backbone": backbone.name, "in_channels": backbone.in_channels, "pool": backbone.pool,
             "input_spec": spec.to_dict(), "state_dict": backbone.state_dict(), "meta": meta},
            tmp,
        )
    return path


def load_checkpoint(path: Path) -> tuple[Backbone, InputSpec, dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    spec = InputSpec.from_dict(data["input_spec"])
    backbone = build_backbone(data["backbone"], in_channels=int(data["in_channels"]), pool=data.get("pool", "avg"))
    state = {k.removeprefix("net."): v for k, v in data["state_dict"].items()}
    backbone.net.load_state_dict(state)
    return backbone.eval(), spec, dict(data.get("meta", {}))


LABELLED_METHODS = ("supcon", "supervised", "distill")  # methods whose loss reads the images' labels


def learned_from_labels(meta: dict) -> bool:
    """Whether a checkpoint's backbone learned from labelled images (a labelled method, a
    recipe's label stage that ran, a station's item stage): a head's examples drawn from them
    sit closer to their classes than new photos do, and cannot calibrate an open set."""
    stage, items = meta.get("label_stage"), meta.get("item_stage")
    return (str(meta.get("method", "")).split(" ")[0] in LABELLED_METHODS
            or (isinstance(stage, dict) and "skipped" not in stage)
            or (isinstance(items, dict) and bool(items.get("ran"))))
