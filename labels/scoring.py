"""Per-image term scores from several weighted text signals, and the per-image label choice.

An image carries texts grouped by signal type (``keywords``, ``title``, ``category``,
``description``, ...). Each type has a confidence weight ``w`` in [0, 1]. A term's score combines
the weights of the signal types it appears in (each type counts once, however many of its texts hold
the term):

- ``noisy_or`` (default): ``1 - prod(1 - w)``: independent evidence adds up, so a term in the title
  and the description (0.8, 0.4) scores 0.88, above either alone, and never above 1.
- ``max``: the most confident signal alone.

Signal types listed in ``exclude`` (e.g. ``author``) ban their words: a candidate term containing
any of them is dropped. OpenClipArt artists often tag and title drawings with their own name
("nicu buculei contour"), which is no annotation of the picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from labels.text import TermExtractor

COMBINE_RULES = ("noisy_or", "max")


class TermScorer:
    """Scores the candidate terms of one image.

    Args:
        extractor: turns a text into candidate terms.
        weights: signal type -> confidence weight in [0, 1].
        exclude: signal types whose words ban every candidate term containing them.
        combine: ``noisy_or`` or ``max`` (see the module docstring).
    """

    def __init__(
        self,
        extractor: TermExtractor,
        weights: Mapping[str, float],
        exclude: Sequence[str] = (),
        combine: str = "noisy_or",
    ) -> None:
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got '{combine}'")
        for name, w in weights.items():
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"signal weight '{name}' = {w} is outside [0, 1]")
        self.extractor = extractor
        self.weights = dict(weights)
        self.exclude = frozenset(exclude)
        self.combine = combine

    def signal_terms(self, texts: Sequence[str]) -> list[str]:
        """Distinct terms over several texts of one signal type, in order of appearance."""
        seen: dict[str, None] = {}
        for text in texts:
            for term in self.extractor.terms(text):
                seen[term] = None
        return list(seen)

    def score(self, signals: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Candidate term -> score in (0, 1] for one image.

        Args:
            signals: signal type -> texts of that type. Types that are neither weighted nor excluded
                are ignored (the config check rejects them up front).

        Returns:
            Scores of every term found in a weighted signal and sharing no word with an excluded
            signal, in order of first appearance (signal types in sorted order), so equal inputs give
            equal outputs.
        """
        banned_words: set[str] = set()
        for name in self.exclude:
            for text in signals.get(name, ()):
                for run in self.extractor.chunks(text):
                    banned_words.update(run)
        if banned_words:
            banned = {
                t
                for name in signals
                if name in self.weights
                for t in self.signal_terms(signals[name])
                if not banned_words.isdisjoint(t.split(" "))
            }
        else:
            banned = set()
        if self.combine == "max":
            best: dict[str, float] = {}
            for name in sorted(signals):
                w = self.weights.get(name)
                if w is None:
                    continue
                for term in self.signal_terms(signals[name]):
                    if term not in banned and w > best.get(term, -1.0):
                        best[term] = w
            return best
        miss: dict[str, float] = {}  # prod(1 - w) over the signal types holding the term
        for name in sorted(signals):
            w = self.weights.get(name)
            if w is None:
                continue
            for term in self.signal_terms(signals[name]):
                if term not in banned:
                    miss[term] = miss.get(term, 1.0) * (1.0 - w)
        return {term: 1.0 - m for term, m in miss.items()}


def eligible_terms(scores: Mapping[str, float], min_score: float) -> dict[str, float]:
    """Terms whose score reaches ``min_score`` (the ones that count toward document frequency)."""
    return {t: s for t, s in scores.items() if s >= min_score}


def select_labels(
    scores: Mapping[str, float], vocab_index: Mapping[str, int], min_score: float, max_labels: int
) -> list[tuple[int, float]]:
    """An image's raw labels: its vocabulary terms scoring >= ``min_score``, best first.

    Ties break by vocabulary id (more frequent terms have smaller ids), so the choice is deterministic.

    Returns:
        Up to ``max_labels`` ``(label_id, score)`` pairs, sorted by descending score then id.
    """
    picked = [(vocab_index[t], s) for t, s in scores.items() if s >= min_score and t in vocab_index]
    picked.sort(key=lambda p: (-p[1], p[0]))
    return picked[:max_labels]


def cluster_labels(raw: Sequence[tuple[int, float]], term_cluster: Sequence[int]) -> list[tuple[int, float]]:
    """Map raw ``(label_id, score)`` pairs to clusters: a cluster's score is its best member's.

    Returns:
        Distinct ``(cluster_id, score)`` pairs, sorted by descending score then id.
    """
    best: dict[int, float] = {}
    for label, score in raw:
        c = term_cluster[label]
        if score > best.get(c, -1.0):
            best[c] = score
    return sorted(best.items(), key=lambda p: (-p[1], p[0]))
