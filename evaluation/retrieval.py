"""Retrieval evaluation: blockwise top-k search (float cosine and binarized Hamming) and its metrics.

Search never builds the full query x gallery matrix: queries go in blocks of ``block_size`` and the
gallery in chunks of ``gallery_block_size``; a running top-k is merged chunk by chunk, so memory is
O(block_size x gallery_block_size): O(block x gallery) by default, capped at MAX_BLOCK_SCORES scores
per block for very large galleries.

Ranking and ties (deterministic, independent of block sizes):
    results are ordered by score descending, and among equal scores by gallery index ascending; the
    k-th place goes to the lowest gallery indices among those tied at the cut. Scores are cosine
    similarities of L2-normalized float32 embeddings, or minus the Hamming distance of sign bits.
    Hamming scores are small integers, computed exactly, so their ties are exact. Cosine scores of
    distinct pairs can differ in the last float32 bit depending on the BLAS kernel a block shape
    selects; the ranking is a deterministic function of the computed scores.

Binarization (the paper serves binarized embeddings): bit = 1 where the float value is > 0, else 0.
Gallery codes are stored packed (``numpy.packbits``, D/8 bytes per item, the serving format) and
unpacked chunk by chunk to +-1 vectors, where ``hamming(a, b) = (D - <a, b>) / 2`` is an exact
float32 matmul (integers far below 2**24), faster on CPU than xor + popcount in torch. Ties, which
Hamming distances have in bulk, are broken inside that matmul by one extra coordinate (see
``hamming_topk``), so torch.topk alone returns the lowest indices among equal distances.

Metrics, for a query with R relevant gallery items (self excluded under leave-one-out) and
``rel_i`` = 1 when the item at rank i (1-based) is relevant:
    precision@k = (1/k) * sum_{i<=k} rel_i
    recall@k    = (1/R) * sum_{i<=k} rel_i      (fraction of all relevant items retrieved; this is
                  the IR definition and torchmetrics' RetrievalRecall, not the "hit rate" that deep
                  metric learning papers call Recall@K, i.e. 1 if any rel_i = 1)
    mAP@k       = (1/min(R, k)) * sum_{i<=k} precision@i * rel_i, averaged over queries
Each is averaged over queries with R > 0; queries with R = 0 are excluded from every metric and
counted (``queries_without_relevant``), as torchmetrics does with ``empty_target_action="skip"``.

Relevance: single-label integer targets -> same class; multi-hot targets [N, C] -> relevant when
the two rows share at least one label (dot product of the multi-hot rows > 0).

Against torchmetrics.retrieval (tests/test_eval_retrieval.py checks both): precision@k and recall@k
equal RetrievalPrecision / RetrievalRecall(top_k=k, empty_target_action="skip") given the same
ranking. RetrievalMAP(top_k=k) divides by the relevant items found in the top k, not min(R, k), so
it rewards finding few relevant items; the two agree when k covers the whole gallery. torchmetrics
also treats items with a score <= 0 as not relevant, so raw cosine scores cannot be fed to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

METRICS = ("precision", "recall", "mAP")
MAX_BLOCK_SCORES = 1 << 26  # scores per similarity block (256 MiB of float32) when gallery_block_size is None
PREPARED_CACHE_BYTES = 1 << 30  # normalized / unpacked gallery chunks reused across query blocks up to this size
SEARCH_METRICS = ("cosine", "hamming")


@dataclass
class TopK:
    """Result of a top-k search: ``scores`` [Q, k] (cosine, or minus the Hamming distance) and
    ``indices`` [Q, k] (long gallery indices), each row ranked best first."""

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


def unpack_signs(codes: Tensor, dim: int) -> Tensor:
    """Packed codes [N, ceil(D/8)] -> float32 +-1 vectors [N, D] (bit 1 -> +1, bit 0 -> -1)."""
    bits = np.unpackbits(codes.cpu().numpy(), axis=1, count=dim)
    return torch.from_numpy(bits).float().mul_(2).sub_(1)


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


def _ranked_topk_exact(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ranked_topk by full-row passes: every item above the cut, then the lowest columns tied at it."""
    rows = scores.shape[0]
    cut = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    above = scores > cut
    at_cut = scores == cut
    need = k - above.sum(dim=1, keepdim=True)
    at_cut &= at_cut.cumsum(dim=1) <= need
    # nonzero() is row-major, so each row's columns come out ascending.
    cols = (above | at_cut).nonzero()[:, 1].view(rows, k)
    return scores.gather(1, cols), cols


def ranked_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of each row of ``scores`` [B, N] -> (values, columns) [B, k], ranked by score desc then column
    asc; ties at the cut go to the lowest columns. Deterministic, unlike ``torch.topk`` on ties.

    torch.topk(k + 1) settles every row whose k-th and (k+1)-th values differ (the chosen set is then
    exact; only its order among equal values is fixed here); rows with a tie across the cut, rare
    for float scores, take the exact full-row path.
    """
    num = scores.shape[1]
    vals, cols = torch.topk(scores, min(k + 1, num), dim=1, sorted=True)
    if num > k:
        crossing = vals[:, k - 1] == vals[:, k]
        vals, cols = vals[:, :k], cols[:, :k]
        if crossing.any():
            vals, cols = vals.clone(), cols.clone()
            vals[crossing], cols[crossing] = _ranked_topk_exact(scores[crossing], k)
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


def default_gallery_block(block_size: int, num_g: int) -> int:
    """The whole gallery when a block of scores fits MAX_BLOCK_SCORES, else the largest chunk that does."""
    return max(1, min(num_g, MAX_BLOCK_SCORES // max(block_size, 1)))


def _blockwise_topk(
    q_all: Tensor,
    num_g: int,
    gallery_chunk: Callable[[int, int], Tensor],
    k: int,
    finalize: Callable[[Tensor], Tensor] | None,
    block_size: int,
    gallery_block_size: int | None,
    self_index: Tensor | None,
    excluding: bool,
    device: torch.device,
    desc: str,
    progress: bool,
) -> TopK:
    """The search loop shared by float and binary. Scores of a block are ``q @ g.T``; ``finalize`` maps
    a chunk's selected values to the reported score before chunks are merged."""
    num_q = q_all.shape[0]
    chunk = gallery_block_size or default_gallery_block(block_size, num_g)
    out_scores = torch.empty(num_q, k, dtype=torch.float32)
    out_index = torch.empty(num_q, k, dtype=torch.long)
    # Prepared (normalized / unpacked) chunks are kept across query blocks while they fit the cache;
    # beyond it each block prepares them again, so memory stays O(gallery as stored).
    row_bytes = 4 * q_all.shape[1]
    keep = num_q > block_size and num_g * row_bytes <= PREPARED_CACHE_BYTES
    cache: dict[int, Tensor] = {}
    bar = tqdm(range(0, num_q, block_size), desc=desc, leave=False, disable=not progress)
    for q_start in bar:
        q_stop = min(q_start + block_size, num_q)
        q = q_all[q_start:q_stop].to(device)
        best_s: Tensor | None = None
        best_i: Tensor | None = None
        for g_start in range(0, num_g, chunk):
            g_stop = min(g_start + chunk, num_g)
            g = cache.get(g_start)
            if g is None:
                g = gallery_chunk(g_start, g_stop)
                if keep:
                    cache[g_start] = g
            scores = q @ g.T
            if excluding:
                own = self_index[q_start:q_stop].to(device)
                rows = torch.nonzero((own >= g_start) & (own < g_stop)).squeeze(1)
                scores[rows, own[rows] - g_start] = -math.inf
            s, i = ranked_topk(scores, min(k, g_stop - g_start))
            if finalize is not None:
                s = finalize(s)
            i += g_start
            if best_s is None:
                best_s, best_i = s, i
            else:
                # Earlier chunks hold lower indices, so a stable sort of [best, new] keeps index order on ties.
                cat_s, cat_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i], dim=1)
                order = torch.sort(cat_s, dim=1, descending=True, stable=True).indices[:, :k]
                best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
        out_scores[q_start:q_stop] = best_s.float().cpu()
        out_index[q_start:q_stop] = best_i.cpu()
    return TopK(out_scores, out_index)


def topk_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    metric: str = "cosine",
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    self_index: Tensor | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
) -> TopK:
    """The k best gallery items for each query, computed blockwise.

    Args:
        queries: float embeddings [Q, D].
        gallery: float embeddings [G, D] (L2-normalized, or binarized and packed, here per ``metric``).
        k: neighbours per query; must not exceed the gallery (minus the query itself under leave-one-out).
        metric: "cosine" (L2-normalized float) or "hamming" (sign bits; score = -distance).
        block_size: queries per block.
        gallery_block_size: gallery items per chunk; None = the whole gallery when block_size x G
            scores fit MAX_BLOCK_SCORES (256 MiB of float32), else chunks that fit.
        self_index: long [Q], the gallery index of each query to exclude (leave-one-out), or -1 for
            none; None excludes nothing.
        device: where the similarity blocks are computed ("auto" = cuda if available).
        progress: show a tqdm bar over query blocks.

    Returns:
        TopK with scores and indices [Q, k], ranked by score desc then gallery index asc.
    """
    if metric not in SEARCH_METRICS:
        raise ValueError(f"unknown retrieval metric '{metric}': choose one of {SEARCH_METRICS}")
    _check_embeddings(queries, "queries")
    _check_embeddings(gallery, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the gallery has {gallery.shape[1]}")
    if metric == "hamming":
        dim = queries.shape[1]
        return hamming_topk(
            pack_signs(queries),
            pack_signs(gallery),
            dim,
            k,
            block_size,
            gallery_block_size,
            self_index,
            device,
            progress,
        )
    if block_size < 1 or (gallery_block_size is not None and gallery_block_size < 1):
        raise ValueError("block_size and gallery_block_size must be positive")
    excluding = _check_k(k, gallery.shape[0], self_index)
    device = resolve_device(device)
    # The gallery is normalized chunk by chunk: no full normalized copy of a large gallery.
    return _blockwise_topk(
        l2_normalize(queries),
        gallery.shape[0],
        lambda a, b: l2_normalize(gallery[a:b].to(device)),
        k,
        None,
        block_size,
        gallery_block_size,
        self_index,
        excluding,
        device,
        f"top-{k} cosine",
        progress,
    )


def hamming_topk(
    query_codes: Tensor,
    gallery_codes: Tensor,
    dim: int,
    k: int,
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    self_index: Tensor | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
) -> TopK:
    """Hamming top-k on packed sign codes (``pack_signs``), the serving format: D/8 bytes per item.

    Arguments as ``topk_search``, with ``dim`` the number of bits per code; scores are minus the
    Hamming distance. Chunks are unpacked to +-1 on the fly, so the gallery stays packed in memory.
    """
    for name, codes in (("query_codes", query_codes), ("gallery_codes", gallery_codes)):
        if codes.dtype != torch.uint8 or codes.ndim != 2 or codes.shape[1] != (dim + 7) // 8 or codes.shape[0] == 0:
            raise ValueError(f"{name} must be non-empty packed uint8 codes [N, {(dim + 7) // 8}] for dim={dim}")
    if block_size < 1 or (gallery_block_size is not None and gallery_block_size < 1):
        raise ValueError("block_size and gallery_block_size must be positive")
    excluding = _check_k(k, gallery_codes.shape[0], self_index)
    device = resolve_device(device)
    queries = unpack_signs(query_codes, dim)
    # Tie-break inside the matmul: an extra coordinate 1 on queries and -col * 2**-f on gallery items
    # makes each score <q, g> - col * 2**-f, distinct per column and exact in float32 (integers below
    # 2**b plus f fraction bits, b + f = 24), so torch.topk alone ranks by (distance, column).
    # Only when float32 matmuls are exact (no TF32): the reported distance is recovered with ceil().
    int_bits = (dim + 1).bit_length()
    exact = torch.get_float32_matmul_precision() == "highest" and 24 - int_bits >= 8
    if exact:
        frac_bits = 24 - int_bits
        max_chunk = 1 << frac_bits
        chunk = min(gallery_block_size or default_gallery_block(block_size, gallery_codes.shape[0]), max_chunk)
        queries = torch.cat([queries, torch.ones(queries.shape[0], 1)], dim=1)

        def gallery_chunk(a: int, b: int) -> Tensor:
            tie = -torch.arange(b - a, dtype=torch.float32)[:, None] * 2.0**-frac_bits
            return torch.cat([unpack_signs(gallery_codes[a:b], dim), tie], dim=1).to(device)

        def finalize(v: Tensor) -> Tensor:
            return (torch.ceil(v) - dim) / 2
    else:
        chunk = gallery_block_size

        def gallery_chunk(a: int, b: int) -> Tensor:
            return unpack_signs(gallery_codes[a:b], dim).to(device)

        def finalize(v: Tensor) -> Tensor:
            return (v - dim) / 2

    return _blockwise_topk(
        queries,
        gallery_codes.shape[0],
        gallery_chunk,
        k,
        finalize,
        block_size,
        chunk,
        self_index,
        excluding,
        device,
        f"top-{k} hamming",
        progress,
    )


# ------------------------------------------------------------------------------------ relevance


def is_multi_label(targets: Tensor) -> bool:
    """Multi-hot targets are 2-D [N, C]; single-label targets are 1-D integer [N]."""
    return targets.ndim == 2


def _check_targets(q_targets: Tensor, g_targets: Tensor) -> None:
    if q_targets.ndim != g_targets.ndim or q_targets.ndim not in (1, 2):
        raise ValueError(
            f"targets must both be class ids [N] or multi-hot [N, C]; got {tuple(q_targets.shape)} "
            f"and {tuple(g_targets.shape)}"
        )
    if q_targets.ndim == 1 and (q_targets.is_floating_point() or g_targets.is_floating_point()):
        raise ValueError("single-label targets must be integer class ids")
    if q_targets.ndim == 2 and q_targets.shape[1] != g_targets.shape[1]:
        raise ValueError(f"multi-hot targets disagree on the label count: {q_targets.shape[1]} vs {g_targets.shape[1]}")


def relevance(
    q_targets: Tensor,
    g_targets: Tensor,
    indices: Tensor,
    self_index: Tensor | None = None,
    block_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Which retrieved items are relevant, and how many relevant items each query has in the gallery.

    Args:
        q_targets, g_targets: class ids [Q], [G] (same class = relevant) or multi-hot [Q, C], [G, C]
            (relevant when the rows share a label).
        indices: long [Q, k] retrieved gallery indices.
        self_index: as in ``topk_search``; the query itself is not counted among its relevant items.
        block_size: query rows per block when counting shared-label relevance.

    Returns:
        (rel bool [Q, k], num_relevant long [Q]).
    """
    _check_targets(q_targets, g_targets)
    if not is_multi_label(q_targets):
        q_t, g_t = q_targets.long(), g_targets.long()
        rel = g_t[indices] == q_t[:, None]
        num_classes = int(max(q_t.max().item(), g_t.max().item())) + 1
        per_class = torch.bincount(g_t, minlength=num_classes)
        num_rel = per_class[q_t]
    else:
        q_t, g_t = (q_targets > 0).float(), (g_targets > 0).float()
        blocks = range(0, q_t.shape[0], block_size)
        rel = torch.cat(
            [(g_t[indices[s : s + block_size]] * q_t[s : s + block_size, None, :]).sum(-1) > 0 for s in blocks]
        )
        num_rel = torch.cat([((q_t[s : s + block_size] @ g_t.T) > 0).sum(1) for s in blocks])
    if self_index is not None:
        # The query itself is always relevant to itself (if it has any label): never count it.
        own = self_index >= 0
        if is_multi_label(q_targets):
            own = own & (q_t.sum(1) > 0)
        num_rel = num_rel - own.long()
    return rel, num_rel.long()


# -------------------------------------------------------------------------------------- metrics


def retrieval_metrics(rel: Tensor, num_relevant: Tensor, ks: Sequence[int]) -> tuple[dict[str, float], dict[str, int]]:
    """precision@k, recall@k and mAP@k (module docstring) from ranked relevance.

    Args:
        rel: bool [Q, K] relevance of the ranked results, K >= max(ks).
        num_relevant: long [Q], relevant gallery items per query (R).
        ks: cut-offs.

    Returns:
        (metrics {"precision@k", "recall@k", "mAP@k": float} (NaN when no query has R > 0),
         counts {"queries", "queries_without_relevant"}).
    """
    if rel.shape[1] < max(ks):
        raise ValueError(f"ranked list has {rel.shape[1]} items but k={max(ks)} was asked")
    keep = num_relevant > 0
    rel = rel[keep].double()
    num_rel = num_relevant[keep].double()
    counts = {"queries": int(keep.numel()), "queries_without_relevant": int((~keep).sum())}
    metrics: dict[str, float] = {}
    hits = rel.cumsum(dim=1)  # hits[:, i-1] = relevant among the first i
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    prec_at_i = hits / ranks
    for k in ks:
        if rel.shape[0] == 0:
            metrics.update({f"{m}@{k}": float("nan") for m in METRICS})
            continue
        metrics[f"precision@{k}"] = (hits[:, k - 1] / k).mean().item()
        metrics[f"recall@{k}"] = (hits[:, k - 1] / num_rel).mean().item()
        ap = (prec_at_i[:, :k] * rel[:, :k]).sum(1) / torch.clamp(num_rel, max=k)
        metrics[f"mAP@{k}"] = ap.mean().item()
    return metrics, counts


def evaluate_retrieval(
    queries: Tensor,
    q_targets: Tensor,
    gallery: Tensor | None,
    g_targets: Tensor | None,
    ks: Sequence[int],
    metric: str = "cosine",
    block_size: int = 1024,
    gallery_block_size: int | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = False,
    self_index: Tensor | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Search and score in one call.

    With ``gallery=None`` the evaluation is leave-one-out on ``queries``: every query searches all
    the others (itself excluded by index). For leave-one-out on a subset, pass the gallery and
    ``self_index`` (the gallery index of each query, as in ``topk_search``).
    Returns ``retrieval_metrics``' (metrics, counts) with counts["gallery"] added.
    """
    if gallery is None:
        gallery, g_targets = queries, q_targets
        self_index = torch.arange(queries.shape[0])
    elif g_targets is None:
        raise ValueError("g_targets is required with a gallery")
    if queries.shape[0] != q_targets.shape[0] or gallery.shape[0] != g_targets.shape[0]:
        raise ValueError("embeddings and targets disagree on the number of items")
    found = topk_search(queries, gallery, max(ks), metric, block_size, gallery_block_size, self_index, device, progress)
    rel, num_rel = relevance(q_targets, g_targets, found.indices, self_index, block_size)
    metrics, counts = retrieval_metrics(rel, num_rel, ks)
    counts["gallery"] = int(gallery.shape[0])
    return metrics, counts
