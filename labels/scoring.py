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
# Signal types that are lists of tags or folder paths, not free text: stored as lists, and left out of the template
# statistic (a folder path "animals/birds" or a tag list has structure, not a caption's template).
LIST_SIGNALS = ("keywords", "category")


class MaskScores:
    """Score of a term from the bit mask of the weighted signal types holding it: bit i is the i-th type in sorted
    order; noisy-or or max of their weights, combined in sorted type order as ``TermScorer.score`` does (same float).
    Callable, cached per mask; needs no text machinery, so the count and write passes score with it alone.
    """

    def __init__(self, weights: Mapping[str, float], combine: str = "noisy_or") -> None:
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got '{combine}'")
        self.weights = dict(weights)
        self.combine = combine
        self.bits = {name: 1 << i for i, name in enumerate(sorted(self.weights))}
        self._scores: dict[int, float] = {}

    def __call__(self, mask: int | str) -> float:
        """The score of ``mask`` (an int, or its decimal string as the work files' JSON keys hold it)."""
        score = self._scores.get(mask)
        if score is None:
            bits = int(mask)
            ws = [self.weights[name] for name, bit in self.bits.items() if bits & bit]
            if self.combine == "max":
                score = max(ws, default=0.0)
            else:
                miss = 1.0
                for w in ws:
                    miss = miss * (1.0 - w)
                score = 1.0 - miss
            self._scores[mask] = score
        return score


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
        # Bit i stands for the i-th weighted signal type in sorted order: a term's score depends only on which types
        # hold it, so the passes carry that mask and score it through ``mask_score`` (same float as ``score``).
        self.mask_score = MaskScores(self.weights, combine)
        self.bits = self.mask_score.bits

    def signal_terms(
        self, texts: Sequence[str], contexts: set[str] | None = None, seen: set | None = None
    ) -> list[str]:
        """Distinct terms over several texts of one signal type, in order of appearance. With ``contexts``, the
        context records of each text are added to it (``TermExtractor.contexts``) unless ``seen`` holds them already
        (then they are added to ``seen``): a text repeated verbatim, up to numbers and dates, counts once."""
        ex = self.extractor
        if contexts is None:
            if len(texts) == 1:
                return list(ex.terms_tuple(texts[0]))  # one text's terms are distinct already
            found: dict[str, None] = {}
            for text in texts:
                found.update(dict.fromkeys(ex.terms_tuple(text)))
            return list(found)
        found = {}
        for text in texts:
            terms, ctx = ex.terms_and_contexts(text)
            found.update(dict.fromkeys(terms))
            if ctx and (seen is None or ctx not in seen):
                contexts.update(ctx)
                if seen is not None:
                    seen.add(ctx)
        return list(found)

    def term_masks(
        self, signals: Mapping[str, Sequence[str]], contexts: set[str] | None = None, seen: set[str] | None = None
    ) -> dict[str, int]:
        """Candidate term -> bit mask of the weighted signal types holding it, for one image (terms sharing a word with
        an excluded signal dropped), in order of first appearance (signal types in sorted order). With ``contexts``,
        the context records of the weighted free-text signals' texts are added to it (not ``LIST_SIGNALS``; texts in
        ``seen`` skipped)."""
        banned_words: set[str] = set()
        for name in self.exclude:
            for text in signals.get(name, ()):
                for run in self.extractor.chunks(text):
                    banned_words.update(run)
        masks: dict[str, int] = {}
        for name in sorted(signals):
            bit = self.bits.get(name)
            if bit is None:
                continue
            terms = self.signal_terms(signals[name], None if name in LIST_SIGNALS else contexts, seen)
            if not masks:
                masks = dict.fromkeys(terms, bit)
                continue
            get = masks.get
            for term in terms:
                masks[term] = get(term, 0) | bit
        if banned_words:
            masks = {t: m for t, m in masks.items() if banned_words.isdisjoint(t.split(" "))}
        return masks

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
        mask_score = self.mask_score
        return {term: mask_score(m) for term, m in self.term_masks(signals).items()}


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


def select_group_labels(
    groups: Mapping[str, str], vocab_index: Mapping[str, int], mask_score, max_labels: int
) -> list[tuple[int, float]]:
    """``select_labels`` on the passes' work-file form of an image's eligible terms (``{"<signal mask>": "term\\tterm"}``,
    see labels/passes.py ``term_groups``): its vocabulary terms, scored by ``mask_score``, best first, ties by id.

    Returns:
        Up to ``max_labels`` ``(label_id, score)`` pairs, sorted by descending score then id.
    """
    by_score: dict[float, list[int]] = {}  # every term is in one group: ids never repeat
    get = vocab_index.get
    for mask, terms in groups.items():
        ids = [i for i in map(get, terms.split("\t")) if i is not None]
        if ids:
            score = mask_score(mask)
            same = by_score.get(score)
            if same is None:
                by_score[score] = ids
            else:
                same += ids
    picked: list[tuple[int, float]] = []
    for score in sorted(by_score, reverse=True):  # = sorting (id, score) pairs by (-score, id), without a key call
        if len(picked) >= max_labels:
            break
        ids = sorted(by_score[score])[: max_labels - len(picked)]
        picked += [(i, score) for i in ids]
    return picked


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
