"""Fine-tuning the whole backbone with a few labels, and the supervised-from-scratch baseline.

Both are one thing: a backbone plus a linear classifier trained with cross-entropy by the
pretraining loop (same optimiser, schedule, augmentation and logs), from a checkpoint's weights
(fine-tuning) or from a random initialisation of the same architecture (scratch). The test
set is scored after every epoch, which gives the learning curve.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig, MultiChannelAugment
from .backbones import Backbone, build_backbone
from .data import TrainingSet, ViewsDataset
from .evaluate import Scores, embed, sample_per_class
from .loop import TrainConfig, train
from .methods.base import Method, StepOutput


class Classifier(Method):
    """Backbone → linear layer, trained with cross-entropy on one augmented view per image."""

    views = 1
    needs_labels = True

    def __init__(self, backbone: Backbone, classes: int) -> None:
        super().__init__(backbone)
        self.head = nn.Linear(backbone.embedding_dim, classes)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        embeddings = self.backbone(views[:, 0])
        return StepOutput(F.cross_entropy(self.head(embeddings), labels), embeddings)

    @torch.no_grad()
    def predict(self, images: np.ndarray, spec) -> np.ndarray:
        """Edge-preprocessed uint8 images → class indices (the model is left in eval mode)."""
        self.eval()
        x = torch.from_numpy(embed(self.backbone, images, spec)).to(self.head.weight.device)
        return self.head(x).argmax(dim=1).cpu().numpy()


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: float = 30.0
    batch_size: int = 64
    lr: float = 5e-4
    labels_per_class: int | None = None  # None: every labeled train image
    seed: int = 0
    max_seconds: float | None = None
    augment: str = "colour-safe"


@dataclass
class FineTuneResult:
    name: str  # "finetune:5", "scratch", ...
    scores: Scores
    predicted: np.ndarray
    images: int
    curve: list[dict] = field(default_factory=list)  # epoch, test accuracy
    losses: list[float] = field(default_factory=list)  # per step
    train: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"protocol": self.name, **self.scores.to_dict(), "train_images": self.images,
                "steps": self.train.get("steps"), "seconds": self.train.get("seconds"),
                "stopped_early": self.train.get("steps") != self.train.get("total_steps")}


def fine_tune(backbone: Backbone, train_set: TrainingSet, test: TrainingSet, config: FineTuneConfig,
              from_scratch: bool = False, log_path: Path | None = None, progress: bool = False) -> FineTuneResult:
    """Train ``backbone`` (a copy; or, ``from_scratch``, a fresh one of its architecture) and a
    linear classifier on the train labels, and score the test set."""
    labeled = np.flatnonzero(train_set.labels >= 0)
    if config.labels_per_class is not None:
        labeled = labeled[sample_per_class(train_set.labels[labeled], config.labels_per_class,
                                           np.random.default_rng(config.seed))]
    torch.manual_seed(config.seed)
    if from_scratch:
        net = build_backbone(backbone.name, in_channels=backbone.in_channels, pool=backbone.pool)
    else:
        net = copy.deepcopy(backbone)
    model = Classifier(net, len(train_set.class_names))
    augment = MultiChannelAugment(train_set.spec, AugmentConfig.recipe(config.augment))
    dataset = ViewsDataset(train_set.images[labeled], augment, views=1, labels=train_set.labels[labeled],
                           seed=config.seed)
    curve: list[dict] = []

    def score_test(epochs_done: float) -> None:
        accuracy = Scores.of(test.labels, model.predict(test.images, test.spec)).accuracy
        curve.append({"epoch": round(epochs_done, 3), "test_accuracy": round(accuracy, 4)})
        model.train()

    k = config.labels_per_class
    name = ("scratch" if from_scratch else "finetune") + ("" if k is None else f":{k}")
    result = train(model, dataset,
                   TrainConfig(epochs=config.epochs, batch_size=min(config.batch_size, len(dataset)), lr=config.lr,
                               seed=config.seed, max_seconds=config.max_seconds, log_path=log_path),
                   progress=progress, on_epoch=score_test, desc=name)
    predicted = model.predict(test.images, test.spec)
    return FineTuneResult(name, Scores.of(test.labels, predicted), predicted, len(dataset), curve,
                          result.losses, result.to_dict())
