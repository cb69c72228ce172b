"""Retrieval search and metrics against an independent brute-force numpy reference, hand-made cases
with known answers, and torchmetrics' retrieval metrics where the definitions coincide.

Where torchmetrics (1.9) differs from evaluation.retrieval, and why:
  * mAP@k: RetrievalMAP(top_k=k) divides by the number of relevant items *found in the top k*; ours
    divides by min(R, k) (R = relevant items in the gallery), so a query that finds 1 of its 3
    relevant items at rank 1 scores 1.0 there and 1/3 here. Ours does not reward retrieving few
    relevant items; with k = the whole gallery both are the usual AP and agree.
  * torchmetrics treats items with a non-positive score as not retrieved (target zeroed where
    preds <= 0), so raw cosine scores cannot be fed to it; the comparisons below pass positive
    rank-derived scores that encode our (tie-broken) ranking.
  * Queries without relevant items: ours excludes them, as torchmetrics with empty_target_action="skip".
  * precision@k and recall@k coincide (recall = fraction of the query's relevant items retrieved).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_eval import brute_metrics, brute_ranking, brute_scores, tied_embeddings
from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision, RetrievalRecall

from evaluation.retrieval import (
    evaluate_retrieval,
    hamming_topk,
    pack_signs,
    ranked_topk,
    relevance,
    retrieval_metrics,
    topk_search,
    unpack_signs,
)

KS = [1, 3, 5, 10]


def _labels(n: int, kind: str, seed: int, num_classes: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "single":
        return torch.randint(0, num_classes, (n,), generator=gen)
    multi = (torch.rand(n, 6, generator=gen) < 0.25).float()  # some rows have no label at all
    return multi


# ---------------------------------------------------------------------------------- the search


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
@pytest.mark.parametrize("loo", [False, True])
def test_topk_indices_equal_bruteforce_ranking_with_ties(metric, loo):
    q = tied_embeddings(23, seed=1)
    g = q if loo else tied_embeddings(41, seed=2)
    self_index = torch.arange(23) if loo else None
    k = 12
    got = topk_search(q, g, k, metric, block_size=5, gallery_block_size=7, self_index=self_index)
    scores = brute_scores(q.numpy(), g.numpy(), metric)
    ref = brute_ranking(scores, self_index.tolist() if loo else None)
    assert (scores.round(6) == scores).all() or metric == "cosine"  # hamming scores are integers
    # The data really has ties inside the top k, so the index tie-break is exercised.
    assert any(len(set(np.round(scores[i, r[:k]], 9))) < k for i, r in enumerate(ref))
    for i in range(q.shape[0]):
        assert got.indices[i].tolist() == ref[i][:k].tolist()
        np.testing.assert_allclose(got.scores[i].numpy(), scores[i, ref[i][:k]], atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_block_sizes_give_identical_results(metric):
    gen = torch.Generator().manual_seed(3)
    for q, g in [(tied_embeddings(31, seed=4), tied_embeddings(57, seed=5)), (torch.randn(31, 20, generator=gen),) * 2]:
        runs = [
            topk_search(q, g, 9, metric, block_size=b, gallery_block_size=gb)
            for b, gb in [(1, None), (4, 3), (31, 10), (1000, 57), (7, 1)]
        ]
        for other in runs[1:]:
            assert torch.equal(runs[0].indices, other.indices)
            torch.testing.assert_close(runs[0].scores, other.scores, atol=1e-6, rtol=0)


def test_default_chunking_bounds_memory_and_keeps_results(monkeypatch):
    import evaluation.retrieval as retrieval

    assert retrieval.default_gallery_block(1024, 10**6) == retrieval.MAX_BLOCK_SCORES // 1024
    assert retrieval.default_gallery_block(1024, 100) == 100
    q, g = tied_embeddings(20, seed=8), tied_embeddings(50, seed=9)
    whole = topk_search(q, g, 10, "hamming", block_size=4)
    monkeypatch.setattr(retrieval, "MAX_BLOCK_SCORES", 4 * 6)  # forces 6-item gallery chunks
    chunked = topk_search(q, g, 10, "hamming", block_size=4)
    assert torch.equal(whole.indices, chunked.indices) and torch.equal(whole.scores, chunked.scores)


def test_hamming_topk_on_packed_codes_checks_them():
    x = torch.randn(6, 20)
    codes = pack_signs(x)
    assert torch.equal(hamming_topk(codes, codes, 20, 3).indices, topk_search(x, x, 3, "hamming").indices)
    with pytest.raises(ValueError, match=r"packed uint8 codes \[N, 3\] for dim=20"):
        hamming_topk(codes.long(), codes, 20, 3)


def test_hamming_tie_break_paths_agree():
    """The in-matmul tie-break (float32 matmul precision "highest") and the plain path (TF32 allowed)
    rank identically."""
    q, g = tied_embeddings(15, seed=15), tied_embeddings(70, seed=16)
    codes_q, codes_g = pack_signs(q), pack_signs(g)
    fast = hamming_topk(codes_q, codes_g, 16, 20, block_size=4)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        plain = hamming_topk(codes_q, codes_g, 16, 20, block_size=4)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(fast.indices, plain.indices) and torch.equal(fast.scores, plain.scores)


def test_ranked_topk_breaks_ties_by_lowest_index():
    scores = torch.tensor([[0.5, 0.75, 0.5, 0.75, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    vals, idx = ranked_topk(scores, 4)
    assert idx.tolist() == [[1, 3, 0, 2], [0, 1, 2, 3]]
    assert vals.tolist() == [[0.75, 0.75, 0.5, 0.5], [1.0] * 4]


def test_leave_one_out_excludes_self_by_index():
    x = torch.ones(6, 4)  # all identical: every item ties with every other, including itself
    got = topk_search(x, x, 5, self_index=torch.arange(6))
    for i in range(6):
        assert i not in got.indices[i].tolist()
        assert got.indices[i].tolist() == [j for j in range(6) if j != i]
    # Two items per class, perfectly embedded: each query's only relevant item is its twin.
    emb = F.one_hot(torch.arange(8) // 2, 4).float()
    metrics, counts = evaluate_retrieval(emb, torch.arange(8) // 2, None, None, [1])
    assert metrics == {"precision@1": 1.0, "recall@1": 1.0, "mAP@1": 1.0}
    assert counts["queries_without_relevant"] == 0


def test_hamming_equals_brute_force_bit_distance():
    gen = torch.Generator().manual_seed(7)
    q, g = torch.randn(19, 37, generator=gen), torch.randn(45, 37, generator=gen)  # 37 bits: padded bytes
    got = topk_search(q, g, 45, "hamming", block_size=4, gallery_block_size=10)
    qb, gb = (q > 0).numpy(), (g > 0).numpy()
    for i in range(19):
        dist = [(qb[i] != gb[j]).sum() for j in got.indices[i].tolist()]
        assert (-got.scores[i]).tolist() == dist
        assert dist == sorted(dist)


def test_pack_signs_roundtrip_and_zero_is_bit_zero():
    x = torch.tensor([[0.3, -0.1, 0.0, 2.0, -5.0, 1e-9, -1e-9, 0.0, 4.0]])
    codes = pack_signs(x)
    assert codes.dtype == torch.uint8 and codes.shape == (1, 2)
    assert unpack_signs(codes, 9).tolist() == [[1, -1, -1, 1, -1, 1, -1, -1, 1]]


# --------------------------------------------------------------------------------- the metrics


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("loo", [False, True])
def test_metrics_equal_bruteforce(metric, kind, loo):
    q = tied_embeddings(29, seed=11)
    q_t = _labels(29, kind, seed=12)
    if loo:
        g, g_t, self_index = q, q_t, list(range(29))
        got, counts = evaluate_retrieval(q, q_t, None, None, KS, metric, block_size=6)
    else:
        g, g_t, self_index = tied_embeddings(47, seed=13), _labels(47, kind, seed=14), None
        got, counts = evaluate_retrieval(q, q_t, g, g_t, KS, metric, block_size=6, gallery_block_size=11)
    ref = brute_metrics(q, q_t, g, g_t, KS, metric, self_index)
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name] == pytest.approx(ref[name], abs=1e-12), name
    if kind == "multi":
        assert counts["queries_without_relevant"] > 0  # the exclusion path ran


def test_metrics_on_random_float_embeddings_equal_bruteforce():
    gen = torch.Generator().manual_seed(21)
    q, g = torch.randn(40, 12, generator=gen), torch.randn(90, 12, generator=gen)
    q_t, g_t = torch.randint(0, 3, (40,), generator=gen), torch.randint(0, 3, (90,), generator=gen)
    got, _ = evaluate_retrieval(q, q_t, g, g_t, [1, 10, 50], block_size=16)
    ref = brute_metrics(q, q_t, g, g_t, [1, 10, 50])
    for name in ref:
        assert got[name] == pytest.approx(ref[name], abs=1e-9), name


def test_hand_made_ranking():
    rel = torch.tensor([[True, False, True, False, False]])
    metrics, _ = retrieval_metrics(rel, torch.tensor([3]), [1, 2, 5])
    assert metrics["precision@1"] == 1.0 and metrics["precision@5"] == pytest.approx(2 / 5)
    assert metrics["recall@2"] == pytest.approx(1 / 3) and metrics["recall@5"] == pytest.approx(2 / 3)
    assert metrics["mAP@2"] == pytest.approx(1 / 2)  # (1 * 1 + 1/2 * 0) / min(3, 2)
    assert metrics["mAP@5"] == pytest.approx((1 + 2 / 3) / 3)


def test_perfect_embedding_scores_one():
    labels = torch.arange(60) % 5  # 12 items per class
    # +-1 class codes plus small noise: distinct directions and distinct sign patterns per class.
    emb = F.one_hot(labels, 5).float() * 2 - 1 + 0.01 * torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    for metric in ("cosine", "hamming"):
        got, _ = evaluate_retrieval(emb, labels, None, None, [1, 5, 11], metric)
        for k in (1, 5, 11):
            assert got[f"precision@{k}"] == 1.0 and got[f"mAP@{k}"] == 1.0
            assert got[f"recall@{k}"] == pytest.approx(k / 11)


def test_random_embedding_precision_is_the_class_prior():
    gen = torch.Generator().manual_seed(5)
    priors = torch.tensor([0.4, 0.3, 0.2, 0.1])
    q_t = torch.multinomial(priors, 400, replacement=True, generator=gen)
    g_t = torch.multinomial(priors, 2000, replacement=True, generator=gen)
    q, g = torch.randn(400, 32, generator=gen), torch.randn(2000, 32, generator=gen)
    expected = float((priors**2).sum())  # P(query class c) * P(item is c) summed over c = 0.30
    for metric in ("cosine", "hamming"):
        got, _ = evaluate_retrieval(q, q_t, g, g_t, [10, 50], metric, block_size=128)
        assert got["precision@10"] == pytest.approx(expected, abs=0.03)
        assert got["precision@50"] == pytest.approx(expected, abs=0.03)


def test_relevance_counts_shared_labels_and_skips_self():
    q_t = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]]).float()
    rel, num_rel = relevance(q_t, q_t, torch.tensor([[1, 2], [0, 2], [0, 1]]), torch.arange(3))
    assert rel.tolist() == [[False, False], [False, False], [False, False]]
    assert num_rel.tolist() == [0, 0, 0]
    g_t = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 0]]).float()
    rel, num_rel = relevance(q_t, g_t, torch.tensor([[0, 1], [1, 2], [0, 2]]))
    assert rel.tolist() == [[True, False], [True, False], [False, False]]
    assert num_rel.tolist() == [2, 2, 0]


# ------------------------------------------------------------------------------------ bad input


def test_k_larger_than_gallery_is_a_clear_error():
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="k=6 is larger than the gallery: it has 5 items"):
        topk_search(x, torch.randn(5, 4), 6)
    with pytest.raises(ValueError, match="k=5 is larger than the gallery: it has 4 items after leaving"):
        evaluate_retrieval(x, torch.arange(5), None, None, [1, 5])
    with pytest.raises(ValueError, match="dimension"):
        topk_search(x, torch.randn(5, 3), 1)
    with pytest.raises(ValueError, match="non-finite"):
        topk_search(torch.full((2, 4), float("nan")), x, 1)


# ----------------------------------------------------------------------------- vs torchmetrics


def _torchmetrics_inputs(q, q_t, g, g_t, self_index=None):
    """Flatten (query, gallery item) pairs with positive scores that encode our tie-broken ranking."""
    ranked = topk_search(q, g, g.shape[0] - (1 if self_index is not None else 0), self_index=self_index)
    rel_matrix = torch.as_tensor((q_t[:, None] == g_t[None, :]).numpy())
    preds, target, indexes = [], [], []
    for i in range(q.shape[0]):
        order = ranked.indices[i]
        n = order.numel()
        preds.append(torch.arange(n, 0, -1).float())  # rank 1 -> n, ..., rank n -> 1 (all > 0)
        target.append(rel_matrix[i, order])
        indexes.append(torch.full((n,), i))
    return torch.cat(preds), torch.cat(target), torch.cat(indexes)


@pytest.mark.parametrize("loo", [False, True])
def test_precision_recall_equal_torchmetrics(loo):
    q = tied_embeddings(25, seed=31)
    q_t = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(32))
    if loo:
        g, g_t, self_index = q, q_t, torch.arange(25)
        ours, _ = evaluate_retrieval(q, q_t, None, None, KS)
    else:
        g, g_t, self_index = tied_embeddings(33, seed=33), torch.randint(0, 3, (33,)), None
        ours, _ = evaluate_retrieval(q, q_t, g, g_t, KS)
    preds, target, indexes = _torchmetrics_inputs(q, q_t, g, g_t, self_index)
    for k in KS:
        p = RetrievalPrecision(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        r = RetrievalRecall(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        assert ours[f"precision@{k}"] == pytest.approx(p.item(), abs=1e-6)
        assert ours[f"recall@{k}"] == pytest.approx(r.item(), abs=1e-6)


def test_map_equals_torchmetrics_full_ap_and_differs_at_a_cut():
    q = tied_embeddings(20, seed=41)
    g = tied_embeddings(30, seed=42)
    q_t, g_t = torch.arange(20) % 3, torch.arange(30) % 3
    ours, _ = evaluate_retrieval(q, q_t, g, g_t, [30])  # k = whole gallery: both are the usual AP
    preds, target, indexes = _torchmetrics_inputs(q, q_t, g, g_t)
    full_ap = RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    assert ours["mAP@30"] == pytest.approx(full_ap.item(), abs=1e-6)
    # At a cut: one relevant item of three found, at rank 1. torchmetrics: 1/1; ours: 1/min(3, 5).
    rel = torch.tensor([[True, False, False, False, False]])
    mine, _ = retrieval_metrics(rel, torch.tensor([3]), [5])
    theirs = RetrievalMAP(top_k=5)(
        torch.tensor([5.0, 4, 3, 2, 1, 0.5, 0.4]),
        torch.tensor([True, False, False, False, False, True, True]),
        indexes=torch.zeros(7, dtype=torch.long),
    )
    assert mine["mAP@5"] == pytest.approx(1 / 3) and theirs.item() == pytest.approx(1.0)
