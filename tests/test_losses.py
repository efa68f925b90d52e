"""Every loss against a direct, term-by-term computation of its paper's formula, on small
tensors, with the edge cases: identical views, a batch of one, a class with a single member."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sortline.train.losses import (
    BarlowTwinsLoss,
    NTXentLoss,
    QueueInfoNCELoss,
    SupConLoss,
    labels_from_pairs,
    negative_cosine,
)


def _unit(v: torch.Tensor) -> list[torch.Tensor]:
    return [F.normalize(x, dim=0) for x in v]


def ntxent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Eq. 1 of the SimCLR paper, written out term by term."""
    z = _unit(torch.cat([z1, z2]))
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_ntxent_matches_the_paper(n):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, 5), torch.randn(n, 5)
    assert float(NTXentLoss(0.5)(z1, z2)) == pytest.approx(ntxent_reference(z1, z2, 0.5), rel=1e-5)


def test_ntxent_edge_cases():
    loss = NTXentLoss(0.1)
    z = torch.randn(1, 8)
    assert float(loss(z, z)) == pytest.approx(0.0, abs=1e-6)  # one pair: nothing else to confuse
    same = torch.ones(4, 8)
    assert float(loss(same, same)) == pytest.approx(math.log(7), rel=1e-5)  # collapsed: chance
    with pytest.raises(ValueError):
        NTXentLoss(0.0)


@pytest.mark.parametrize("n,k", [(1, 3), (4, 6)])
def test_queue_infonce_matches_moco(n, k):
    torch.manual_seed(k)
    q, key, queue = torch.randn(n, 5), torch.randn(n, 5), F.normalize(torch.randn(k, 5), dim=1)
    t = 0.3
    total = 0.0
    for qi, ki in zip(_unit(q), _unit(key)):
        pos = math.exp(float(qi @ ki) / t)
        neg = sum(math.exp(float(qi @ kj) / t) for kj in queue)
        total += -math.log(pos / (pos + neg))
    assert float(QueueInfoNCELoss(t)(q, key, queue)) == pytest.approx(total / n, rel=1e-5)


def test_queue_infonce_keys_carry_no_gradient():
    q, key = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    QueueInfoNCELoss()(q, key, torch.randn(5, 4)).backward()
    assert q.grad is not None and key.grad is None


def test_negative_cosine_is_simsiam_d_and_stops_the_gradient():
    torch.manual_seed(0)
    p, z = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    expected = -sum(float(a @ b) for a, b in zip(_unit(p.detach()), _unit(z.detach()))) / 4
    loss = negative_cosine(p, z)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z.grad is None and p.grad is not None
    same = torch.randn(1, 6)  # identical views, batch of one: perfect agreement
    assert float(2 + 2 * negative_cosine(same, same)) == pytest.approx(0.0, abs=1e-6)


def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> float:
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c ** 2
    return total


@pytest.mark.parametrize("n", [1, 3, 8])
def test_barlow_twins_matches_the_paper(n):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, 4), torch.randn(n, 4)
    assert float(BarlowTwinsLoss(0.05)(z1, z2)) == pytest.approx(barlow_reference(z1, z2, 0.05), rel=1e-4, abs=1e-6)


def test_barlow_twins_edge_cases():
    z = torch.randn(16, 4)
    identical = float(BarlowTwinsLoss(0.0)(z, z))  # only the diagonal: perfectly invariant
    assert identical == pytest.approx(0.0, abs=1e-3)
    one = torch.randn(1, 4)  # a batch of one has no variance: no correlation, loss = D
    assert float(BarlowTwinsLoss()(one, one)) == pytest.approx(4.0)


def supcon_reference(features: torch.Tensor, labels: torch.Tensor, t: float, hard: int | None = None) -> float:
    """Khosla et al. eq. 2 (L^sup_out), anchor by anchor; with ``hard`` only the most similar
    negatives stay in the denominator."""
    n, v = features.shape[:2]
    z = _unit(features.reshape(n * v, -1))
    lab = [int(labels[i // v]) for i in range(n * v)]
    losses = []
    for i in range(n * v):
        pos = [p for p in range(n * v) if p != i and lab[p] == lab[i]]
        if not pos:
            continue
        neg = [a for a in range(n * v) if lab[a] != lab[i]]
        if hard is not None:
            neg = sorted(neg, key=lambda a: -float(z[i] @ z[a]))[:hard]
        den = sum(math.exp(float(z[i] @ z[a]) / t) for a in pos + neg)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / den) for p in pos) / len(pos))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("hard", [None, 1, 3])
def test_supcon_matches_the_paper(hard):
    torch.manual_seed(3)
    features = torch.randn(6, 2, 5)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])  # class 1 has a single member
    got = float(SupConLoss(0.5, hard_negatives=hard)(features, labels))
    assert got == pytest.approx(supcon_reference(features, labels, 0.5, hard), rel=1e-5)


def test_supcon_edge_cases():
    loss = SupConLoss(0.1)
    one_view = torch.randn(3, 1, 4, requires_grad=True)
    value = loss(one_view, torch.tensor([0, 1, 2]))  # no anchor has a positive
    assert float(value.detach()) == 0.0
    value.backward()  # still a graph
    torch.manual_seed(0)
    pair = torch.randn(4, 2, 8)
    distinct = torch.arange(4)  # every image its own class: SupCon is NT-Xent
    assert float(loss(pair, distinct)) == pytest.approx(float(NTXentLoss(0.1)(pair[:, 0], pair[:, 1])), rel=1e-5)
    same = torch.ones(2, 2, 4)  # identical views, one class: every term is log of 1/3
    assert float(loss(same, torch.zeros(2))) == pytest.approx(math.log(3), rel=1e-5)
    with pytest.raises(ValueError):
        SupConLoss(hard_negatives=0)


def test_labels_from_pairs_are_connected_components():
    labels = labels_from_pairs([(0, 1), (1, 2), (4, 5)], 7)
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5]
    assert len({int(labels[0]), int(labels[3]), int(labels[4]), int(labels[6])}) == 4
    with pytest.raises(ValueError):
        labels_from_pairs([(0, 9)], 3)
