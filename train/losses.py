"""Losses for self-supervised and supervised-contrastive training, each citing its paper.

Every loss works on embeddings (``N×D`` or ``N×V×D``) and does its arithmetic in float32, so
the bf16 autocast of the training loop never reaches a softmax or a correlation matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sortline.edge_runtime.model.descriptors import ColourHistogram


def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return temperature


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy (Chen et al., SimCLR, ICML 2020, eq. 1).

    For a batch of N pairs ``(z1[i], z2[i])`` each of the 2N embeddings must pick out its
    partner among the other 2N-1 by cosine similarity divided by ``temperature``.

    >>> loss = NTXentLoss(temperature=0.2)
    >>> z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
    >>> float(loss(z1, z2)) > 0
    True
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        logits.fill_diagonal_(float("-inf"))  # an embedding is not its own partner
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, partner)


class QueueInfoNCELoss(nn.Module):
    """InfoNCE against a queue of negatives (He et al., MoCo, CVPR 2020, eq. 1; v2: Chen et
    al., 2020). ``q`` must find its key ``k`` among ``k`` and the queued keys of past batches.
    The keys carry no gradient: they come from the momentum encoder."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ queue.detach().float().T
        logits = torch.cat([positive, negatives], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p, stopgrad(z))`` averaged over the batch: SimSiam's D (Chen & He, CVPR 2021,
    eq. 1); BYOL's loss (Grill et al., NeurIPS 2020, eq. 2) is ``2 + 2·negative_cosine``."""
    return -(F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1).mean()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al., ICML 2021, eq. 1): the cross-correlation matrix of the
    two views' standardised embeddings should be the identity. ``lambd`` weighs the
    off-diagonal (redundancy) terms against the diagonal (invariance) ones."""

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        self.lambd = lambd
        self.eps = eps

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + self.eps)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        c = self._standardise(z1).T @ self._standardise(z2) / len(z1)
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diagonal + self.lambd * off_diagonal


class SupConLoss(nn.Module):
    """Supervised contrastive loss, L^sup_out (Khosla et al., NeurIPS 2020, eq. 2), with
    optional hard-negative mining.

    ``features`` is ``N×V×D`` (V views of N images), ``labels`` is ``N``. Every view is an
    anchor; its positives are the other views of its own image and every view of an image
    with the same label. With ``hard_negatives=k`` only the k negatives most similar to the
    anchor stay in its denominator (the positives always do), which keeps the gradient on the
    look-alike products that decide retrieval. Anchors without a positive (one view of a
    one-image class) are left out; a batch with none gives a zero loss that still has a graph.
    """

    def __init__(self, temperature: float = 0.1, hard_negatives: int | None = None) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if hard_negatives is not None and hard_negatives < 1:
            raise ValueError("hard_negatives must be at least 1 (or None for all)")
        self.hard_negatives = hard_negatives

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, v = features.shape[:2]
        z = F.normalize(features.float().reshape(n * v, -1), dim=1)
        label = labels.to(z.device).repeat_interleave(v)
        sim = z @ z.T / self.temperature
        self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
        positive = (label[:, None] == label[None, :]) & ~self_mask
        negative = label[:, None] != label[None, :]
        keep = positive | negative  # the denominator: everything but the anchor itself
        if self.hard_negatives is not None:
            hardest = sim.masked_fill(~negative, float("-inf"))
            k = min(self.hard_negatives, n * v)
            top = hardest.topk(k, dim=1).indices
            chosen = torch.zeros_like(negative).scatter_(1, top, True) & negative
            keep = positive | chosen
        log_prob = sim - torch.logsumexp(sim.masked_fill(~keep, float("-inf")), dim=1, keepdim=True)
        count = positive.sum(dim=1)
        anchors = count > 0
        if not anchors.any():
            return features.sum() * 0.0
        mean_log_prob = (log_prob * positive).sum(dim=1)[anchors] / count[anchors]
        return -mean_log_prob.mean()


def labels_from_pairs(pairs: list[tuple[int, int]], count: int) -> torch.Tensor:
    """Image pairs "a and b show the same item" → one label per image (connected components).

    Images in no pair get a label of their own, so they still serve as negatives.
    """
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        if not (0 <= a < count and 0 <= b < count):
            raise ValueError(f"pair ({a}, {b}) names an image outside 0..{count - 1}")
        parent[root(a)] = root(b)
    roots = [root(i) for i in range(count)]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return torch.tensor([ids[r] for r in roots])


def colour_histogram(rgb: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """``N×3×H×W`` RGB in 0..1 → ``N×bins³`` joint histograms (fractions of the pixels).

    >>> colour_histogram(torch.zeros(2, 3, 4, 4), bins=2)[0].tolist()
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    q = (rgb.float().clamp(0, 1) * bins).long().clamp_(max=bins - 1)
    index = ((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]).flatten(1)
    counts = torch.zeros(len(rgb), bins ** 3, device=rgb.device).scatter_add_(
        1, index, torch.ones_like(index, dtype=torch.float32))
    return counts / index.shape[1]


def hsv_histogram(rgb: torch.Tensor, bins: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``N×3×H×W`` RGB in 0..1 → ``N×(h·s·v)`` joint HSV histograms (fractions of the pixels),
    binned as :class:`~sortline.edge_runtime.model.descriptors.ColourHistogram` bins OpenCV's HSV
    (hue over the full circle, saturation and value over 0..1).

    >>> red = torch.zeros(1, 3, 2, 2); red[:, 0] = 1
    >>> int(hsv_histogram(red, (4, 2, 2)).argmax())  # hue 0, saturation 1, value 1
    3
    """
    if bins is None:  # the descriptor's own layout
        d = ColourHistogram()
        bins = (d.hue_bins, d.saturation_bins, d.value_bins)
    x = rgb.float().clamp(0, 1)
    r, g, b = x.unbind(1)
    top, bottom = x.max(dim=1).values, x.min(dim=1).values
    spread = top - bottom
    d = spread.clamp_min(1e-8)
    hue = torch.where(top == r, ((g - b) / d) % 6, torch.where(top == g, (b - r) / d + 2, (r - g) / d + 4))
    hue = torch.where(spread > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(top > 0, spread / top.clamp_min(1e-8), torch.zeros_like(top))
    nh, ns, nv = bins
    q = [(c * n).long().clamp_(0, n - 1) for c, n in ((hue, nh), (saturation, ns), (top, nv))]
    index = ((q[0] * ns + q[1]) * nv + q[2]).flatten(1)
    counts = torch.zeros(len(rgb), nh * ns * nv, device=rgb.device).scatter_add_(
        1, index, torch.ones_like(index, dtype=torch.float32))
    return counts / index.shape[1]


class ColourPredictionLoss(nn.Module):
    """A colour-aware objective beside a self-supervised one: a linear map from the embedding
    must predict the view's joint RGB histogram (cross entropy with the histogram as a soft
    target, less its entropy, i.e. KL(target ‖ prediction)).

    Instance discrimination is free to ignore colour when augmentation keeps it nearly fixed
    (colour then tells views apart no better than shape), yet colour is much of what tells
    products apart. The target is computed from the augmented view itself, without labels, and
    being linear the map asks the embedding to keep colour where a linear probe can read it.
    """

    def __init__(self, embedding_dim: int, rgb: list[int], mean: list[float], std: list[float],
                 bins: int = 4, space: str = "rgb") -> None:
        super().__init__()
        if len(rgb) != 3:
            raise ValueError("the colour objective needs r, g and b channels")
        if space not in ("rgb", "hsv"):
            raise ValueError(f"colour space is rgb or hsv, got {space!r}")
        self.rgb = list(rgb)
        self.bins = bins
        self.space = space
        self.predict = nn.Linear(embedding_dim, bins ** 3 if space == "rgb" else ColourHistogram().dim)
        self.register_buffer("mean", torch.tensor([mean[i] for i in rgb]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([std[i] for i in rgb]).view(1, 3, 1, 1))

    def forward(self, embeddings: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``embeddings`` ``N×D`` of ``views`` ``N×C×S×S`` (normalised as the backbone takes them)."""
        rgb = views[:, self.rgb].float() * self.std + self.mean
        target = colour_histogram(rgb, self.bins) if self.space == "rgb" else hsv_histogram(rgb)
        log_p = F.log_softmax(self.predict(embeddings).float(), dim=1)
        entropy = -(target * target.clamp_min(1e-12).log()).sum(dim=1)
        return (-(target * log_p).sum(dim=1) - entropy).mean()
