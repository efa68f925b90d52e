"""Looking inside: Grad-CAM heatmaps, t-SNE maps and class-similarity matrices."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.cluster.hierarchy import leaves_list, linkage
from sklearn.manifold import TSNE

from sortline.edge_runtime.model.fusion import FusionSpec
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.preprocess import InputSpec

from .backbones import Backbone
from .data import model_input


@dataclass(frozen=True)
class GradCam:
    heatmaps: np.ndarray  # N×S×S in [0, 1], at the input resolution
    predicted: np.ndarray  # N class indices: the class each heatmap explains
    stage: int  # index into Backbone.stages()
    cells: tuple[int, int]  # the explained map's size


def pick_stage(backbone: Backbone, size: int, min_cells: int = 4) -> tuple[int, tuple[int, int]]:
    """The deepest stage whose map is at least ``min_cells`` a side (the last one at 224 px;
    an inner one for small inputs, where the last map is 2×2 and shows only a quadrant)."""
    x = torch.zeros(1, backbone.in_channels, size, size)
    shapes = []
    with torch.no_grad():
        for stage in backbone.eval().stages():
            x = stage(x)
            shapes.append(tuple(x.shape[-2:]))
    for i in range(len(shapes) - 1, -1, -1):
        if min(shapes[i]) >= min_cells:
            return i, shapes[i]
    return len(shapes) - 1, shapes[-1]


def _fused(embeddings: torch.Tensor, fusion: FusionSpec) -> torch.Tensor:
    """One item's feature row from its views' embeddings, as model/fusion.py's ``fuse`` makes
    it, with the sensor's part at its training means (the head's view of an item without
    readings)."""
    pools = {"mean": lambda e: e.mean(dim=0), "max": lambda e: e.max(dim=0).values}
    sensor = torch.tensor(fusion.sensor_fill or [], dtype=embeddings.dtype)
    return torch.cat([*(pools[name](embeddings) for name in fusion.view_pools), sensor])[None]


def grad_cam(backbone: Backbone, head: LogisticHead, images: np.ndarray, spec: InputSpec,
             stage: int | None = None, fusion: FusionSpec | None = None) -> GradCam:
    """Grad-CAM (Selvaraju et al. 2017) for the head's predicted class: the stage's channels
    weighted by the mean gradient of that class's logit, positive part, upsampled.

    With ``fusion``, ``images`` are one item's views and ``head`` the station's head on fused
    features: each heatmap shows where in its view the evidence for the item's class lies (the
    views pooled as the station pools them)."""
    stages = backbone.eval().stages()
    if stage is None:
        stage, _ = pick_stage(backbone, spec.size)
    x = torch.from_numpy(model_input(images, spec))
    with torch.no_grad():
        for s in stages[:stage + 1]:
            x = s(x)
    activations = x.detach().requires_grad_(True)
    y = activations
    for s in stages[stage + 1:]:
        y = s(y)
    embedding = backbone.pooling(y)
    features = embedding if fusion is None else _fused(embedding, fusion)
    logits = (features - torch.from_numpy(head.mean)) / torch.from_numpy(head.scale) @ \
        torch.from_numpy(head.coef).T + torch.from_numpy(head.intercept)
    predicted = logits.argmax(dim=1)
    logits.gather(1, predicted[:, None]).sum().backward()
    if fusion is not None:  # one decision for the item: each view's map explains it
        predicted = predicted.expand(len(activations))
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activations).sum(dim=1)).detach().numpy()
    heatmaps = np.stack([cv2.resize(c, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR) for c in cams])
    peak = heatmaps.reshape(len(heatmaps), -1).max(axis=1)[:, None, None]
    heatmaps = np.where(peak > 0, heatmaps / np.maximum(peak, 1e-12), 0.0).astype(np.float32)
    return GradCam(heatmaps, predicted.numpy(), stage, tuple(activations.shape[-2:]))


def tsne(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """``N×D`` → ``N×2``, cosine distances (as the retrieval protocol), PCA initialisation."""
    perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca",
                random_state=seed).fit_transform(embeddings.astype(np.float64))


@dataclass(frozen=True)
class ClassSimilarity:
    matrix: np.ndarray  # K×K cosine similarity of class mean embeddings, in ``order``
    classes: np.ndarray  # class indices, ordered so that similar classes sit together
    pairs: list[tuple[int, int, float]]  # most similar distinct pairs, best first


def class_similarity(embeddings: np.ndarray, labels: np.ndarray, top: int = 15) -> ClassSimilarity:
    """Cosine similarity between the classes' mean unit embeddings, rows and columns in the
    leaf order of an average-linkage clustering, so that blocks show families of classes."""
    classes = np.unique(labels)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([unit[labels == c].mean(axis=0) for c in classes])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    similarity = centroids @ centroids.T
    order = leaves_list(linkage(centroids, method="average", metric="cosine")) if len(classes) > 2 \
        else np.arange(len(classes))
    upper = np.triu_indices(len(classes), k=1)
    best = np.argsort(-similarity[upper])[:top]
    pairs = [(int(classes[upper[0][i]]), int(classes[upper[1][i]]), float(similarity[upper][i])) for i in best]
    return ClassSimilarity(similarity[np.ix_(order, order)], classes[order], pairs)
