"""Document frequencies in bounded memory, vocabulary cuts, and head/torso/tail statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence


class TermCounter:
    """Document frequency of terms, in memory bounded by ``max_size`` distinct terms.

    When the table outgrows ``max_size`` it drops every term whose count is at most a floor, raising
    the floor until the table is at most half full (lossy counting in the spirit of Manku & Motwani
    2002). Frequent terms survive every prune with exact counts; a term dropped at a prune restarts
    from zero, so its count is short by at most ``floor`` per prune it lost (``prunes`` and ``floor``
    go into the report; both stay 0 while the table fits, and counts are then exact).
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 2:
            raise ValueError(f"max_size must be >= 2, got {max_size}")
        self.max_size = max_size
        self.counts: Counter[str] = Counter()
        self.floor = 0
        self.prunes = 0

    def update(self, terms: Iterable[str]) -> None:
        """Count each term of one document once (pass distinct terms, e.g. a dict's keys)."""
        self.counts.update(iter(terms))  # an iterator, never a mapping: Counter would add its values
        if len(self.counts) > self.max_size:
            self._prune()

    def update_counts(self, counts) -> None:
        """Add document frequencies counted elsewhere (term -> count: another partition's table)."""
        self.counts.update(counts)
        if len(self.counts) > self.max_size:
            self._prune()

    def _prune(self) -> None:
        self.prunes += 1
        while len(self.counts) > self.max_size // 2:
            self.floor += 1
            self.counts = Counter({t: c for t, c in self.counts.items() if c > self.floor})

    def __len__(self) -> int:
        return len(self.counts)


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
