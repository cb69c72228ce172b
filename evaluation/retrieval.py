"""Retrieval evaluation: exact top-k search (float cosine, binarized Hamming) and tie-aware metrics.

Search (``topk_search``): faiss ``IndexBinaryFlat`` on packed sign bits (``numpy.packbits``, D/8
bytes per item, the serving format); float cosine of L2-normalized float32 embeddings by blockwise
torch matmul + topk, which measured faster than faiss ``IndexFlatIP`` here (benchmarks/bench_retrieval.py).
Without faiss (an import-guarded fallback) Hamming runs blockwise in torch, xor + popcount by byte
table. Neither builds the full query x gallery matrix. The order of tied items inside a returned
list is unspecified: metrics never depend on it (below).

Binarization (the paper serves binarized embeddings): bit = 1 where the float value is > 0, else 0.

Metrics, for a query with R relevant gallery items (self excluded under leave-one-out) and
``rel_i`` = 1 when the item at rank i (1-based) is relevant:
    precision@k = (1/k) * sum_{i<=k} rel_i
    recall@k    = 1 if any rel_i = 1 for i <= k, else 0. This is Recall@K as the metric-learning
                  papers report it (Song et al. 2016; Zhai and Wu 2019; the Pinterest papers): the
                  share of queries with a relevant item in their top k (a "hit rate").
    ir_recall@k = (1/R) * sum_{i<=k} rel_i: the IR definition (torchmetrics' RetrievalRecall), the
                  fraction of the query's relevant items retrieved. Before 2026-12 this figure was
                  logged as "recall@k"; it now has its own name.
    mAP@k       = (1/min(R, k)) * sum_{i<=k} precision@i * rel_i, averaged over queries
Each is averaged over queries with R > 0; queries with R = 0 are excluded from every metric and
counted (``queries_without_relevant``), as torchmetrics does with ``empty_target_action="skip"``.

Ties (McSherry and Najork, "Computing information retrieval performance measures efficiently in
the presence of tied scores", ECIR 2008): items with equal scores form a group whose internal order
is unknown, and every metric is its expected value over all orderings of every tied group, so
permuting the gallery never changes a figure. Hamming distances are small integers and tie in bulk
(a tie across the k = 50 cut is the rule for 256-bit codes, not the exception). For float cosine,
ties are equal float64 scores of the float32-normalized vectors (e.g. duplicate images). With a
group of n items holding r relevant ones that occupies ranks s+1..s+n, H relevant items ranked
before it and a cut k inside it (m = k - s of its items above the cut):
    E[hits@k] = H + m * r / n
    E[rel_i * hits@i] = (r / n) * (H + 1 + (p - 1) * (r - 1) / (n - 1))   at rank i = s + p
    P(no relevant item above the cut) = C(n - r, m) / C(n, m)              (when H = 0)
The cut group may extend past the k-th place. The search returns CUT_MARGIN extra candidates (4 for
float); when the last candidate scores below the k-th, the whole cut group is among them. Otherwise
its size n and relevant count r in the whole gallery are counted exactly by a second, blockwise pass
over those queries only (``cut_group_counts``: memory O(block x gallery chunk)). Float candidates
whose search scores lie within float32 rounding of a neighbour are rescored in float64 first, so
rounding never splits or fakes a tie; with no near-ties (most float queries) that costs nothing.

Relevance (``LabelSets``): every item carries a set of label ids (single-label class ids are sets
of one); a gallery item is relevant to a query when the sets intersect. Sets are sorted padded id
lists, intersected with ``searchsorted``: memory O(items x labels per item), never O(C), so
dense [N, C] multi-hot targets are accepted as input but not needed.

Against torchmetrics.retrieval (tests/test_eval_retrieval.py checks it): on untied scores,
precision@k and ir_recall@k equal RetrievalPrecision / RetrievalRecall(top_k=k,
empty_target_action="skip") and recall@k equals RetrievalHitRate(top_k=k). RetrievalMAP(top_k=k)
divides by the relevant items found in the top k, not min(R, k), so it rewards finding few relevant
items; the two agree when k covers the whole gallery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

try:  # faiss is the search engine; the torch path below is only for installs without it
    import faiss
except ImportError:  # pragma: no cover - exercised by forcing HAVE_FAISS=False in the tests
    faiss = None

HAVE_FAISS = faiss is not None
# Float search runs in torch (matmul + topk per block): on this repo's 2-core CPU box, 1,000 x 200k x 256-d,
# k = 51, one thread, faiss IndexFlatIP took 10.7 s and torch 3.4-4.5 s (faiss pushes every score through a
# k-heap); IndexBinaryFlat is the fast one for Hamming (0.57 s).
CUT_MARGIN = 50  # candidates searched past the k-th, so that most cut groups are seen whole (no count pass)
METRICS = ("precision", "recall", "ir_recall", "mAP")
MAX_BLOCK_SCORES = 1 << 24  # scores per block in the exact passes (128 MiB of float64)
SEARCH_BLOCK_SCORES = 1 << 26  # float32 scores per block of the torch search (256 MiB)
SEARCH_METRICS = ("cosine", "hamming")
PAD = torch.iinfo(torch.long).max  # padding of LabelSets.ids: sorts after every real id


@dataclass
class TopK:
    """Result of a top-k search: ``scores`` [Q, k] (cosine, or minus the Hamming distance) and
    ``indices`` [Q, k] (long gallery indices), each row ranked best first (tied items in any order)."""

    scores: Tensor
    indices: Tensor


# ------------------------------------------------------------------------------------ encodings


def l2_normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm, in float32 (zero rows stay zero)."""
    return torch.nn.functional.normalize(x.float(), dim=1)


def pack_signs(x: Tensor) -> Tensor:
    """Sign-binarize float embeddings [N, D] (bit = x > 0) and pack 8 bits per byte -> uint8 [N, ceil(D/8)]."""
    bits = (x > 0).cpu().numpy()
    return torch.from_numpy(np.packbits(bits, axis=1))


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def hamming_distances(q_codes: Tensor, g_codes: Tensor) -> Tensor:
    """Exact Hamming distances int32 [Q, G] between packed codes (faiss.hammings, else a byte table)."""
    if HAVE_FAISS:
        a, b = np.ascontiguousarray(q_codes.cpu().numpy()), np.ascontiguousarray(g_codes.cpu().numpy())
        out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
        faiss.hammings(faiss.swig_ptr(a), faiss.swig_ptr(b), a.shape[0], b.shape[0], a.shape[1], faiss.swig_ptr(out))
        return torch.from_numpy(out)
    # Hand-written only for installs without faiss: torch has no popcount.
    xor = torch.bitwise_xor(q_codes[:, None, :], g_codes[None, :, :])
    return _POPCOUNT[xor.long()].sum(-1, dtype=torch.int32)


# --------------------------------------------------------------------------------------- search


def _check_embeddings(x: Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: nothing to search")
    if x.is_floating_point():
        step = max(1, (1 << 24) // max(x.shape[1], 1))  # in slices: no full-size temporary for big galleries
        if not all(torch.isfinite(x[s : s + step]).all() for s in range(0, x.shape[0], step)):
            raise ValueError(f"{name} holds non-finite values (NaN or inf)")


def ranked_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of ``scores`` [B, N] -> (values, columns) [B, k], ranked by score desc then column
    asc; ties at the cut go to the lowest columns (the weak-label head's p@k rule).

    torch.topk(k + 1) settles every row whose k-th and (k+1)-th values differ; rows with a tie across
    the cut take a stable full-row sort.
    """
    num = scores.shape[1]
    top, cols = torch.topk(scores, min(k + 1, num), dim=1, sorted=True)
    vals, cols = top[:, :k].clone(), cols[:, :k].clone()
    if num > k:
        crossing = top[:, k - 1] == top[:, k]
        if crossing.any():
            order = torch.sort(scores[crossing], dim=1, descending=True, stable=True).indices[:, :k]
            vals[crossing], cols[crossing] = scores[crossing].gather(1, order), order
    # Order: column asc, then a stable sort by value desc keeps equal values in column order.
    by_col = torch.sort(cols, dim=1).indices
    vals, cols = vals.gather(1, by_col), cols.gather(1, by_col)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), cols.gather(1, order)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' or None -> cuda when available, else cpu; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_k(k: int, num_g: int, self_index: Tensor | None) -> bool:
    """Validate k against the gallery; returns whether any query is left out of its own results."""
    excluding = self_index is not None and bool((self_index >= 0).any())
    available = num_g - (1 if excluding else 0)
    if not 1 <= k <= available:
        where = " after leaving each query out" if excluding else ""
        raise ValueError(f"k={k} is larger than the gallery: it has {available} items{where}")
    return excluding


class _Engine:
    """Exact scores of one search space: cosine of L2-normalized float32, or minus Hamming on packed codes.

    ``block(rows, a, b)`` gives float64 scores [len(rows), b - a] (queries ``rows``, gallery a..b), the
    same numbers whichever block shapes are used; ``search(k)`` is the fast top-k (faiss or torch).
    """

    def __init__(self, queries: Tensor, gallery: Tensor, metric: str, device: torch.device, use_faiss: bool):
        self.metric, self.device, self.use_faiss = metric, device, use_faiss and HAVE_FAISS
        if metric == "cosine":
            self.q, self.g = l2_normalize(queries), l2_normalize(gallery)
            self.width = self.q.shape[1]
        else:
            self.q, self.g = queries, gallery  # packed codes
            self.width = self.q.shape[1] * 8
        self.num_g = self.g.shape[0]

    def block(self, rows: Tensor, a: int, b: int, native: bool = False) -> Tensor:
        """Scores of queries ``rows`` against gallery a..b: float64, or int32 minus distances when ``native``
        and Hamming (cheaper to compare)."""
        if self.metric == "hamming" and native:
            return -hamming_distances(self.q[rows], self.g[a:b])
        if self.metric == "cosine":
            # float64 products of float32 inputs: equal vectors give equal scores whatever the blocking.
            return (self.q[rows].to(self.device).double() @ self.g[a:b].to(self.device).double().T).cpu()
        return -hamming_distances(self.q[rows], self.g[a:b]).double()

    def gallery_chunk(self, num_rows: int) -> int:
        # The byte-table fallback holds [rows, chunk, bytes]; float scores and faiss.hammings [rows, chunk].
        per_pair = self.q.shape[1] if self.metric == "hamming" and not HAVE_FAISS else 1
        return max(1, min(self.num_g, MAX_BLOCK_SCORES // max(num_rows * per_pair, 1)))

    def search(self, k: int, block_size: int, gallery_block_size: int | None) -> TopK:
        """The k best gallery items per query (float32 scores; ties in any order): faiss ``IndexBinaryFlat``
        for Hamming on CPU, else a blockwise torch top-k (float cosine, Hamming without faiss, a GPU device)."""
        if self.use_faiss and self.device.type == "cpu" and self.metric == "hamming":
            index = faiss.IndexBinaryFlat(self.width)
            index.add(np.ascontiguousarray(self.g.numpy()))
            dist, ids = index.search(np.ascontiguousarray(self.q.numpy()), k)
            return TopK(-torch.from_numpy(dist).float(), torch.from_numpy(ids).long())
        chunk = gallery_block_size or max(1, min(self.num_g, SEARCH_BLOCK_SCORES // block_size))
        if self.metric == "hamming":
            chunk = min(chunk, self.gallery_chunk(block_size))  # the byte-table fallback's [rows, chunk, bytes]
        return _blockwise_topk(self.fast_block, torch.arange(self.q.shape[0]), self.num_g, k, block_size, chunk)

    def fast_block(self, rows: Tensor, a: int, b: int) -> Tensor:
        """float32 search scores of queries ``rows`` against gallery a..b (float32 cosine, minus Hamming)."""
        if self.metric == "cosine":
            return (self.q[rows].to(self.device) @ self.g[a:b].to(self.device).T).cpu()
        return -hamming_distances(self.q[rows], self.g[a:b]).float()


def _blockwise_topk(
    score: Callable[[Tensor, int, int], Tensor],
    rows: Tensor,
    num_g: int,
    k: int,
    block_size: int,
    chunk: int | Callable[[int], int],
) -> TopK:
    """Running top-k of queries ``rows`` (in blocks of ``block_size``) over the gallery in chunks, never the full
    query x gallery matrix: ``score(r, a, b)`` gives the scores [len(r), b - a] of queries ``r`` against gallery
    items a..b; ``chunk`` is the gallery chunk, or a function of the block's row count. Scores keep their dtype."""
    out_s, out_i = [], []
    for s in range(0, len(rows), block_size):
        r = rows[s : s + block_size]
        step = chunk(len(r)) if callable(chunk) else chunk
        best_s = best_i = None
        for a in range(0, num_g, step):
            b = min(a + step, num_g)
            v, i = torch.topk(score(r, a, b), min(k, b - a), dim=1)
            i += a
            if best_s is not None:
                v, i = torch.cat([best_s, v], 1), torch.cat([best_i, i], 1)
                v, pick = torch.topk(v, min(k, v.shape[1]), dim=1)
                i = i.gather(1, pick)
            best_s, best_i = v, i
        out_s.append(best_s)
        out_i.append(best_i)
    return TopK(torch.cat(out_s), torch.cat(out_i))


def _drop_self(found: TopK, self_index: Tensor | None, k: int) -> TopK:
    """Remove each query's own index from its list (or, when absent, the last entry); keep k columns."""
    if self_index is None:
        return TopK(found.scores[:, :k], found.indices[:, :k])
    own = found.indices == self_index[:, None]
    drop_last = ~own.any(dim=1)
    own[drop_last, -1] = True
    keep = ~own
    width = found.indices.shape[1] - 1
    return TopK(found.scores[keep].view(-1, width)[:, :k], found.indices[keep].view(-1, width)[:, :k])


def _codes_or_floats(queries: Tensor, gallery: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    if metric not in SEARCH_METRICS:
        raise ValueError(f"unknown retrieval metric '{metric}': choose one of {SEARCH_METRICS}")
    _check_embeddings(queries, "queries")
    _check_embeddings(gallery, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the gallery has {gallery.shape[1]}")
    if metric == "hamming":
        return pack_signs(queries), pack_signs(gallery)
    return queries, gallery


def _check_codes(query_codes: Tensor, gallery_codes: Tensor, dim: int) -> None:
    for name, codes in (("query_codes", query_codes), ("gallery_codes", gallery_codes)):
        if codes.dtype != torch.uint8 or codes.ndim != 2 or codes.shape[1] != (dim + 7) // 8 or codes.shape[0] == 0:
            raise ValueError(f"{name} must be non-empty packed uint8 codes [N, {(dim + 7) // 8}] for dim={dim}")


def topk_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    metric: str = "cosine",
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    self_index: Tensor | None = None,
    device: str | torch.device | None = "cpu",
    use_faiss: bool = True,
    packed_dim: int | None = None,
) -> TopK:
    """The k best gallery items for each query.

    Args:
        queries: float embeddings [Q, D], or packed sign codes (``packed_dim``).
        gallery: float embeddings [G, D] (L2-normalized, or binarized and packed, here per ``metric``).
        k: neighbours per query; must not exceed the gallery (minus the query itself under leave-one-out).
        metric: "cosine" (L2-normalized float) or "hamming" (sign bits; score = -distance).
        block_size: queries per block of the torch path and of the exact passes.
        gallery_block_size: gallery items per chunk of the torch path (None: chunks of MAX_BLOCK_SCORES).
        self_index: long [Q], the gallery index of each query to exclude (leave-one-out), or -1 for
            none; None excludes nothing.
        device: where the torch path computes ("auto" = cuda if available); faiss-cpu runs on CPU.
        use_faiss: False forces the torch path (tests compare the two).
        packed_dim: with metric "hamming", queries and gallery are already packed codes (``pack_signs``, the
            serving format: uint8 [N, ceil(D/8)]) of this many bits.

    Returns:
        TopK with scores and indices [Q, k], ranked by score desc (tied items in unspecified order).
    """
    if packed_dim is None:
        q, g = _codes_or_floats(queries, gallery, metric)
    elif metric != "hamming":
        raise ValueError(f"packed_dim is for packed sign codes: metric must be 'hamming', not '{metric}'")
    else:
        _check_codes(queries, gallery, packed_dim)
        q, g = queries, gallery
    if block_size < 1 or (gallery_block_size is not None and gallery_block_size < 1):
        raise ValueError("block_size and gallery_block_size must be positive")
    excluding = _check_k(k, g.shape[0], self_index)
    engine = _Engine(q, g, metric, resolve_device(device), use_faiss)
    found = engine.search(k + int(excluding), block_size, gallery_block_size)
    return _drop_self(found, self_index if excluding else None, k)


# ------------------------------------------------------------------------------------ relevance


@dataclass
class LabelSets:
    """Per item, a sorted set of label ids: ``ids`` long [N, L], ascending, padded with PAD at the end."""

    ids: Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index) -> LabelSets:
        return LabelSets(self.ids[index])

    @property
    def sizes(self) -> Tensor:
        return (self.ids != PAD).sum(1)


def label_sets(targets: Tensor | LabelSets, weights: Tensor | None = None) -> LabelSets:
    """Label sets from any target format the loaders produce.

    Args:
        targets: class ids long [N] (single-label); dense multi-hot float/bool [N, C] (label c when > 0);
            or padded label ids integer [N, L] with -1 as padding (weak-label samples carrying ids).
            A LabelSets is returned as is.
        weights: optional [N, L] scores beside padded ids; ids whose weight is <= 0 are dropped.

    Returns:
        LabelSets (memory O(N x labels per item), whatever C is).
    """
    if isinstance(targets, LabelSets):
        return targets
    targets = torch.as_tensor(targets)
    if targets.ndim == 1:
        if targets.is_floating_point():
            raise ValueError("single-label targets must be integer class ids")
        ids = targets.long()[:, None].clone()
        ids[ids < 0] = PAD
        return LabelSets(ids)
    if targets.ndim != 2:
        raise ValueError(
            f"targets must be class ids [N], multi-hot [N, C] or padded ids [N, L]; got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        # nonzero() lists (row, column) pairs row-major, so each row's columns come out ascending; no [N, C] temporary.
        pairs = torch.nonzero(targets)
        pairs = pairs[targets[pairs[:, 0], pairs[:, 1]] > 0]
        rows, cols = pairs[:, 0], pairs[:, 1]
        per_row = torch.bincount(rows, minlength=targets.shape[0])
        width = max(int(per_row.max()) if per_row.numel() else 0, 1)
        slot = torch.arange(rows.numel()) - (torch.cumsum(per_row, 0) - per_row)[rows]
        ids = torch.full((targets.shape[0], width), PAD, dtype=torch.long)
        ids[rows, slot] = cols
        return LabelSets(ids)
    ids = targets.long().clone()
    keep = ids >= 0
    if weights is not None:
        keep &= torch.as_tensor(weights) > 0
    ids[~keep] = PAD
    return LabelSets(torch.sort(ids, dim=1).values)


def cat_label_sets(parts: Sequence[LabelSets]) -> LabelSets:
    """Concatenate LabelSets of different widths."""
    width = max(max((p.ids.shape[1] for p in parts), default=1), 1)
    padded = [torch.nn.functional.pad(p.ids, (0, width - p.ids.shape[1]), value=PAD) for p in parts]
    return LabelSets(torch.cat(padded) if padded else torch.empty(0, 1, dtype=torch.long))


def share_label(a: LabelSets, b: LabelSets, block: int = 1 << 16) -> Tensor:
    """bool [P]: whether row i of ``a`` and row i of ``b`` have a label in common (sorted-set intersection)."""
    out = torch.empty(len(a), dtype=torch.bool)
    for s in range(0, len(a), block):
        x, y = a.ids[s : s + block], b.ids[s : s + block].contiguous()
        pos = torch.searchsorted(y, x.contiguous()).clamp_(max=y.shape[1] - 1)
        out[s : s + block] = ((y.gather(1, pos) == x) & (x != PAD)).any(1)
    return out


def count_relevant(q_sets: LabelSets, g_sets: LabelSets, self_index: Tensor | None = None) -> Tensor:
    """long [Q]: gallery items sharing a label with each query (the query itself not counted).

    An inverted index (gallery items sorted by label): work per query is the length of its labels'
    posting lists, memory O(gallery x labels per item).
    """
    g_ids = g_sets.ids
    flat_label = g_ids.reshape(-1)
    flat_item = torch.arange(g_ids.shape[0]).repeat_interleave(g_ids.shape[1])
    valid = flat_label != PAD
    flat_label, order = torch.sort(flat_label[valid], stable=True)
    flat_item = flat_item[valid][order]
    q_ids = q_sets.ids
    lo = torch.searchsorted(flat_label, q_ids.contiguous())
    hi = torch.searchsorted(flat_label, q_ids.contiguous(), right=True)
    lengths = torch.where(q_ids != PAD, hi - lo, 0)
    counts = lengths.sum(1)  # exact for one label per query: a single posting list has no repeats
    for row in torch.nonzero(q_sets.sizes > 1).squeeze(1).tolist():
        spans = [flat_item[a:b] for a, b in zip(lo[row].tolist(), hi[row].tolist(), strict=True) if b > a]
        counts[row] = torch.unique(torch.cat(spans)).numel() if spans else 0
    if self_index is not None:
        counts -= ((self_index >= 0) & (q_sets.sizes > 0)).long()
    return counts


def _check_targets(q_targets, g_targets) -> tuple[LabelSets, LabelSets]:
    q_t, g_t = (t if isinstance(t, LabelSets) else torch.as_tensor(t) for t in (q_targets, g_targets))
    dense = [t for t in (q_t, g_t) if isinstance(t, Tensor) and t.ndim == 2 and t.is_floating_point()]
    if len(dense) == 2 and dense[0].shape[1] != dense[1].shape[1]:
        raise ValueError(f"multi-hot targets disagree on the label count: {dense[0].shape[1]} vs {dense[1].shape[1]}")
    if isinstance(q_t, Tensor) and isinstance(g_t, Tensor) and q_t.ndim != g_t.ndim:
        raise ValueError(
            f"targets must both be class ids [N] or both multi-label; got {tuple(q_t.shape)} and {tuple(g_t.shape)}"
        )
    return label_sets(q_t), label_sets(g_t)


def is_multi_label(targets: Tensor | LabelSets) -> bool:
    """Multi-label targets: 2-D (multi-hot [N, C] or padded ids [N, L]) or LabelSets; class ids are 1-D [N]."""
    return isinstance(targets, LabelSets) or targets.ndim == 2


# ---------------------------------------------------------------------------- tie-aware ranking


def cut_group_counts(
    engine: _Engine,
    rows: Tensor,
    cut: Tensor,
    relevant: Callable[[Tensor, Tensor], Tensor],
    self_index: Tensor | None,
    block_size: int,
) -> tuple[Tensor, Tensor]:
    """For queries ``rows``: gallery items whose exact score equals ``cut`` [len(rows)] float64, and how
    many of them are relevant -> (count long, relevant long). Blockwise: memory O(block x chunk)."""
    count = torch.zeros(len(rows), dtype=torch.long)
    rel = torch.zeros(len(rows), dtype=torch.long)
    for s in range(0, len(rows), block_size):
        r = rows[s : s + block_size]
        chunk = engine.gallery_chunk(len(r))
        for a in range(0, engine.num_g, chunk):
            b = min(a + chunk, engine.num_g)
            scores = engine.block(r, a, b, native=True)
            tied = scores == cut[s : s + block_size, None].to(scores.dtype)
            if self_index is not None:
                own = self_index[r]
                hit = (own >= a) & (own < b)
                tied[torch.nonzero(hit).squeeze(1), own[hit] - a] = False
            count[s : s + block_size] += tied.sum(1)
            pairs = torch.nonzero(tied)
            if pairs.numel():
                is_rel = relevant(r[pairs[:, 0]], pairs[:, 1] + a).long()
                rel[s : s + block_size] += torch.zeros(len(r), dtype=torch.long).index_add_(0, pairs[:, 0], is_rel)
    return count, rel


def _exact_topk(engine: _Engine, rows: Tensor, k: int, self_index: Tensor | None, block_size: int) -> TopK:
    """Exact (float64) top-k of queries ``rows`` by a full blockwise pass: for float rows whose cut is
    too close for float32 search scores to decide."""

    def score(r: Tensor, a: int, b: int) -> Tensor:
        sc = engine.block(r, a, b)
        if self_index is not None:
            own = self_index[r]
            hit = (own >= a) & (own < b)
            sc[torch.nonzero(hit).squeeze(1), own[hit] - a] = -math.inf
        return sc

    return _blockwise_topk(score, rows, engine.num_g, k, block_size, engine.gallery_chunk)


@dataclass
class RankedLists:
    """Top-K lists with exact scores and the size of each cut group in the whole gallery.

    scores float64 [Q, K] (desc), rel bool [Q, K], cut_count / cut_relevant long [Q]: gallery items
    (self excluded) scoring exactly scores[:, K-1], and the relevant ones among them.
    """

    scores: Tensor
    rel: Tensor
    cut_count: Tensor
    cut_relevant: Tensor


def tie_aware_search(
    queries: Tensor,
    gallery: Tensor,
    q_sets: LabelSets,
    g_sets: LabelSets,
    k: int,
    metric: str = "cosine",
    self_index: Tensor | None = None,
    block_size: int = 1024,
    device: str | torch.device | None = "cpu",
    use_faiss: bool = True,
) -> RankedLists:
    """Search (faiss, or torch) for the k + 1 best items, rescore them exactly, and count the cut group
    exactly where the k-th and (k+1)-th scores tie. ``queries``/``gallery``: float [N, D]."""
    q, g = _codes_or_floats(queries, gallery, metric)
    excluding = _check_k(k, g.shape[0], self_index)
    self_index = self_index if excluding else None
    engine = _Engine(q, g, metric, resolve_device(device), use_faiss)
    available = g.shape[0] - int(excluding)
    # Candidates past the cut: when the last one scores below the k-th, the whole cut group is among them.
    # Float cut groups are rare (equal vectors): a few extra candidates; Hamming ties are the rule.
    margin = CUT_MARGIN if metric == "hamming" else min(CUT_MARGIN, 4)
    width = min(k + 1 + margin, available)
    found = _drop_self(engine.search(width + int(excluding), block_size, None), self_index, width)
    num_q = q.shape[0]
    exact, tol = found.scores.double(), 0.0
    if metric == "cosine":
        # float32 rounding of a unit-vector dot product is below D * 2**-24 per score: candidates within
        # twice that of a neighbour get exact float64 scores (equal vectors, equal scores); the others
        # are apart from every neighbour in any precision.
        tol = 2 * engine.width * 2.0**-24
        close = (found.scores[:, :-1] - found.scores[:, 1:]).double() <= tol
        need = torch.zeros_like(found.scores, dtype=torch.bool)
        need[:, :-1] |= close
        need[:, 1:] |= close
        r, c = torch.nonzero(need, as_tuple=True)
        step = 1 << 16
        for s in range(0, r.numel(), step):
            rr, cc = r[s : s + step], c[s : s + step]
            g_rows = engine.g[found.indices[rr, cc]].double()
            exact[rr, cc] = (engine.q[rr].double() * g_rows).sum(1)
    exact, order = torch.sort(exact, dim=1, descending=True, stable=True)
    indices = found.indices.gather(1, order)
    pairs = torch.arange(num_q).repeat_interleave(width)
    rel_all = share_label(q_sets[pairs], g_sets[indices.reshape(-1)]).view(num_q, width)
    cut = exact[:, k - 1 : k]
    at_cut = exact == cut
    cut_count, cut_rel = at_cut.sum(1), (at_cut & rel_all).sum(1)
    if width < available:  # open: an item outside the candidates may tie with (or beat) the k-th
        crossing = found.scores[:, -1].double() + tol >= cut[:, 0]
    else:
        crossing = torch.zeros(num_q, dtype=torch.bool)
    scores, indices, rel = exact[:, :k].contiguous(), indices[:, :k].contiguous(), rel_all[:, :k].contiguous()
    rows = torch.nonzero(crossing).squeeze(1)
    if metric == "cosine" and rows.numel():
        redo = _exact_topk(engine, rows, k, self_index, block_size)
        scores[rows], indices[rows] = redo.scores, redo.indices
        sub = torch.arange(rows.numel()).repeat_interleave(k)
        rel[rows] = share_label(q_sets[rows[sub]], g_sets[redo.indices.reshape(-1)]).view(-1, k)
    if rows.numel():

        def relevant(qi: Tensor, gi: Tensor) -> Tensor:
            return share_label(q_sets[qi], g_sets[gi])

        cut_count[rows], cut_rel[rows] = cut_group_counts(
            engine, rows, scores[rows, k - 1], relevant, self_index, block_size
        )
    return RankedLists(scores, rel, cut_count, cut_rel)


# -------------------------------------------------------------------------------------- metrics


def _log_choose_ratio(n: Tensor, r: Tensor, m: Tensor) -> Tensor:
    """C(n - r, m) / C(n, m) (probability that m draws without replacement from n miss all r), float64."""
    ok = (n - r) >= m
    nr = torch.clamp(n - r, min=0)
    log = (
        torch.lgamma(nr + 1)
        - torch.lgamma(torch.clamp(nr - m, min=0) + 1)
        - torch.lgamma(n + 1)
        + torch.lgamma(n - m + 1)
    )
    return torch.where(ok, torch.exp(log), torch.zeros_like(n))


def tie_aware_metrics(
    ranked: RankedLists, num_relevant: Tensor, ks: Sequence[int]
) -> tuple[dict[str, float], dict[str, int]]:
    """precision@k, recall@k (hit rate), ir_recall@k and mAP@k (module docstring), each its expected
    value over all orderings of the tied groups. Returns (metrics, counts {"queries",
    "queries_without_relevant"}); metrics are NaN when no query has a relevant item."""
    s, rel = ranked.scores, ranked.rel
    num_q, width = s.shape
    if width < max(ks):
        raise ValueError(f"ranked list has {width} items but k={max(ks)} was asked")
    keep = num_relevant > 0
    counts = {"queries": int(num_q), "queries_without_relevant": int((~keep).sum())}
    if not keep.any():
        return {f"{m}@{k}": float("nan") for k in ks for m in METRICS}, counts
    s, rel, num_rel = s[keep], rel[keep].double(), num_relevant[keep].double()
    cut_n, cut_r = ranked.cut_count[keep].double(), ranked.cut_relevant[keep].double()
    nq = s.shape[0]
    pos = torch.arange(width).expand(nq, width)
    new = torch.ones(nq, width, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    start = torch.cummax(torch.where(new, pos, 0), dim=1).values  # first rank of each item's group
    gid = new.long().cumsum(1) - 1 + torch.arange(nq)[:, None] * width
    n = torch.bincount(gid.reshape(-1), minlength=nq * width).double()
    r = torch.bincount(gid.reshape(-1), weights=rel.reshape(-1), minlength=nq * width).double()
    last = gid[:, -1]
    n[last], r[last] = cut_n, cut_r  # the cut group, counted in the whole gallery
    n, r = n[gid], r[gid]
    p = (pos - start + 1).double()  # 1-based place inside the group
    before = (rel.cumsum(1) - rel).gather(1, start)  # relevant items in the (complete) earlier groups
    hits = before + p * r / n
    rel_hits = (r / n) * (before + 1 + (p - 1) * (r - 1) / torch.clamp(n - 1, min=1))
    ap_sum = (rel_hits / (pos + 1).double()).cumsum(1)
    miss = _log_choose_ratio(n, r, p)
    metrics: dict[str, float] = {}
    for k in ks:
        c = k - 1
        metrics[f"precision@{k}"] = (hits[:, c] / k).mean().item()
        metrics[f"recall@{k}"] = torch.where(before[:, c] > 0, 1.0, 1.0 - miss[:, c]).mean().item()
        metrics[f"ir_recall@{k}"] = (hits[:, c] / num_rel).mean().item()
        metrics[f"mAP@{k}"] = (ap_sum[:, c] / torch.clamp(num_rel, max=k)).mean().item()
    return metrics, counts


def evaluate_retrieval(
    queries: Tensor,
    q_targets: Tensor | LabelSets,
    gallery: Tensor | None,
    g_targets: Tensor | LabelSets | None,
    ks: Sequence[int],
    metric: str = "cosine",
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    device: str | torch.device | None = "cpu",
    self_index: Tensor | None = None,
    use_faiss: bool = True,
) -> tuple[dict[str, float], dict[str, int]]:
    """Search and score in one call, tie-aware.

    With ``gallery=None`` the evaluation is leave-one-out on ``queries``: every query searches all
    the others (itself excluded by index). For leave-one-out on a subset, pass the gallery and
    ``self_index`` (the gallery index of each query, as in ``topk_search``). Targets: anything
    ``label_sets`` takes. Returns ``tie_aware_metrics``' (metrics, counts) with counts["gallery"].
    """
    if gallery is None:
        gallery, g_targets = queries, q_targets
        self_index = torch.arange(queries.shape[0])
    elif g_targets is None:
        raise ValueError("g_targets is required with a gallery")
    if queries.shape[0] != len(q_targets) or gallery.shape[0] != len(g_targets):
        raise ValueError("embeddings and targets disagree on the number of items")
    q_sets, g_sets = _check_targets(q_targets, g_targets)
    ranked = tie_aware_search(
        queries, gallery, q_sets, g_sets, max(ks), metric, self_index, block_size, device, use_faiss
    )
    num_rel = count_relevant(q_sets, g_sets, self_index)
    metrics, counts = tie_aware_metrics(ranked, num_rel, ks)
    counts["gallery"] = int(gallery.shape[0])
    return metrics, counts
