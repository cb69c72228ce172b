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
from collections import Counter
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

# The repo's exceptions on top of inflect: words inflect folds wrongly for this use ("indices" ->
# "indice", "pants" -> "pant", "christmas" -> "christma"), and singular words ending in "s".
IRREGULAR = {
    "waltzes": "waltz",
    "indices": "index",
    "matrices": "matrix",
    "vertices": "vertex",
    "appendices": "appendix",
    "pants": "pants",
    "scissors": "scissors",
    "trousers": "trousers",
    "glasses": "glass",
    "politics": "politics",
    "physics": "physics",
    "mathematics": "mathematics",
    "graphics": "graphics",
    "electronics": "electronics",
    "athletics": "athletics",
    "news": "news",
    "lens": "lens",
    "chaos": "chaos",
    "species": "species",
    "series": "series",
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
    "gas": "gas",
    "yes": "yes",
    "dice": "die",
    "data": "data",
    "people": "people",
    "this": "this",
}

# Endings that look plural but are singular ("glass", "bus", "axis", "famous"): inflect strips them.
_KEEP_ENDINGS = ("ss", "us", "is", "ous")
_SPLIT_RE = re.compile(r"[^\w\s'’`-]+")  # punctuation: a chunk boundary
_POSSESSIVE_RE = re.compile(r"['’`]s\b")
_APOSTROPHE_RE = re.compile(r"['’`]")
_JOINERS = str.maketrans("-_", "  ")  # hyphen and underscore join words: they become spaces
# A one-letter prefix keeps its hyphen ("t-shirt", "x-ray", "e-mail"): split, the letter would be dropped.
_LETTER_HYPHEN_RE = re.compile(r"(?<![\w-])(\w)-(?=\w)")
_KEPT_HYPHEN = "\x00"
SHORT_TEXT = 80  # texts up to this many characters are memoized (see TermExtractor.terms)
WORD_CACHE = 1 << 18  # folded words kept per extractor (the cache is emptied when full)


def normalize(text: str) -> str:
    """Unicode NFKC then case-folding: the canonical form every comparison uses."""
    return unicodedata.normalize("NFKC", text).casefold()


@functools.lru_cache(maxsize=1)
def _inflect_engine():
    from labels._inflect import inflect  # on first use: text-free workers never need it

    return inflect.engine()


@functools.lru_cache(maxsize=1 << 18)
def singularize(word: str) -> str:
    """Plural folding of one lower-case word through ``inflect``'s ``singular_noun``, with the repo's
    exceptions (``IRREGULAR``, singular ``-ss/-us/-is/-ous`` endings) on top: ``cats -> cat``,
    ``theses -> thesis``, ``lenses -> lens``, ``t-shirts -> t-shirt``; ``glass``, ``bus``,
    ``christmas`` stay as they are."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 2 or word.endswith(_KEEP_ENDINGS):
        return word
    folded = _inflect_engine().singular_noun(word)
    return folded if isinstance(folded, str) and folded else word


class TermExtractor:
    """Turns free text into candidate annotation terms (see the module docstring for the rules).

    Args:
        max_words: longest term, in words (1 to 3 in the paper's spirit of short annotations).
        min_word_len: shorter tokens end a chunk (drops stray letters).
        drop_numeric: pure numbers end a chunk.
        fold_plurals: apply ``singularize`` to every word.
        extra_stopwords: added to ``STOPWORDS`` (given in any case; normalized here).
        stop_terms: whole terms never emitted (normalized and folded like the text).
        boilerplate: caption scaffolding phrases ("tags:", "stock photo", "image of", "free download"):
            each occurrence is cut out of the text and ends a chunk; ``boilerplate_hits`` counts them
            (phrase -> occurrences, cached texts included) for the report.
    """

    def __init__(
        self,
        max_words: int = 3,
        min_word_len: int = 2,
        drop_numeric: bool = True,
        fold_plurals: bool = True,
        extra_stopwords: Iterable[str] = (),
        stop_terms: Iterable[str] = (),
        boilerplate: Iterable[str] = (),
    ) -> None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words
        self.min_word_len = min_word_len
        self.drop_numeric = drop_numeric
        self.fold_plurals = fold_plurals
        self.stopwords = STOPWORDS | {normalize(w) for w in extra_stopwords}
        # Per instance, so that two extractors with different settings never share results: token -> folded word
        # (None: the token ends a chunk). A plain dict, cleared when it outgrows WORD_CACHE: an lru_cache wrapper
        # costs a call per token, the hot loop of the text passes.
        self._words: dict[str, str | None] = {}
        # Keywords, folder paths and titles repeat across a corpus: memoize short texts' terms.
        self._short_terms = functools.lru_cache(maxsize=1 << 16)(self._terms_and_hits)
        self.stop_terms: frozenset[str] = frozenset()
        phrases = sorted({normalize(p).strip() for p in boilerplate if p.strip()}, key=lambda p: (-len(p), p))
        self._boilerplate_re = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in phrases) + r")(?!\w)") if phrases else None
        )
        self.boilerplate_hits: Counter[str] = Counter()
        self._hits: list[str] = []
        self.stop_terms = frozenset(t for s in stop_terms for t in self._whole_terms(s))

    def _word_uncached(self, token: str) -> str | None:
        """The folded word for a token, or None when the token ends a chunk."""
        if len(token) < self.min_word_len or token in self.stopwords:
            return None
        if self.drop_numeric and token.isdigit():
            return None
        word = singularize(token) if self.fold_plurals else token
        return None if word in self.stopwords else word

    def _word(self, token: str) -> str | None:
        """The folded word for a token (cached), or None when the token ends a chunk."""
        words = self._words
        if token in words:
            return words[token]
        if len(words) >= WORD_CACHE:
            words.clear()
        word = words[token] = self._word_uncached(token)
        return word

    def chunks(self, text: str) -> list[list[str]]:
        """Normalized, folded word runs of ``text`` that terms may not cross."""
        # NFKC is the identity on ASCII and casefold() equals lower() there: skip the Unicode work.
        text = text.lower() if text.isascii() else normalize(text)
        if "'" in text or "’" in text or "`" in text:
            text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", text))
        if self._boilerplate_re is not None:
            text = self._boilerplate_re.sub(self._count_boilerplate, text)
        if "-" in text:
            text = _LETTER_HYPHEN_RE.sub(r"\1" + _KEPT_HYPHEN, text)
        text = text.translate(_JOINERS).replace(_KEPT_HYPHEN, "-")
        out: list[list[str]] = []
        words = self._words
        word = self._word
        for piece in _SPLIT_RE.split(text):
            folded = [words[t] if t in words else word(t) for t in piece.split()]
            if None not in folded:
                if folded:
                    out.append(folded)
                continue
            run: list[str] = []
            for w in folded:
                if w is None:
                    if run:
                        out.append(run)
                        run = []
                else:
                    run.append(w)
            if run:
                out.append(run)
        return out

    def _count_boilerplate(self, match: re.Match) -> str:
        self._hits.append(match.group(0))
        return " | "

    def _whole_terms(self, text: str) -> list[str]:
        runs = self.chunks(text)
        self._hits.clear()
        return [" ".join(run) for run in runs]

    def terms(self, text: str) -> list[str]:
        """Distinct candidate terms of ``text`` (1 to ``max_words`` words): chunk by chunk, the words,
        then the 2-word terms, then the 3-word terms, each in order of appearance."""
        terms, hits = self._short_terms(text) if len(text) <= SHORT_TEXT else self._terms_and_hits(text)
        if hits:
            self.boilerplate_hits.update(hits)
        return list(terms)

    def _terms_tuple(self, text: str) -> tuple[str, ...]:
        """The terms of ``text``, uncached (boilerplate hits not counted)."""
        return self._terms_and_hits(text)[0]

    def _terms_and_hits(self, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The terms of ``text`` and the boilerplate phrases cut out of it."""
        self._hits.clear()
        seen: dict[str, None] = {}
        k = self.max_words
        for run in self.chunks(text):
            n = len(run)
            seen.update(dict.fromkeys(run))
            if n < 2 or k < 2:
                continue
            seen.update(dict.fromkeys([a + " " + b for a, b in zip(run, run[1:])]))
            if n < 3 or k < 3:
                continue
            seen.update(dict.fromkeys([a + " " + b + " " + c for a, b, c in zip(run, run[1:], run[2:])]))
            for size in range(4, min(k, n) + 1):
                seen.update(dict.fromkeys([" ".join(run[i : i + size]) for i in range(n - size + 1)]))
        hits = tuple(self._hits)
        if self.stop_terms:
            return tuple(t for t in seen if t not in self.stop_terms), hits
        return tuple(seen), hits
