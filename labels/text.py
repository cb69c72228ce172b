"""Text normalization and candidate-term extraction.

A text becomes annotation terms in four steps:

1. ``normalize``: Unicode NFKC, then case-folding.
2. Chunking: punctuation (anything that is not a letter, digit, space, hyphen, underscore or
   apostrophe) ends a chunk, so a term never spans a comma, a full stop or a folder separator.
   Hyphens and underscores join words (``low-contrast`` -> ``low contrast``); possessive ``'s`` is
   dropped and other apostrophes are removed (``don't`` -> ``dont``).
3. Tokens: stopwords, pure numbers and one-letter tokens also end a chunk (so ``cat on a mat``
   yields ``cat`` and ``mat``, never ``cat on``); each remaining word is folded to a simple singular.
4. Terms: every run of 1 to ``max_words`` consecutive words inside a chunk, minus configured stop
   terms (e.g. ``unsorted``, ``clip art``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

# A small English stopword list (function words, auxiliaries, pronouns) plus a few frequent function
# words of the other languages that appear in OpenClipArt titles (Italian, Spanish, French).
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing dont down during each either else etc ever
    every few for from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just let like me more most much must my myself neither no nor not of off
    on once only or other ought our ours ourselves out over own per same she should so some such than
    that the their theirs them themselves then there these they this those through thus to too under
    until up upon us very via was we were what when where which while who whom whose why will with
    within without would yet you your yours yourself yourselves one two three four five six seven
    eight nine ten s t
    di da del della dei delle il lo la le gli un una uno e el los las y en con por para de des du et
    au aux avec sur pour
    """.split()
)

# Irregular plurals and words that the suffix rules below would damage.
IRREGULAR = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "dice": "die",
    "leaves": "leaf",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "wolves": "wolf",
    "halves": "half",
    "shelves": "shelf",
    "calves": "calf",
    "loaves": "loaf",
    "thieves": "thief",
    "scarves": "scarf",
    "elves": "elf",
    "shoes": "shoe",
    "horseshoes": "horseshoe",
    "snowshoes": "snowshoe",
    "toes": "toe",
    "canoes": "canoe",
    "hoes": "hoe",
    "oboes": "oboe",
    "movies": "movie",
    "cookies": "cookie",
    "zombies": "zombie",
    "brownies": "brownie",
    "calories": "calorie",
    "pixies": "pixie",
    "rookies": "rookie",
    "hoodies": "hoodie",
    "genies": "genie",
    "prairies": "prairie",
    "species": "species",
    "series": "series",
    "news": "news",
    "lens": "lens",
    "chaos": "chaos",
    "physics": "physics",
    "mathematics": "mathematics",
    "aches": "ache",
    "headaches": "headache",
    "caches": "cache",
    "niches": "niche",
    "avalanches": "avalanche",
    "mustaches": "mustache",
    "moustaches": "moustache",
    "buses": "bus",
    # singular words ending in "as" (most "-as" words are plurals of "-a": ideas, bananas, cameras)
    "christmas": "christmas",
    "xmas": "xmas",
    "atlas": "atlas",
    "canvas": "canvas",
    "texas": "texas",
    "kansas": "kansas",
    "arkansas": "arkansas",
    "alias": "alias",
    "bias": "bias",
    "pancreas": "pancreas",
    "pampas": "pampas",
    "jeans": "jeans",
}

# Endings that look plural but are singular ("glass", "bus", "axis", "famous").
_KEEP_ENDINGS = ("ss", "us", "is", "ous")
_SPLIT_RE = re.compile(r"[^\w\s'’`-]+")  # punctuation: a chunk boundary
_POSSESSIVE_RE = re.compile(r"['’`]s\b")
_APOSTROPHE_RE = re.compile(r"['’`]")
_JOINERS = str.maketrans("-_", "  ")  # hyphen and underscore join words: they become spaces
SHORT_TEXT = 80  # texts up to this many characters are memoized (see TermExtractor.terms)


def normalize(text: str) -> str:
    """Unicode NFKC then case-folding: the canonical form every comparison uses."""
    return unicodedata.normalize("NFKC", text).casefold()


@functools.lru_cache(maxsize=1 << 18)
def singularize(word: str) -> str:
    """Simple plural folding of one lower-case word: ``cats -> cat``, ``boxes -> box``,
    ``berries -> berry``, ``leaves -> leaf``; ``glass``, ``bus``, ``christmas`` stay as they are."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    n = len(word)
    if n <= 3 or not word.endswith("s") or word.endswith(_KEEP_ENDINGS):
        return word
    if word.endswith("ies") and n > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]
    if word.endswith("oes") and n > 4:
        return word[:-2]
    return word[:-1]


class TermExtractor:
    """Turns free text into candidate annotation terms (see the module docstring for the rules).

    Args:
        max_words: longest term, in words (1 to 3 in the paper's spirit of short annotations).
        min_word_len: shorter tokens end a chunk (drops stray letters).
        drop_numeric: pure numbers end a chunk.
        fold_plurals: apply ``singularize`` to every word.
        extra_stopwords: added to ``STOPWORDS`` (given in any case; normalized here).
        stop_terms: whole terms never emitted (normalized and folded like the text).
    """

    def __init__(
        self,
        max_words: int = 3,
        min_word_len: int = 2,
        drop_numeric: bool = True,
        fold_plurals: bool = True,
        extra_stopwords: Iterable[str] = (),
        stop_terms: Iterable[str] = (),
    ) -> None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words
        self.min_word_len = min_word_len
        self.drop_numeric = drop_numeric
        self.fold_plurals = fold_plurals
        self.stopwords = STOPWORDS | {normalize(w) for w in extra_stopwords}
        # Bound per instance so that two extractors with different settings never share results.
        self._word = functools.lru_cache(maxsize=1 << 18)(self._word_uncached)
        # Keywords, folder paths and titles repeat across a corpus: memoize short texts' terms.
        self._short_terms = functools.lru_cache(maxsize=1 << 16)(self._terms_tuple)
        self.stop_terms: frozenset[str] = frozenset()
        self.stop_terms = frozenset(t for s in stop_terms for t in self._whole_terms(s))

    def _word_uncached(self, token: str) -> str | None:
        """The folded word for a token, or None when the token ends a chunk."""
        if len(token) < self.min_word_len or token in self.stopwords:
            return None
        if self.drop_numeric and token.isdigit():
            return None
        word = singularize(token) if self.fold_plurals else token
        return None if word in self.stopwords else word

    def chunks(self, text: str) -> list[list[str]]:
        """Normalized, folded word runs of ``text`` that terms may not cross."""
        # NFKC is the identity on ASCII and casefold() equals lower() there: skip the Unicode work.
        text = text.lower() if text.isascii() else normalize(text)
        if "'" in text or "’" in text or "`" in text:
            text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", text))
        text = text.translate(_JOINERS)
        out: list[list[str]] = []
        for piece in _SPLIT_RE.split(text):
            run: list[str] = []
            for token in piece.split():
                word = self._word(token)
                if word is None:
                    if run:
                        out.append(run)
                        run = []
                else:
                    run.append(word)
            if run:
                out.append(run)
        return out

    def _whole_terms(self, text: str) -> list[str]:
        return [" ".join(run) for run in self.chunks(text)]

    def terms(self, text: str) -> list[str]:
        """Distinct candidate terms of ``text`` (1 to ``max_words`` words): chunk by chunk, the words,
        then the 2-word terms, then the 3-word terms, each in order of appearance."""
        if len(text) <= SHORT_TEXT:
            return list(self._short_terms(text))
        return list(self._terms_tuple(text))

    def _terms_tuple(self, text: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        k = self.max_words
        for run in self.chunks(text):
            n = len(run)
            seen.update(dict.fromkeys(run))
            for size in range(2, min(k, n) + 1):
                seen.update(dict.fromkeys(" ".join(run[i : i + size]) for i in range(n - size + 1)))
        if self.stop_terms:
            return tuple(t for t in seen if t not in self.stop_terms)
        return tuple(seen)
