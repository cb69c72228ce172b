"""Text normalization and candidate-term extraction.

A text becomes annotation terms in five steps:

1. ``normalize``: Unicode NFKC, then case-folding (a camel-case hashtag is split first: ``#SignalFlag``).
2. Cuts: dates and times in the common written forms (``Monday, March 3, 2021``, ``2021-03-04T10:23Z``,
   ``04/03/2021 14:05``, ``Wed Aug 25 23:31:12 2004``), numbers with their unit (``12.6k views``, ``2400x512px``,
   ``3 days ago``, ``vor 3 Tagen``) and configured boilerplate phrases that hold punctuation (``tags:``) are cut out
   and end a chunk; so do spaced dashes and other caption separators (``theme - Site``, ``a | b``, ``a :: b``,
   ``a — b``). URLs are cut like dates (``URL_RE``), and a file name's extension; an identifier (``SN-48213-BLK``,
   ``IMG_0042``) becomes its digit runs and its words of four letters or more. Dates, quantities and URLs leave
   ``SLOT``, which the context records read as a number. A counter glued to a word is split off (``arrow08`` ->
   ``arrow 08``).
3. Chunking: punctuation (anything that is not a letter, digit, space, hyphen, underscore or apostrophe) ends
   a chunk, so a term never spans a comma, a full stop or a folder separator. Hyphens and underscores inside a
   word join words (``low-contrast`` -> ``low contrast``); possessive ``'s`` is dropped and other apostrophes
   are removed (``don't`` -> ``dont``).
4. Tokens: stopwords, numbers (``is_number``: digits, sizes, identifiers) and one-letter tokens also end a chunk (so ``cat on a mat`` yields ``cat``
   and ``mat``, never ``cat on``); each remaining word is folded to a simple singular. Word-only boilerplate
   phrases are matched on the folded words (``cliparts`` is ``clipart``) and end a chunk too.
5. Terms: every run of 1 to ``max_words`` consecutive words inside a chunk, minus configured stop terms
   (e.g. ``unsorted``, ``clip art``, normalized and folded like the text).

``contexts`` gives each word's neighbours (the adjacent word, stopword, number, punctuation or text edge on either
side; every punctuation mark is one class, ``|``, in a pair; a varying slot with no other word past it is ``<#`` /
``>#``; a hashtag's words have none, only the record that they stood in a hashtag): the statistic the template rule of
labels/templates.py is computed from.
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
_SPLIT_KEEP_RE = re.compile(r"([^\w\s'’`-]+)")  # the same, keeping the punctuation (neighbour records)
_DIMENSION_RE = re.compile(r"\d+(?:x\d+)+")  # "1920x1080": a number, not a word
# Neighbours that fix nothing: numbers vary, edges are everywhere. A pair of them is no bond ("pattern" in
# "arches 3 pattern", a word alone in its text); a pair with one real token is ("cliphub" after "|" at the end).
_LOOSE = frozenset({"#", "^", "$"})
_DIGIT_RUN_RE = re.compile(r"\d+")


def is_number(token: str) -> bool:
    """Whether a token is a number rather than a word: digits (``2021``), a size (``1920x1080``), or an identifier
    mixing letters and digits (three digits or more in two runs or more: ``0x8a3cd28``, ``a1b2c3``); short codes
    (``3d``, ``mp3``, ``ak47``, ``r2d2``) are words."""
    if token.isdigit() or _DIMENSION_RE.fullmatch(token):
        return True
    runs = _DIGIT_RUN_RE.findall(token)
    return len(runs) >= 2 and sum(map(len, runs)) >= 3


_POSSESSIVE_RE = re.compile(r"['’`]s\b")
_APOSTROPHE_RE = re.compile(r"['’`]")
_JOINERS = str.maketrans("-_", "  ")  # hyphen and underscore join words: they become spaces
# A one-letter prefix keeps its hyphen ("t-shirt", "x-ray", "e-mail"): split, the letter would be dropped.
_LETTER_HYPHEN_RE = re.compile(r"(?<![\w-])(\w)-(?=\w)")
_KEPT_HYPHEN = "\x00"
# A dash or underscore run standing alone between spaces ("theme - Site"), or a run of two or more dashes, is a
# caption separator, not a joiner: it ends a chunk like "|" or "::" do.
_SEPARATOR_RE = re.compile(r"(?<!\S)[-_]+(?!\S)|-{2,}")
SEPARATOR = " | "  # what a cut leaves: punctuation, so that no term spans it

# Dates and times in the common written forms (English month and weekday names). Hand-written rather than
# dateparser.search / datefinder: those parse candidates with dateutil (milliseconds per text, and datefinder
# takes plain words such as "march" or "sat" for dates); one compiled regex costs microseconds, and only texts
# holding a digit are searched. Weekday and month names are cut only inside such a date, so "march" or "may"
# as words stay.
_MONTH = (
    r"(?:january|february|march|april|may|june|july|august|september|october|november|december"
    r"|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?"
)
_WEEKDAY = (
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues|tue|wed|thurs|thur|thu|fri|sat|sun)\.?"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_YEAR = r"(?:\d{4}|'\d{2})"
_TIME = (
    r"(?:\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s*[ap]\.?m\b\.?)?|\d{1,2}\s*[ap]\.?m\b\.?)"
    r"(?:\s*(?:utc|gmt|z\b|[+-]\d{2}:?\d{2}))?"
)
_ISO = r"\d{4}-\d{1,2}-\d{1,2}(?:[t ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z\b|[+-]\d{2}:?\d{2})?)?"
_NUMERIC_DATE = r"(?:\d{1,2}[/.]\d{1,2}[/.](?:\d{4}|\d{2})|\d{4}[/.]\d{1,2}[/.]\d{1,2})(?![\d/.]*\d)"
_NAMED_DATE = (
    rf"(?:{_WEEKDAY},?\s+)?(?:{_DAY}\s+(?:of\s+)?{_MONTH}|{_MONTH}\s+{_DAY}\b)(?:,?\s+{_YEAR}\b)?"
    rf"|{_MONTH},?\s+{_YEAR}\b|{_WEEKDAY},?\s+(?={_TIME}|{_ISO}|{_NUMERIC_DATE})"
)
DATE_RE = re.compile(rf"(?<![\w/.:-])(?:{_ISO}|{_NUMERIC_DATE}|{_NAMED_DATE}|{_TIME})(?![\w:])")
_DIGIT_RE = re.compile(r"\d")
DATE_HIT = "<date or time>"  # how cut dates count in boilerplate_hits

# Numbers with their unit: a quantity says how much, never what is pictured. One regex (searched, like dates, only in
# texts holding a digit) cuts a number written in any common locale form (12.6, 12,6, 1.234.567, 1 234, 12'000) with
# what makes it a measurement or a count: a magnitude suffix (12.6k, 3M, 1,2 Mio.), a resolution or size (1920x1080,
# 2400x512px, 300dpi, 12 MB, 4k, 1080p), an ordinal (3rd), a count of views/likes/downloads/followers..., or a
# relative time ("3 days ago", "posted 3h ago"; German, French, Spanish, Italian, Portuguese and Dutch forms too).
# Unit words are a closed class, like month names: they are listed here; whatever stays of a caption's scaffolding
# around them ("posted", "views" of a language not listed) is the template rule's (labels/templates.py).
_NUM = r"\d+(?:[.,'’\u00a0\u202f]\d+)*"
_COUNTS = (
    r"views?|likes?|downloads?|followers?|following|comments?|shares?|favou?rites?|faves?|reviews?|ratings?|votes?"
    r"|plays?|subscribers?|reactions?|retweets?|reposts?|hits?|clicks?|impressions?|members?|saves?"
)
_MAGNITUDE = r"(?:k|m|b|mn|bn|mio|mrd|tsd|mil|thousand|million|billion)\b\.?"
_SIZE_UNIT = (
    r"(?:px|pixels?|dpi|ppi|mp|megapixels?|[kmgt]i?b|bytes?|fps|[kmg]?hz|mm|cm|km|kg|mg|ml|oz|lbs?|ft|inch(?:es)?"
    r"|pt)\b"
)
_TIME_UNIT = r"(?:s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?|w|wks?|weeks?|mos?|months?|y|yrs?|years?)"
_RELATIVE = (
    rf"(?:{_NUM}|an?|one|a few|few|several)\s*{_TIME_UNIT}\.?\s+ago\b"
    r"|vor\s+(?:\d+|einem|einer)\s+(?:sek(?:unden?)?|min(?:uten?)?|std|stunden?|tag(?:en)?|wochen?|monat(?:en)?"
    r"|jahr(?:en)?)\b\.?"
    r"|il\s+y\s+a\s+(?:\d+|une?)\s+(?:secondes?|minutes?|min|heures?|h|jours?|semaines?|mois|ans?|années?)\b"
    r"|hace\s+(?:\d+|una?)\s+(?:segundos?|minutos?|min|horas?|h|d[ií]as?|semanas?|mes(?:es)?|años?)\b"
    r"|h[áa]\s+(?:\d+|uma?)\s+(?:segundos?|minutos?|min|horas?|h|dias?|semanas?|m[êe]s(?:es)?|anos?)\b"
    r"|(?:\d+|una?)\s+(?:second[oi]|minut[oi]|or[ae]|giorn[oi]|settiman[ae]|mes[ei]|ann[oi])\s+fa\b"
    r"|(?:\d+|een)\s+(?:seconden?|minuut|minuten|uur|dagen?|weken?|maand(?:en)?|ja(?:ar|ren))\s+geleden\b"
)
_QUANTITY = (
    rf"{_RELATIVE}"
    rf"|{_NUM}(?:\s*[x×]\s*{_NUM})+(?:\s*(?:px|pixels?)\b)?"  # a resolution or size: 1920x1080, 2400 x 512 px
    rf"|{_NUM}(?:\s?{_MAGNITUDE})?\s+(?:{_COUNTS})\b"  # a count: 12.6k views, 312 likes
    rf"|{_NUM}\s?{_MAGNITUDE}"  # 12.6k, 3M, 1,2 Mio.
    rf"|{_NUM}\s?{_SIZE_UNIT}"  # 300dpi, 12 MB, 24 fps
    r"|\d+(?:p|k|st|nd|rd|th)\b"  # 1080p, 4k, 3rd
)
QUANTITY_RE = re.compile(rf"(?<![\w.,])(?:{_QUANTITY})(?![\w])")
# The same relative times written without a digit ("an hour ago", "yesterday", "just now"), searched only in texts
# holding one of their words.
RELATIVE_WORDS_RE = re.compile(
    rf"(?<!\w)(?:(?:an?|one|a few|few|several)\s+{_TIME_UNIT}\s+ago|yesterday|just now)(?!\w)"
)
QUANTITY_HIT = "<number and unit>"  # how cut quantities count in boilerplate_hits
# A URL (scheme://host/path?query, or www.host/path) is caption syntax like a date: an address, never what is pictured.
# It is cut whole before terms are formed, so its host, path and query words ("https", "utm", "originals") never
# become words; it counts as URL_HIT.
URL_RE = re.compile(r"(?<![\w/])(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"'()\[\]{}]+")
URL_HIT = "<url>"
# An identifier: a token of letter and digit segments joined by hyphens or underscores, with a digit run of three or
# more ("SN-48213-BLK", "IMG_0042", "IMG_20210304_102345"). Its segments of one to three letters are code letters (a
# product line, a colour code, a camera prefix), not words: the token becomes its digit runs (a number to the rest
# of the extractor, so it stays a varying slot for the template statistic and a counter for the series rule); its
# longer letter segments stay words ("edit_0042" -> "edit 0042").
_CODE_RE = re.compile(r"(?<![\w-])(?=[\w-]*\d{3})[^\W_]+(?:[-_][^\W_]+)+(?![\w-])")
_CODE_SEGMENT_RE = re.compile(r"[^\W\d_]+|\d+")
# A file name's extension ("_final_v2.svg", "(1).png", "DSC_5805.JPG"): a dot glued to a word, two to four letters or
# digits starting with a letter, then no word character, dot, colon or slash (after those it is a host: "ArtVault.net:
# ink"). File-name syntax, not a word of the name: cut.
_EXTENSION_RE = re.compile(r"(?<=[^\W_]|\))\.[^\W\d_][^\W_]{1,3}(?![\w.:/])")
# What a cut of a varying slot (a date, a quantity, a URL) leaves: punctuation like SEPARATOR, that the context records
# read as a number ("#"): the word next to it stands next to a slot whose value varies (labels/templates.py).
SLOT = " \u00a6 "
# A number glued to the end of a word of three letters or more is a counter ("arrow08", "smiley111", "img2034"): it is
# split off, so the word stays a word and the number is a number. Shorter glued forms are codes ("3d", "mp3", "ak47").
_COUNTER_SUFFIX_RE = re.compile(r"(?<=[^\W\d_]{3})(?=\d++(?![^\W\d_]))")
# A hashtag cannot hold a space, so its words are glued, in camel case when the writer cared ("#SignalFlag",
# "#SVGIcons"): SWAG-style canonicalization splits it where the casefold would erase the boundary, before a capital that
# starts a lower-case run of 2+ letters and follows 2+ lower-case letters or 2+ capitals ("#iPhone", "#NinJa" stay
# whole). With a thin space: whitespace to every later step, but the hashtag's words stay one hashtag to the template
# statistic (see ``chunks``). Only in hashtags: elsewhere a camel-case token is mostly a name ("ArtVault",
# "ClipArtBEST", "PowerPoint"), and split it would become common words ("art") that collide with content.
CAMEL_JOINER = "\u2009"
_CAMEL_RE = re.compile(r"(?<=[a-z]{2})(?=[A-Z][a-z]{2})|(?<=[A-Z]{2})(?=[A-Z][a-z]{2})")
_HASHTAG_RE = re.compile(r"(?<![\w&])#[^\W_][\w]*")


def _split_camel(match: re.Match) -> str:
    return _CAMEL_RE.sub(CAMEL_JOINER, match.group(0))


def _code(match: re.Match) -> str:
    """An identifier (``_CODE_RE``) as its digit runs and its words of four letters or more."""
    segments = _CODE_SEGMENT_RE.findall(match.group(0))
    return " ".join(t for t in segments if t.isdigit() or len(t) > 3)


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
        boilerplate: caption scaffolding phrases ("tags:", "stock photo", "image of", "free download"): each
            occurrence is cut out of the text and ends a chunk. Phrases of words only are matched on the folded
            words ("stock photos" is "stock photo"); phrases holding other punctuation ("tags:") on the text.
            ``boilerplate_hits`` counts them (phrase -> occurrences, cached texts included) for the report.
        cut_dates: cut dates and times (``DATE_RE``); they count as ``DATE_HIT`` in ``boilerplate_hits``.
        cut_quantities: cut numbers with their unit, counts and relative times (``QUANTITY_RE``,
            ``RELATIVE_WORDS_RE``); they count as ``QUANTITY_HIT``.
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
        cut_dates: bool = True,
        cut_quantities: bool = True,
    ) -> None:
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words
        self.min_word_len = min_word_len
        self.drop_numeric = drop_numeric
        self.fold_plurals = fold_plurals
        self.cut_dates = cut_dates
        self.cut_quantities = cut_quantities
        self.stopwords = STOPWORDS | {normalize(w) for w in extra_stopwords}
        # Per instance, so that two extractors with different settings never share results: token -> folded word
        # (None: the token ends a chunk). A plain dict, cleared when it outgrows WORD_CACHE: an lru_cache wrapper
        # costs a call per token, the hot loop of the text passes.
        self._words: dict[str, str | None] = {}
        # Keywords, folder paths and titles repeat across a corpus: memoize short texts' terms.
        self._short = functools.lru_cache(maxsize=1 << 16)(self._analyse)
        self._short_contexts = functools.lru_cache(maxsize=1 << 14)(self._contexts_of)
        self.stop_terms: frozenset[str] = frozenset()
        self._phrases: dict[str, list[tuple[str, ...]]] = {}  # first folded word -> word phrases, longest first
        self._phrase_firsts: frozenset[str] = frozenset()
        self._boilerplate_re = None
        self.boilerplate_hits: Counter[str] = Counter()
        self._hits: list[str] = []
        raw = []
        for p in {normalize(p).strip() for p in boilerplate if p.strip()}:
            if _SPLIT_RE.search(p.replace("'", "")) is None:
                forms = tuple(self._forms(p))
                if forms:
                    self._phrases.setdefault(forms[0], []).append(forms)
                    continue
            raw.append(p)
        for first in self._phrases:
            self._phrases[first].sort(key=lambda f: (-len(f), f))
        self._phrase_firsts = frozenset(self._phrases)
        if raw:
            raw.sort(key=lambda p: (-len(p), p))
            self._boilerplate_re = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in raw) + r")(?!\w)")
        self.stop_terms = frozenset(t for s in stop_terms for t in self._whole_terms(s))

    def _word_uncached(self, token: str) -> str | None:
        """The folded word for a token, or None when the token ends a chunk."""
        if len(token) < self.min_word_len or token in self.stopwords:
            return None
        if self.drop_numeric and is_number(token):
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

    def word(self, token: str) -> str | None:
        """The folded word of one lower-case token (``None``: a stopword, number or stray letter, no word)."""
        return self._word(token)

    def cut(self, text: str) -> str:
        """``text`` normalized, with dates, quantities, punctuated boilerplate and caption separators cut (each leaves
        ``SEPARATOR``) and joiners turned into spaces: what chunks are read from (no hit is counted)."""
        out = self._cut(text)
        self._hits.clear()
        return out

    def _forms(self, phrase: str) -> list[str]:
        """A boilerplate phrase as the matcher compares it: each token's folded word, or the token itself (a
        stopword or number)."""
        text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", phrase)).translate(_JOINERS)
        return [self._word(t) or t for t in text.split()]

    def _cut(self, text: str) -> str:
        """Normalized text with dates, punctuated boilerplate and caption separators cut (each leaves
        ``SEPARATOR``), apostrophes handled, joiners turned into spaces."""
        # NFKC is the identity on ASCII and casefold() equals lower() there: skip the Unicode work. A camel-case hashtag
        # is split between the two (it needs the capitals).
        ascii_ = text.isascii()
        if not ascii_:
            text = unicodedata.normalize("NFKC", text)
        if "#" in text:
            text = _HASHTAG_RE.sub(_split_camel, text)
        text = text.lower() if ascii_ else text.casefold()
        if "://" in text or "www." in text:
            text = URL_RE.sub(self._count_url, text)
        if "." in text:
            text = _EXTENSION_RE.sub(SEPARATOR, text)
        if _DIGIT_RE.search(text) is not None:
            if self.cut_dates:
                text = DATE_RE.sub(self._count_date, text)
            if self.cut_quantities:
                text = QUANTITY_RE.sub(self._count_quantity, text)
            if "-" in text or "_" in text:
                text = _CODE_RE.sub(_code, text)
            text = _COUNTER_SUFFIX_RE.sub(" ", text)
        elif self.cut_quantities and ("ago" in text or "yesterday" in text or "just now" in text):
            text = RELATIVE_WORDS_RE.sub(self._count_quantity, text)
        if "'" in text or "’" in text or "`" in text:
            text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", text))
        if self._boilerplate_re is not None:
            text = self._boilerplate_re.sub(self._count_boilerplate, text)
        if "-" in text or "_" in text:
            text = _SEPARATOR_RE.sub(SEPARATOR, text)
            if "-" in text:
                text = _LETTER_HYPHEN_RE.sub(r"\1" + _KEPT_HYPHEN, text)
        return text.translate(_JOINERS).replace(_KEPT_HYPHEN, "-")

    def chunks(self, text: str, contexts: set[str] | None = None) -> list[list[str]]:
        """Normalized, folded word runs of ``text`` that terms may not cross.

        With ``contexts``, each word's neighbour records are added to it (labels/templates.py): ``"word\\t<left"``
        and ``"word\\t>right"`` when the adjacent token is a word (its folded form; an article before every noun is
        no bond), ``"word\\t<^"`` / ``"word\\t>$"`` at the text's edges, and
        ``"word\\t=left right"`` for the pair of neighbours of any kind: a word or stopword, ``#`` (a number),
        the punctuation between pieces (a cut date or boilerplate phrase reads ``|``), ``^`` / ``$`` (text edges);
        a pair of numbers and edges only (``_LOOSE``) is left out.
        """
        out: list[list[str]] = []
        words = self._words
        word = self._word
        phrases = self._phrases
        firsts = self._phrase_firsts
        cut = self._cut(text)
        if contexts is None:
            pieces, seps = _SPLIT_RE.split(cut), None
        else:
            parts = _SPLIT_KEEP_RE.split(cut)
            pieces, seps = parts[0::2], parts[1::2]
            left_edge = "^"
        for k, piece in enumerate(pieces):
            tokens = piece.split()
            folded = [words[t] if t in words else word(t) for t in tokens]
            if phrases and not (firsts.isdisjoint(folded) and firsts.isdisjoint(tokens)):
                self._cut_phrases(tokens, folded)
            if seps is not None:
                if tokens:
                    right_edge = seps[k] if k < len(seps) else "$"
                    if k and left_edge[-1] == "#" and not piece[0].isspace():
                        # A hashtag: a keyword of the uploader's, in a list of no fixed order, so it has no neighbour
                        # records; "w\t#" records that it stood in one (labels/templates.py: a site's hashtag
                        # scaffold). Words after it, past a space, are plain text again.
                        n = len(piece.split(" ", 1)[0].split())
                        contexts.update([w + "\t#" for w in folded[:n] if w is not None])
                        if n < len(tokens):
                            self._contexts(tokens[n:], folded[n:], "#", right_edge, contexts)
                    else:
                        self._contexts(tokens, folded, left_edge, right_edge, contexts)
                    left_edge = seps[k] if k < len(seps) else "$"
                elif k < len(seps):
                    left_edge = seps[k]
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

    def _cut_phrases(self, tokens: list[str], folded: list[str | None]) -> None:
        """Cut word-only boilerplate phrases, matched on folded words (stopwords and numbers as written): the
        matched tokens become ``None`` (a chunk end) and ``""`` (no neighbour either)."""
        phrases = self._phrases
        forms = [w or t for w, t in zip(folded, tokens)]
        i, n = 0, len(forms)
        while i < n:
            cands = phrases.get(forms[i])
            if cands is not None:
                for ph in cands:
                    k = len(ph)
                    if tuple(forms[i : i + k]) == ph:
                        self._hits.append(" ".join(ph))
                        for j in range(i, i + k):
                            folded[j] = None
                            tokens[j] = ""
                        i += k - 1
                        break
            i += 1

    def _contexts(
        self, tokens: list[str], folded: list[str | None], left_edge: str, right_edge: str, contexts: set[str]
    ) -> None:
        """The neighbour records of one piece's words (see ``chunks``)."""
        if "\u00a6" in left_edge:  # a cut slot (SLOT) reads as a number
            left_edge = "#"
        if "\u00a6" in right_edge:
            right_edge = "#"
        forms = []
        is_word = []
        for t, w in zip(tokens, folded):
            if w is not None:
                forms.append(w)
                is_word.append(True)
            elif not t:  # cut boilerplate
                forms.append("|")
                is_word.append(False)
            elif is_number(t):
                forms.append("#")
                is_word.append(False)
            else:  # a stopword or a stray letter: a neighbour in pairs only ("a chicken", "the letter h")
                forms.append(t)
                is_word.append(False)
        last = len(forms) - 1
        for i, w in enumerate(folded):
            if w is None:
                continue
            left = forms[i - 1] if i > 0 else left_edge
            right = forms[i + 1] if i < last else right_edge
            if i > 0 and is_word[i - 1]:
                contexts.add(w + "\t<" + left)
            elif left == "#" and not (i > 1 and is_word[i - 2]):
                # A varying slot (a number, an identifier, a cut date, quantity or URL) between the word and no other
                # word: the word labels the slot's value ("| SKU 48213 |", "> Page 42 >", "$12.99 USD"). Past a word,
                # the number is the content's own ("arches 3 pattern", "apollo 11 rocket").
                contexts.add(w + "\t<#")
            elif left == "^":  # the text's first word: an edge bond counts only with its site (labels/templates.py)
                contexts.add(w + "\t<^")
            if i < last and is_word[i + 1]:
                contexts.add(w + "\t>" + right)
            elif right == "#" and not (i < last - 1 and is_word[i + 2]):
                contexts.add(w + "\t>#")
            elif right == "$":
                contexts.add(w + "\t>$")
            if left not in _LOOSE or right not in _LOOSE:
                # Which mark a caption puts between its parts is the writer's style ("Home > Gallery", "Home » Gallery",
                # "Home / Gallery"): every punctuation neighbour is one class, "|", in the pair.
                if not left[0].isalnum() and left not in _LOOSE:
                    left = "|"
                if not right[0].isalnum() and right not in _LOOSE:
                    right = "|"
                contexts.add(w + "\t=" + left + " " + right)

    def _count_boilerplate(self, match: re.Match) -> str:
        self._hits.append(match.group(0))
        return SEPARATOR

    def _count_date(self, match: re.Match) -> str:
        self._hits.append(DATE_HIT)
        return SLOT

    def _count_quantity(self, match: re.Match) -> str:
        self._hits.append(QUANTITY_HIT)
        return SLOT

    def _count_url(self, match: re.Match) -> str:
        self._hits.append(URL_HIT)
        return SLOT

    def _whole_terms(self, text: str) -> list[str]:
        runs = self.chunks(text)
        self._hits.clear()
        return [" ".join(run) for run in runs]

    def terms(self, text: str) -> list[str]:
        """Distinct candidate terms of ``text`` (1 to ``max_words`` words): chunk by chunk, the words,
        then the 2-word terms, then the 3-word terms, each in order of appearance."""
        terms, hits = self._short(text) if len(text) <= SHORT_TEXT else self._analyse(text)
        if hits:
            self.boilerplate_hits.update(hits)
        return list(terms)

    def terms_tuple(self, text: str) -> tuple[str, ...]:
        """``terms(text)`` as the cached tuple (boilerplate hits counted)."""
        terms, hits = self._short(text) if len(text) <= SHORT_TEXT else self._analyse(text)
        if hits:
            self.boilerplate_hits.update(hits)
        return terms

    def contexts(self, text: str) -> frozenset[str]:
        """The context records of ``text`` (labels/templates.py): its words' neighbour records (see ``chunks``) and
        its words themselves. A second reading of the text, asked for only by the documents the template statistic
        samples (``templates.docs_per_partition``)."""
        return self._short_contexts(text) if len(text) <= SHORT_TEXT else self._contexts_of(text)

    def terms_and_contexts(self, text: str) -> tuple[tuple[str, ...], frozenset[str]]:
        """``terms_tuple(text)`` and ``contexts(text)``, reading a long (uncached) text once."""
        if len(text) <= SHORT_TEXT:
            return self.terms_tuple(text), self._short_contexts(text)
        contexts: set[str] = set()
        terms, hits = self._analyse(text, contexts)
        if hits:
            self.boilerplate_hits.update(hits)
        return terms, frozenset(contexts)

    def _contexts_of(self, text: str) -> frozenset[str]:
        contexts: set[str] = set()
        for run in self.chunks(text, contexts):
            contexts.update(run)  # the words themselves: "the text holds the word"
        self._hits.clear()
        return frozenset(contexts)

    def _terms_tuple(self, text: str) -> tuple[str, ...]:
        """The terms of ``text``, uncached (boilerplate hits not counted)."""
        return self._analyse(text)[0]

    def _analyse(self, text: str, contexts: set[str] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The terms of ``text`` and the boilerplate phrases cut out of it (with ``contexts``, its context records
        are added to it)."""
        self._hits.clear()
        seen: dict[str, None] = {}
        k = self.max_words
        for run in self.chunks(text, contexts):
            if contexts is not None:
                contexts.update(run)
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
