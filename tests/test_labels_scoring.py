"""Signal scoring, per-image label choice, vocabulary cuts and the split/scale hash."""

import hashlib
import zlib

import pytest

from labels.hashing import content_key, hash_unit, scale_bucket, split_of
from labels.scoring import TermScorer, cluster_labels, eligible_terms, select_labels
from labels.text import TermExtractor
from labels.vocab import (
    build_vocabulary,
    frequency_bands,
    histogram_stats,
    merge_top,
    split_by_term,
    term_bucket,
    top_terms,
)

WEIGHTS = {"keywords": 1.0, "title": 0.8, "category": 0.6, "description": 0.4}


def scorer(**kw):
    return TermScorer(TermExtractor(max_words=2), WEIGHTS, **kw)


def test_noisy_or_combines_signal_types_once_each():
    s = scorer().score(
        {
            "title": ["Red car"],
            "description": ["A red car. The car is red."],  # repeated inside one type: counted once
            "category": ["vehicles/cars"],
        }
    )
    assert s["red car"] == pytest.approx(1 - 0.2 * 0.6)  # title + description
    assert s["car"] == pytest.approx(1 - 0.2 * 0.6 * 0.4)  # title + description + category
    assert s["vehicle"] == pytest.approx(0.6)
    assert s["red"] == pytest.approx(0.88)


def test_max_rule_and_weights_order():
    s = scorer(combine="max").score({"keywords": ["cat"], "title": ["cat"], "description": ["dog"]})
    assert s == {"cat": 1.0, "dog": 0.4}


def test_excluded_signal_bans_terms_sharing_a_word():
    s = scorer(exclude=["author"]).score(
        {"keywords": ["nicu buculei contour", "chipmunk"], "title": ["Nicu's chipmunk"], "author": ["Nicu Buculei"]}
    )
    assert set(s) == {"contour", "chipmunk"}


def test_unknown_signal_is_ignored_and_bad_weight_rejected():
    assert scorer().score({"board": ["cat"]}) == {}
    with pytest.raises(ValueError, match="outside"):
        TermScorer(TermExtractor(), {"title": 1.5})
    with pytest.raises(ValueError, match="combine"):
        TermScorer(TermExtractor(), WEIGHTS, combine="sum")


def test_select_labels_threshold_cap_and_tie_break():
    scores = {"cat": 1.0, "pet": 0.88, "sofa": 0.4, "black": 0.4, "rare": 0.9}
    vocab = {"cat": 0, "black": 1, "sofa": 2, "pet": 3}  # "rare" is not in the vocabulary
    assert select_labels(scores, vocab, min_score=0.5, max_labels=10) == [(0, 1.0), (3, 0.88)]
    # Equal scores break by vocabulary id (more frequent first).
    assert select_labels(scores, vocab, min_score=0.4, max_labels=3) == [(0, 1.0), (3, 0.88), (1, 0.4)]
    assert eligible_terms(scores, 0.88) == {"cat": 1.0, "pet": 0.88, "rare": 0.9}


def test_cluster_labels_keeps_best_member_score():
    term_cluster = [0, 1, 0, 2]
    assert cluster_labels([(0, 0.5), (2, 0.9), (3, 0.7)], term_cluster) == [(0, 0.9), (2, 0.7)]


def test_build_vocabulary_min_df_max_terms_order():
    df = {"cat": 5, "dog": 5, "car": 9, "rare": 1, "tree": 2}
    assert build_vocabulary(df, min_df=2, max_terms=10) == ["car", "cat", "dog", "tree"]
    assert build_vocabulary(df, min_df=2, max_terms=2) == ["car", "cat"]
    assert build_vocabulary(df, min_df=6, max_terms=10) == ["car"]


def test_vocabulary_from_term_partitions_equals_the_whole_table():
    df = {"cat": 5, "dog": 5, "car": 9, "rare": 1, "tree": 2, "the": 40, "a b": 3}
    parts = split_by_term(df, 3)
    assert sum(len(p) for p in parts) == len(df) and {t for p in parts for t in p} == set(df)
    assert all(term_bucket(t, 3) == j for j, p in enumerate(parts) for t in p)
    assert term_bucket("cat", 1000) == zlib.crc32(b"cat") % 1000  # the same in every process (not hash())
    kept, dropped = [], []
    for p in parts:
        share = top_terms(p, min_df=2, max_terms=3, ceiling=20)
        kept, dropped = merge_top(kept, share["kept"], 3), merge_top(dropped, share["dropped"], None)
    assert (
        [t for t, _ in kept]
        == build_vocabulary({t: c for t, c in df.items() if c <= 20}, 2, 3)
        == ["car", "cat", "dog"]
    )
    assert dropped == [("the", 40)]


def test_frequency_bands_known_split():
    bands = frequency_bands([50, 30, 10, 5, 3, 1, 1, 0])
    assert bands["num_labels"] == 7 and bands["occurrences"] == 100
    assert bands["head"]["labels"] == 1  # 50 reaches half the mass
    assert bands["torso"]["labels"] == 1  # 30 -> 80 %
    assert bands["tail"]["labels"] == 5
    assert bands["head"]["share_of_occurrences"] + bands["torso"]["share_of_occurrences"] == pytest.approx(0.8)


def test_histogram_stats():
    h = histogram_stats({1: 2, 2: 1, 5: 1})  # values 1, 1, 2, 5
    assert h["mean"] == pytest.approx(2.25) and h["median"] == 1.5 and h["max"] == 5
    assert histogram_stats({})["count"] == 0


def test_hash_unit_matches_architecture_definition():
    s = "split:0123456789abcdef"
    expected = int.from_bytes(hashlib.sha1(s.encode()).digest()[:8], "big") / 2**64
    assert hash_unit(s) == expected
    assert 0.0 <= hash_unit("") < 1.0
    assert content_key(b"abc") == hashlib.sha1(b"abc").hexdigest()[:16]


def test_split_and_scale_bucket_rules():
    scales = [0.01, 0.1, 0.25, 0.5, 1.0]
    keys = [content_key(str(i).encode()) for i in range(2000)]
    for k in keys:
        assert split_of(k, 0.1) == ("val" if hash_unit("split:" + k) < 0.1 else "train")
        u = hash_unit("scale:" + k)
        i = scale_bucket(k, scales)
        assert (scales[i - 1] if i else 0.0) <= u < scales[i]
    val_share = sum(split_of(k, 0.1) == "val" for k in keys) / len(keys)
    assert 0.07 < val_share < 0.13
