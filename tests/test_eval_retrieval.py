"""Retrieval search and metrics against independent brute-force references: textbook metrics on untied
random data, an enumeration of every ordering of the tied items on tiny tied data, hand-made cases with
known answers, and torchmetrics' retrieval metrics where the definitions coincide.

Where torchmetrics (1.9) differs from evaluation.retrieval, and why:
  * mAP@k: RetrievalMAP(top_k=k) divides by the number of relevant items *found in the top k*; ours
    divides by min(R, k), so a query that finds 1 of its 3 relevant items at rank 1 scores 1.0 there
    and 1/3 here. With k = the whole gallery both are the usual AP and agree.
  * torchmetrics treats items with a non-positive score as not retrieved, so the comparisons below
    pass positive rank-derived scores; and it breaks ties by input order, ours averages over them, so
    the comparison uses untied data.
  * recall@k is the metric-learning Recall@K = torchmetrics' RetrievalHitRate; ir_recall@k is
    RetrievalRecall.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_eval import (
    brute_metrics,
    brute_relevant,
    brute_scores,
    brute_tie_average,
    relevance,
    retrieval_metrics,
    tied_embeddings,
    unpack_signs,
)
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalPrecision, RetrievalRecall

import evaluation.retrieval as retrieval
from evaluation.retrieval import (
    LabelSets,
    count_relevant,
    evaluate_retrieval,
    label_sets,
    pack_signs,
    ranked_topk,
    share_label,
    topk_search,
)

KS = [1, 3, 5, 10]
NAMES = ("precision", "recall", "ir_recall", "mAP")


def _labels(n: int, kind: str, seed: int, num_classes: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "single":
        return torch.randint(0, num_classes, (n,), generator=gen)
    return (torch.rand(n, 6, generator=gen) < 0.25).float()  # some rows have no label at all


def _assert_same(got: dict, ref: dict, tol: float = 1e-12) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name] == pytest.approx(ref[name], abs=tol), name


# ---------------------------------------------------------------------------------- the search


@pytest.mark.parametrize("loo", [False, True])
def test_faiss_and_torch_search_agree(loo):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(37, 24, generator=gen)
    g = q if loo else torch.randn(211, 24, generator=gen)
    self_index = torch.arange(37) if loo else None
    for metric in ("cosine", "hamming"):
        fast = topk_search(q, g, 9, metric, self_index=self_index)
        slow = topk_search(q, g, 9, metric, block_size=5, gallery_block_size=13, self_index=self_index, use_faiss=False)
        torch.testing.assert_close(fast.scores, slow.scores, atol=1e-5, rtol=0)  # Hamming: equal k-th distances
        if metric == "cosine":  # untied float scores: the same lists
            assert torch.equal(fast.indices, slow.indices)
        if loo:
            assert not (fast.indices == self_index[:, None]).any()


def test_hamming_equals_brute_force_bit_distance():
    gen = torch.Generator().manual_seed(7)
    q, g = torch.randn(19, 37, generator=gen), torch.randn(45, 37, generator=gen)  # 37 bits: padded bytes
    ref = np.sort(-brute_scores(q.numpy(), g.numpy(), "hamming"), axis=1)
    for use_faiss in (True, False):
        got = topk_search(q, g, 45, "hamming", use_faiss=use_faiss)
        assert (-got.scores).numpy().tolist() == ref.tolist()
        qb, gb = (q > 0).numpy(), (g > 0).numpy()
        for i in range(19):
            assert (-got.scores[i]).tolist() == [(qb[i] != gb[j]).sum() for j in got.indices[i].tolist()]
    assert torch.equal(
        retrieval.hamming_distances(pack_signs(q), pack_signs(g)),
        torch.from_numpy(-brute_scores(q.numpy(), g.numpy(), "hamming")).int(),
    )


def test_search_on_packed_codes_checks_them():
    x = torch.randn(6, 20)
    codes = pack_signs(x)
    assert torch.equal(
        topk_search(codes, codes, 3, "hamming", packed_dim=20).scores, topk_search(x, x, 3, "hamming").scores
    )
    with pytest.raises(ValueError, match=r"packed uint8 codes \[N, 3\] for dim=20"):
        topk_search(codes.long(), codes, 3, "hamming", packed_dim=20)
    with pytest.raises(ValueError, match="metric must be 'hamming'"):
        topk_search(codes, codes, 3, "cosine", packed_dim=20)


def test_pack_signs_roundtrip_and_zero_is_bit_zero():
    x = torch.tensor([[0.3, -0.1, 0.0, 2.0, -5.0, 1e-9, -1e-9, 0.0, 4.0]])
    codes = pack_signs(x)
    assert codes.dtype == torch.uint8 and codes.shape == (1, 2)
    assert unpack_signs(codes, 9).tolist() == [[1, -1, -1, 1, -1, 1, -1, -1, 1]]


def test_ranked_topk_breaks_ties_by_lowest_index():
    scores = torch.tensor([[0.5, 0.75, 0.5, 0.75, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [3, 2, 1, 0, -1, -2]])
    vals, idx = ranked_topk(scores.float(), 4)
    assert idx.tolist() == [[1, 3, 0, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert vals.tolist() == [[0.75, 0.75, 0.5, 0.5], [1.0] * 4, [3, 2, 1, 0]]


def test_faiss_missing_falls_back_to_torch(monkeypatch):
    x, y = tied_embeddings(40, seed=3), torch.arange(40) % 3
    with_faiss = evaluate_retrieval(x, y, None, None, KS, "hamming")
    monkeypatch.setattr(retrieval, "HAVE_FAISS", False)
    without = evaluate_retrieval(x, y, None, None, KS, "hamming")
    _assert_same(without[0], with_faiss[0])


# ------------------------------------------------------------------------ metrics without ties


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("loo", [False, True])
def test_metrics_on_untied_random_data_equal_bruteforce(kind, loo):
    gen = torch.Generator().manual_seed(21)
    q, q_t = torch.randn(40, 12, generator=gen), _labels(40, kind, seed=12)
    if loo:
        got, counts = evaluate_retrieval(q, q_t, None, None, KS, block_size=16)
        ref = brute_metrics(q, q_t, q, q_t, KS, "cosine", list(range(40)))
    else:
        g, g_t = torch.randn(90, 12, generator=gen), _labels(90, kind, seed=14)
        got, counts = evaluate_retrieval(q, q_t, g, g_t, KS, block_size=16)
        ref = brute_metrics(q, q_t, g, g_t, KS)
    _assert_same(got, ref, 1e-9)
    assert 0 < got["recall@1"] < got["recall@10"] <= 1  # Recall@K (any hit) is not the fraction retrieved
    assert got["ir_recall@10"] < got["recall@10"]
    if kind == "multi":
        assert counts["queries_without_relevant"] > 0  # the exclusion path ran


def test_hand_made_ranking():
    rel = torch.tensor([[False, True, True, False, False]])
    metrics, _ = retrieval_metrics(rel, torch.tensor([3]), [1, 2, 5])
    assert metrics["precision@1"] == 0.0 and metrics["precision@5"] == pytest.approx(2 / 5)
    assert metrics["recall@1"] == 0.0 and metrics["recall@2"] == 1.0  # a relevant item by rank 2
    assert metrics["ir_recall@2"] == pytest.approx(1 / 3) and metrics["ir_recall@5"] == pytest.approx(2 / 3)
    assert metrics["mAP@2"] == pytest.approx(1 / 4)  # (0 + 1/2) / min(3, 2)
    assert metrics["mAP@5"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_perfect_embedding_scores_one():
    labels = torch.arange(60) % 5  # 12 items per class
    emb = F.one_hot(labels, 5).float() * 2 - 1 + 0.01 * torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    for metric in ("cosine", "hamming"):
        got, _ = evaluate_retrieval(emb, labels, None, None, [1, 5, 11], metric)
        for k in (1, 5, 11):
            assert got[f"precision@{k}"] == 1.0 and got[f"mAP@{k}"] == 1.0 and got[f"recall@{k}"] == 1.0
            assert got[f"ir_recall@{k}"] == pytest.approx(k / 11)


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


# ------------------------------------------------------------------------------ tie-aware metrics


def test_hand_made_tied_group():
    """One query, four gallery items at the same distance, one of them relevant."""
    q = torch.ones(1, 8)
    g = torch.ones(4, 8)
    got, _ = evaluate_retrieval(q, torch.tensor([0]), g, torch.tensor([1, 0, 1, 1]), [1, 2, 4], "hamming")
    assert got["precision@1"] == pytest.approx(1 / 4) and got["recall@1"] == pytest.approx(1 / 4)
    assert got["recall@2"] == pytest.approx(1 - 3 / 6)  # 1 - C(3, 2) / C(4, 2)
    assert got["precision@2"] == pytest.approx(1 / 4) and got["ir_recall@2"] == pytest.approx(1 / 2)
    assert got["mAP@4"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)  # E[1 / rank of the relevant item]
    assert got["recall@4"] == 1.0


def _tiny_tied_case(seed: int, kind: str, bits: int = 3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(5, bits, generator=gen)
    g = torch.randn(6, bits, generator=gen)  # 3 bits for 6 items: ties everywhere, also across every cut
    return q, _labels(5, kind, seed + 1, 3), g, _labels(6, kind, seed + 2, 3)


@pytest.fixture(params=[0, 50], ids=["margin0", "margin50"])
def cut_margin(request, monkeypatch):
    """CUT_MARGIN=0: one candidate past the cut, so cut groups spill over and the exact count pass runs."""
    monkeypatch.setattr(retrieval, "CUT_MARGIN", request.param)
    calls = []
    real = retrieval.cut_group_counts
    monkeypatch.setattr(retrieval, "cut_group_counts", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    return calls if request.param == 0 else None


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_aware_metrics_equal_the_average_over_all_orderings(kind, seed, cut_margin):
    q, q_t, g, g_t = _tiny_tied_case(10 * seed, kind)
    scores = brute_scores(q.numpy(), g.numpy(), "hamming")
    rel = brute_relevant(q_t.numpy(), g_t.numpy())
    ks = [1, 2, 3]  # k = 3 of 6 items: with CUT_MARGIN=0 the 4 candidates leave ties outside
    ref = brute_tie_average(scores, rel, ks)
    for use_faiss in (True, False):
        got, _ = evaluate_retrieval(q, q_t, g, g_t, ks, "hamming", block_size=2, use_faiss=use_faiss)
        _assert_same(got, ref)
        # The same ±1 codes as float vectors: cosine ties are the same ties.
        signs = unpack_signs(pack_signs(q), 3), unpack_signs(pack_signs(g), 3)
        got_cos, _ = evaluate_retrieval(signs[0], q_t, signs[1], g_t, ks, "cosine", use_faiss=use_faiss)
        _assert_same(got_cos, ref)
    if cut_margin is not None:
        assert cut_margin, "the count pass never ran"


def test_tie_aware_leave_one_out_equals_the_average_over_all_orderings(cut_margin):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 0, 1, 0, 2, 1])
    scores = brute_scores(x.numpy(), x.numpy(), "hamming")
    rel = brute_relevant(y.numpy(), y.numpy())
    keep = ~np.eye(7, dtype=bool)  # each query without itself: 6 gallery items per row
    ref = brute_tie_average(scores[keep].reshape(7, 6), rel[keep].reshape(7, 6), [1, 2, 4])
    got, _ = evaluate_retrieval(x, y, None, None, [1, 2, 4], "hamming")
    _assert_same(got, ref)


def test_float_duplicates_are_ties_averaged_over_all_orderings(cut_margin):
    """Random float vectors, each twice in the gallery (duplicate images): equal cosine scores are one
    tied group, whatever float32 rounding the search kernel gives each copy. (Ties are equal vectors
    after float32 normalization: x and 3x may round apart and then rank as distinct items.)"""
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(6, 5, generator=gen)
    g = torch.randn(3, 5, generator=gen).repeat_interleave(2, dim=0)
    q_t, g_t = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 1, 2, 0, 0])
    scores = brute_scores(q.numpy(), g.numpy(), "cosine")
    ref = brute_tie_average(scores, brute_relevant(q_t.numpy(), g_t.numpy()), [1, 3])
    got, _ = evaluate_retrieval(q, q_t, g, g_t, [1, 3], "cosine")
    _assert_same(got, ref)


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_permuting_the_gallery_never_changes_a_figure(metric, cut_margin):
    x = tied_embeddings(120, dim=16, seed=2)  # cosine a multiple of 1/16: exact ties in both metrics
    y = _labels(120, "multi", seed=3)
    base, _ = evaluate_retrieval(x[:30], y[:30], x, y, KS, metric, self_index=torch.arange(30))
    for seed in range(3):
        perm = torch.randperm(120, generator=torch.Generator().manual_seed(seed))
        where = torch.argsort(perm)  # new position of each old item
        got, _ = evaluate_retrieval(x[:30], y[:30], x[perm], y[perm], KS, metric, self_index=where[:30])
        _assert_same(got, base)


def test_ties_are_counted_beyond_the_returned_list(cut_margin):
    """A cut group larger than k: its size and relevant count come from the whole gallery."""
    q = torch.ones(1, 8)
    g = torch.cat([torch.ones(50, 8), -torch.ones(10, 8)])  # 50 items tied at distance 0
    g_t = torch.cat([torch.tensor([1] * 45 + [0] * 5), torch.zeros(10, dtype=torch.long)])
    got, _ = evaluate_retrieval(q, torch.tensor([0]), g, g_t, [1, 10], "hamming")
    assert got["precision@10"] == pytest.approx(5 / 50)
    assert got["ir_recall@10"] == pytest.approx(10 * (5 / 50) / 15)
    assert got["recall@1"] == pytest.approx(5 / 50)
    if cut_margin is not None:
        assert cut_margin == [1]  # the query's cut group was counted in the whole gallery


# ------------------------------------------------------------------------------------- relevance


def test_label_sets_from_every_target_format_agree():
    dense = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]).float()
    ids = torch.tensor([[3, 0, -1], [-1, -1, -1], [2, 1, -1]])
    weighted = torch.tensor([[3, 0, 1], [2, -1, -1], [2, 1, -1]])
    weights = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.9, 0.0]])
    for sets in (label_sets(ids), label_sets(weighted, weights)):
        assert torch.equal(sets.ids[:, :2], label_sets(dense).ids)
    assert label_sets(dense).sizes.tolist() == [2, 0, 2]


def test_relevance_counts_shared_labels_and_skips_self():
    q_t = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]]).float()
    rel, num_rel = relevance(q_t, q_t, torch.tensor([[1, 2], [0, 2], [0, 1]]), torch.arange(3))
    assert rel.tolist() == [[False, False], [False, False], [False, False]]
    assert num_rel.tolist() == [0, 0, 0]
    g_t = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 0]]).float()
    rel, num_rel = relevance(q_t, g_t, torch.tensor([[0, 1], [1, 2], [0, 2]]))
    assert rel.tolist() == [[True, False], [True, False], [False, False]]
    assert num_rel.tolist() == [2, 2, 0]


def test_sparse_relevance_equals_dense_on_random_labels():
    gen = torch.Generator().manual_seed(9)
    q_t, g_t = (torch.rand(30, 40, generator=gen) < 0.08).float(), (torch.rand(80, 40, generator=gen) < 0.08).float()
    dense = (q_t @ g_t.T) > 0
    qs, gs = label_sets(q_t), label_sets(g_t)
    assert count_relevant(qs, gs).tolist() == dense.sum(1).tolist()
    qi, gi = torch.meshgrid(torch.arange(30), torch.arange(80), indexing="ij")
    assert torch.equal(share_label(qs[qi.reshape(-1)], gs[gi.reshape(-1)]).view(30, 80), dense)
    assert isinstance(qs, LabelSets)


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
    with pytest.raises(ValueError, match="disagree on the label count"):
        evaluate_retrieval(x, torch.eye(5, 3), x, torch.eye(5, 4), [1])


# ----------------------------------------------------------------------------- vs torchmetrics


def _torchmetrics_inputs(q, q_t, g, g_t, self_index=None):
    """Flatten (query, gallery item) pairs with positive scores that encode our ranking (untied data)."""
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
    gen = torch.Generator().manual_seed(31)
    q = torch.randn(25, 10, generator=gen)
    q_t = torch.randint(0, 3, (25,), generator=gen)
    if loo:
        g, g_t, self_index = q, q_t, torch.arange(25)
        ours, _ = evaluate_retrieval(q, q_t, None, None, KS)
    else:
        g, g_t, self_index = torch.randn(33, 10, generator=gen), torch.randint(0, 3, (33,), generator=gen), None
        ours, _ = evaluate_retrieval(q, q_t, g, g_t, KS)
    preds, target, indexes = _torchmetrics_inputs(q, q_t, g, g_t, self_index)
    for k in KS:
        for name, cls in (
            ("precision", RetrievalPrecision),
            ("ir_recall", RetrievalRecall),
            ("recall", RetrievalHitRate),
        ):
            ref = cls(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
            assert ours[f"{name}@{k}"] == pytest.approx(ref.item(), abs=1e-6), (name, k)


def test_map_equals_torchmetrics_full_ap_and_differs_at_a_cut():
    gen = torch.Generator().manual_seed(41)
    q, g = torch.randn(20, 10, generator=gen), torch.randn(30, 10, generator=gen)
    q_t, g_t = torch.arange(20) % 3, torch.arange(30) % 3
    ours, _ = evaluate_retrieval(q, q_t, g, g_t, [30])  # k = whole gallery: both are the usual AP
    preds, target, indexes = _torchmetrics_inputs(q, q_t, g, g_t)
    full_ap = RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    assert ours["mAP@30"] == pytest.approx(full_ap.item(), abs=1e-6)
    rel = torch.tensor([[True, False, False, False, False]])
    mine, _ = retrieval_metrics(rel, torch.tensor([3]), [5])
    theirs = RetrievalMAP(top_k=5)(
        torch.tensor([5.0, 4, 3, 2, 1, 0.5, 0.4]),
        torch.tensor([True, False, False, False, False, True, True]),
        indexes=torch.zeros(7, dtype=torch.long),
    )
    assert mine["mAP@5"] == pytest.approx(1 / 3) and theirs.item() == pytest.approx(1.0)
