"""k-NN, linear probe, weak-label head metrics and embedding extraction, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_eval import (
    FakeMultiTaskModule,
    brute_ranking,
    brute_scores,
    class_clusters,
    make_loader,
    weak_label_head_metrics,
)
from sklearn.metrics import average_precision_score

from evaluation.embeddings import autocast_context, extract, extract_outputs
from evaluation.head_metrics import streaming_head_metrics
from evaluation.knn import knn_accuracy, knn_predict
from evaluation.linear_probe import linear_probe_accuracy, train_linear_probe

# --------------------------------------------------------------------------------------- k-NN


def test_knn_on_separable_clusters_is_perfect():
    x_tr, y_tr = class_clusters(90, 3, seed=1)
    x_te, y_te = class_clusters(45, 3, seed=2)
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=5, block_size=8) == 1.0


def test_knn_equals_bruteforce_weighted_vote():
    gen = torch.Generator().manual_seed(4)
    x_tr, y_tr = torch.randn(80, 6, generator=gen), torch.randint(0, 4, (80,), generator=gen)
    x_te = torch.randn(30, 6, generator=gen)
    pred = knn_predict(x_tr, y_tr, x_te, k=7, num_classes=4, temperature=0.1, block_size=9)
    scores = brute_scores(x_te.numpy(), x_tr.numpy(), "cosine")
    for i, order in enumerate(brute_ranking(scores)):
        votes = np.zeros(4)
        for j in order[:7]:
            votes[y_tr[j]] += np.exp(scores[i, j] / 0.1)
        assert pred[i].item() == int(np.argmax(votes))


def test_knn_vote_ties_go_to_the_lowest_class_and_k_is_checked():
    x_tr = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y_tr = torch.tensor([2, 1, 0])
    assert knn_predict(x_tr, y_tr, torch.tensor([[1.0, 0.0]]), k=2).tolist() == [1]
    with pytest.raises(ValueError, match="k=4 is larger than the gallery"):
        knn_predict(x_tr, y_tr, torch.tensor([[1.0, 0.0]]), k=4)
    with pytest.raises(ValueError, match="single-label"):
        knn_predict(x_tr, torch.eye(3), x_tr, k=1)


# ------------------------------------------------------------------------------- linear probe


def test_linear_probe_on_separable_data_is_perfect_and_deterministic():
    x_tr, y_tr = class_clusters(120, 4, dim=10, noise=0.3, seed=5)
    x_te, y_te = class_clusters(60, 4, dim=10, noise=0.3, seed=6)
    x_tr, x_te = x_tr * 50 + 7, x_te * 50 + 7  # standardization makes the scale irrelevant
    acc = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, epochs=30, lr=0.1, batch_size=32, seed=3)
    assert acc == 1.0
    a = train_linear_probe(x_tr, y_tr, epochs=3, batch_size=32, seed=3)
    b = train_linear_probe(x_tr, y_tr, epochs=3, batch_size=32, seed=3)
    assert torch.equal(a.linear.weight, b.linear.weight)


def test_linear_probe_cannot_solve_xor():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (400, 2), generator=gen).float()
    y = (x[:, 0] != x[:, 1]).long()
    x = x + 0.05 * torch.randn(400, 2, generator=gen)
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:], epochs=20, batch_size=64) < 0.8


def test_linear_probe_rejects_multi_hot_targets():
    with pytest.raises(ValueError, match="single-label"):
        train_linear_probe(torch.randn(4, 3), torch.eye(4))


# ------------------------------------------------------------------------- weak-label head


def test_head_metrics_perfect_logits_and_sklearn_map():
    def identity(x):
        return x  # features are the logits: the known answers below hold for the metric rules alone

    targets = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]).float()  # label 3: no positives
    perfect = streaming_head_metrics(identity, targets * 5 - 1, targets, 4, [1, 2, 5])
    assert perfect["mAP"] == 1.0 and perfect["p@1"] == 1.0
    assert perfect["p@2"] == pytest.approx((1 / 2 + 1 + 1) / 3)  # the first item has one label only
    assert "p@5" not in perfect  # more than the 4 labels
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    got = streaming_head_metrics(identity, logits, targets, 4, [1])
    ref = np.mean([average_precision_score(targets[:, j], logits[:, j]) for j in range(3)])
    assert got["mAP"] == pytest.approx(ref, abs=1e-6)
    assert weak_label_head_metrics(logits, targets, [1]) == pytest.approx(got, abs=1e-6)  # the tests' reference
    with pytest.raises(ValueError, match="predicts 5 labels, expected 4"):
        streaming_head_metrics(identity, torch.randn(4, 5), targets, 4, [1])


# ------------------------------------------------------------------------------- extraction


def test_extract_collects_in_order_with_one_backbone_pass_per_batch():
    x, y = class_clusters(37, 3, seed=8)
    module = FakeMultiTaskModule(width=8, dim=6, num_labels=3).train()
    loader = make_loader(x, y, batch_size=10)
    got = extract_outputs(module, loader, ["embedding", "backbone", "head:weak_label"], "cpu", progress=False)
    assert module.training  # restored
    assert got.keys == [f"s{i:05d}" for i in range(37)] and torch.equal(got.targets, y)
    torch.testing.assert_close(got.features["backbone"], x)
    with torch.no_grad():
        torch.testing.assert_close(got.features["embedding"], module.heads["embedding"](x))
        torch.testing.assert_close(got.features["head:weak_label"], module.heads["weak_label"](x))
    assert module.calls.count("backbone") == 4 and module.calls.count("embedding") == 1  # one check only
    feats, targets, keys = extract(module, loader, "backbone", "cpu", limit=15)
    assert feats.shape == (15, 8) and targets.tolist() == y[:15].tolist() and len(keys) == 15


def test_extract_falls_back_when_embedding_is_not_the_head_of_the_backbone():
    class Odd(FakeMultiTaskModule):
        def embed(self, images, feature="embedding"):
            out = super().embed(images, feature)
            return -out if feature == "embedding" else out

    x, y = class_clusters(12, 2, seed=9)
    module = Odd()
    got = extract_outputs(module, make_loader(x, y, 5), ["embedding", "backbone"], "cpu", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(got.features["embedding"], -F.normalize(module.heads["embedding"].proj(x), dim=1))
    assert got.notes and "one embed() call per feature" in got.notes[0]


def test_extract_bad_input():
    module = FakeMultiTaskModule(num_labels=None)
    with pytest.raises(ValueError, match="no 'weak_label' head"):
        extract_outputs(module, [], ["head:weak_label"], "cpu")
    with pytest.raises(KeyError, match="lacks \\['key'\\]"):
        extract(module, [{"image": torch.zeros(1, 3, 4, 4), "target": torch.zeros(1)}], "backbone", "cpu")
    with pytest.raises(ValueError, match="unknown feature"):
        extract(module, [], "pixels", "cpu")


def test_autocast_choices():
    cpu = torch.device("cpu")
    assert type(autocast_context(cpu, "auto")).__name__ == "nullcontext"
    assert type(autocast_context(cpu, "32-true")).__name__ == "nullcontext"
    assert isinstance(autocast_context(cpu, "bf16"), torch.autocast)
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_context(cpu, "fp8")


def test_streaming_head_metrics_equal_the_dense_ones(monkeypatch):
    import evaluation.head_metrics as head_metrics

    gen = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(6, 50)
    features = torch.randn(30, 6, generator=gen)
    targets = (torch.rand(30, 50, generator=gen) < 0.06).float()
    targets[0] = 0  # an item without labels: left out of p@k
    with torch.inference_mode():
        dense = weak_label_head_metrics(head(features), targets, [1, 5, 60])
    monkeypatch.setattr(head_metrics, "HEAD_BLOCK_SCORES", 7 * 50)  # blocks of 7 items
    for form in (targets, targets.nonzero()):  # dense, and padded ids built from the same labels
        if form.ndim == 2 and form.dtype == torch.long:
            ids = torch.full((30, 50), -1, dtype=torch.long)
            for i, j in form.tolist():
                ids[i, j] = j
            form = ids
        got = streaming_head_metrics(head, features, form, 50, [1, 5, 60])
        assert got.keys() == dense.keys() == {"mAP", "p@1", "p@5"}
        for name in dense:
            assert got[name] == pytest.approx(dense[name], abs=1e-6), name
    with pytest.raises(ValueError, match="predicts 50 labels but the data holds label id 70"):
        streaming_head_metrics(head, features, torch.tensor([[70]] * 30), 50, [1])
