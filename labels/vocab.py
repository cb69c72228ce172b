"""Document frequencies partitioned by term (exact at any corpus size), vocabulary cuts, and head/torso/tail
statistics."""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections.abc import Iterable, Mapping, Sequence


def term_bucket(term: str, buckets: int) -> int:
    """Which of ``buckets`` document-frequency partitions counts ``term``: CRC-32 of its UTF-8 bytes (the same in
    every process and on every machine, unlike ``hash``)."""
    return zlib.crc32(term.encode("utf-8")) % buckets


def split_by_term(df: Mapping[str, int], buckets: int) -> list[dict[str, int]]:
    """``df`` cut into ``buckets`` disjoint tables by ``term_bucket``."""
    out: list[dict[str, int]] = [{} for _ in range(buckets)]
    crc = zlib.crc32
    for term, count in df.items():
        out[crc(term.encode("utf-8")) % buckets][term] = count
    return out


def by_df(term_count: tuple[str, int]) -> tuple[int, str]:
    """Sort key of ``(term, df)`` pairs: most frequent first, ties alphabetical (the vocabulary's order)."""
    return -term_count[1], term_count[0]


def top_terms(df: Mapping[str, int], min_df: int, max_terms: int, ceiling: float) -> dict[str, list]:
    """One term partition's share of the vocabulary: ``kept``, its ``max_terms`` best ``(term, df)`` pairs with
    ``min_df <= df <= ceiling``, and ``dropped``, every pair over the ceiling, both in ``by_df`` order.

    Term partitions are disjoint, so the ``max_terms`` best of all partitions' ``kept`` lists (``merge_top``) are
    exactly ``build_vocabulary`` of the whole table: each partition is counted exactly, never pruned, and the driver
    holds ``max_terms`` pairs, not the table.
    """
    kept = heapq.nsmallest(max_terms, ((t, c) for t, c in df.items() if min_df <= c <= ceiling), key=by_df)
    dropped = sorted(((t, c) for t, c in df.items() if c > ceiling), key=by_df)
    return {"kept": [list(p) for p in kept], "dropped": [list(p) for p in dropped]}


def merge_top(a: Iterable[Sequence], b: Iterable[Sequence], n: int | None) -> list[tuple[str, int]]:
    """The first ``n`` (all when None) ``(term, df)`` pairs of two ``by_df``-sorted lists of distinct terms."""
    merged = heapq.merge((tuple(p) for p in a), (tuple(p) for p in b), key=by_df)
    return list(merged) if n is None else list(itertools.islice(merged, n))


def build_vocabulary(df: Mapping[str, int], min_df: int, max_terms: int) -> list[str]:
    """Terms with document frequency >= ``min_df``, most frequent first (ties alphabetical),
    capped at ``max_terms``. A term's position is its raw label id."""
    kept = [(c, t) for t, c in df.items() if c >= min_df]
    kept.sort(key=lambda p: (-p[0], p[1]))
    return [t for _, t in kept[:max_terms]]


def frequency_bands(counts: Sequence[int], head_mass: float = 0.5, torso_mass: float = 0.8) -> dict:
    """Head/torso/tail split of a label frequency distribution by cumulative occurrence mass.

    Labels sorted by count: the head is the fewest most frequent labels that hold ``head_mass`` of
    all label occurrences, the torso the next ones up to ``torso_mass``, the tail the rest.

    Returns:
        ``{"head"|"torso"|"tail": {"labels", "occurrences", "share_of_labels", "share_of_occurrences",
        "min_count", "max_count"}}`` plus ``"num_labels"`` and ``"occurrences"``.
    """
    ordered = sorted((c for c in counts if c > 0), reverse=True)
    total = sum(ordered)
    bands: dict[str, list[int]] = {"head": [], "torso": [], "tail": []}
    running = 0
    for c in ordered:
        # The band is decided by the mass before this label, so the head is never empty.
        band = "head" if running < head_mass * total else "torso" if running < torso_mass * total else "tail"
        bands[band].append(c)
        running += c
    out: dict = {"num_labels": len(ordered), "occurrences": total}
    for name, cs in bands.items():
        out[name] = {
            "labels": len(cs),
            "occurrences": sum(cs),
            "share_of_labels": round(len(cs) / len(ordered), 4) if ordered else 0.0,
            "share_of_occurrences": round(sum(cs) / total, 4) if total else 0.0,
            "min_count": min(cs) if cs else 0,
            "max_count": max(cs) if cs else 0,
        }
    return out


def histogram_stats(hist: Mapping[int, int]) -> dict:
    """Mean, median, min, max of a value histogram ``{value: how many}`` (no list of values kept)."""
    n = sum(hist.values())
    if n == 0:
        return {"count": 0, "mean": 0.0, "median": 0.0, "min": 0, "max": 0, "histogram": {}}
    keys = sorted(hist)
    mean = sum(k * hist[k] for k in keys) / n

    def nth(i: int) -> int:
        seen = 0
        for k in keys:
            seen += hist[k]
            if seen > i:
                return k
        return keys[-1]

    median = nth(n // 2) if n % 2 else (nth(n // 2 - 1) + nth(n // 2)) / 2
    return {
        "count": n,
        "mean": round(mean, 4),
        "median": float(median),
        "min": keys[0],
        "max": keys[-1],
        "histogram": {str(k): hist[k] for k in keys},
    }
