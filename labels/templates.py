"""Template text in web captions: the rule that keeps it out of the labels (docs/labels.md).

Web captions wrap their content in text repeated verbatim around a varying slot: "{title} - Free Download PNG",
"Licensed under Creative Commons Attribution 4.0", "Sticker: {title}". Every word of such a template stands next to
the same neighbours wherever it occurs ("free" before "download", "cliphub" between a "|" and the end), while a
content word meets many ("red flower", "flower pattern", "a flower in a vase"): Kneser-Ney's observation that a
word's distinct contexts, not its count, say how freely it is used. Context records (labels/text.py
``TermExtractor.chunks``): ``w\t<v`` / ``w\t>v`` (adjacent word), ``w\t<^`` / ``w\t>$`` (text edge),
``w\t=L R`` (the pair of neighbours of any kind; any punctuation reads ``|``), ``w\t<#`` / ``w\t>#`` (a varying slot,
a number, identifier, cut date, quantity or URL, with no other word past it: "| SKU 48213 |", "> Page 42 >"),
``w\t@site`` (the document's site), and ``w`` (the document holds it). Per word:

    rigidity(w) = max over its word and pair records r of  docs(w with r) / docs(w)

A word in at least ``min_docs`` documents is **template text** when ``rigidity >= templates.rigidity``. A word that
stands in one slot of its texts (the first word, the last word, or a hashtag: ``w\t#``) and on one site, each in that
share of its documents, ``SITE_LIFT`` times more than the site's share of documents, is that site's scaffold (a
one-word affix: "Download {title} ..."; a reach hashtag: "#artoftheday") when it meets the evidence floor of a corpus
the size of its site and, for an edge, is on ``templates.min_site_share`` of the site's documents (decided by the
driver, which sums the candidate sites' sizes). A series' own words, next to its counter ("{title} edit_0042
final.jpg"), leave its kept copies (``series_scaffold``, in the reduce task that caps the series). A term is dropped when all its words are template words ("hd wallpaper"), or when it
cuts a template word from its bond ("flower hd", whose "hd" belongs with "wallpaper"); a rigid content compound
keeps its whole form ("teddy bear" stays when "teddy" is bound to "bear").

Counting: each map task counts the records of its first ``templates.docs_per_partition`` documents (texts repeated
verbatim, up to numbers and dates, once; one copy per series), cut by term partition of the word
(``labels.vocab.term_bucket``); reduce task ``j`` sums term partition ``j`` over every map task and decides its
words exactly; the driver joins the (small) lists; the df pass drops the terms. No process holds more than one term
partition's counts, and nothing depends on the engine or the reduce-partition count.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping

SITE_LIFT = 2.0  # a site affix is this many times more concentrated on its site than the site's share of documents
MIN_EVIDENCE = 10  # distinct texts: below this, a rigid bond is no evidence of a template, whatever the corpus size
SERIES_COUNTER = 3  # a series' counter: one caption shape in this many copies at least, with as many distinct values


def records_by_partition(counts: Mapping[str, int], buckets: int) -> list[dict[str, int]]:
    """Context records (``word``, ``word\\t<left``, ``word\\t>right``) cut into ``buckets`` tables by the term partition
    of their word (``labels.vocab.term_bucket``), so that a word's records meet in one task."""
    out: list[dict[str, int]] = [{} for _ in range(buckets)]
    crc = zlib.crc32
    bucket: dict[str, int] = {}  # word -> partition: a word has several records
    for rec, n in counts.items():
        tab = rec.find("\t")
        word = rec if tab < 0 else rec[:tab]
        b = bucket.get(word)
        if b is None:
            b = bucket[word] = crc(word.encode("utf-8")) % buckets
        out[b][rec] = n
    return out


SLOTS = ("<^", ">$", "#")  # a fixed place in a caption's structure: its first word, its last word, a hashtag


def template_words(
    counts: Mapping[str, int], min_docs: float, rigidity: float, floor: float = MIN_EVIDENCE
) -> tuple[dict, dict]:
    """Template words of one term partition's merged records, and its site candidates.

    Returns ``(found, candidates)``: ``found`` maps ``word -> [docs, rigidity, bond]`` (``bond`` the dominant
    neighbour record: ``"<left"``, ``">right"`` or ``"=left right"``) for every word in at least ``min_docs``
    documents whose rigidity reaches ``rigidity``; slots and sites do not count there. ``candidates`` maps
    ``word -> [docs, slot share, slot, site, site share]`` for the other words in at least ``floor`` documents that
    stand on one site and in one slot (``SLOTS``: ``"<^"`` first word, ``">$"`` last word, ``"#"`` a hashtag), each in
    at least ``rigidity`` of their documents: a site's one-word affix ("Download {title}") or its hashtag scaffold
    ("#artoftheday"). The driver keeps or drops them once it knows the site's size (``site_affixes``). A rigid bond
    needs ``min_docs`` whatever its site: a content compound of a topical site ("international maritime signal flag")
    is as rigid as a template. Ties break by the record's text (deterministic).
    """
    docs: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    slot: dict[str, tuple[int, str]] = {}
    site: dict[str, tuple[int, str]] = {}
    for rec, n in counts.items():
        tab = rec.find("\t")
        if tab < 0:
            docs[rec] = n
            continue
        word, side = rec[:tab], rec[tab + 1 :]
        table = site if side[0] == "@" else slot if side in SLOTS else best
        cur = table.get(word)
        if cur is None or n > cur[0] or (n == cur[0] and side < cur[1]):
            table[word] = (n, side)
    found, candidates = {}, {}
    for word in sorted(docs):
        n = docs[word]
        if n < floor:
            continue
        top, side = best.get(word, (0, ""))
        if n >= min_docs and top / n >= rigidity:
            found[word] = [n, round(top / n, 4), side]
            continue
        s = site.get(word)
        if s is None or s[0] / n < rigidity:
            continue
        e = slot.get(word)
        if e is not None and e[0] / n >= rigidity:
            candidates[word] = [n, round(e[0] / n, 4), e[1], s[1][1:], round(s[0] / n, 4)]
    return found, candidates


def site_floor(site_docs: int, min_docs: float, min_docs_share: float) -> float:
    """The evidence a site's template word needs: the floor of a corpus the size of the site (``min_docs`` texts, or
    ``min_docs_share`` of them when the site is too small for that, never under ``MIN_EVIDENCE``)."""
    return max(MIN_EVIDENCE, min(min_docs, min_docs_share * site_docs))


def site_affixes(
    candidates: Mapping[str, list],
    site_docs: Mapping[str, int],
    docs: int,
    lift: float,
    min_docs: float = 0.0,
    min_docs_share: float = 0.0,
    min_site_share: float = 0.0,
) -> dict:
    """The candidates (``template_words``) that are their site's scaffold: ``word -> [docs, slot share, slot]``.

    A candidate's site must hold it ``lift`` times more often than the site's share of the documents says (a title
    word of a one-site corpus has lift 1, one spread over sites less), and it must be in ``site_floor`` documents (the
    evidence floor of a corpus the size of its site). A word at an edge of its texts must also be there in at least
    ``min_site_share`` of the site's documents: an affix is written on a good share of a site's pages whatever they
    show, while a title's first or last word on a topical site ("France - Auvergne" on a flag site) is on the pages
    about it only. A hashtag needs no such share: a word the corpus writes only as one site's hashtag is in no title,
    and a site draws its reach hashtags from a pool ("#artoftheday", "#freebie"), so each is on a fraction of its pages.
    """
    out = {}
    for word, (n, share, bond, s, s_share) in sorted(candidates.items()):
        size = site_docs.get(s, 0)
        if not size or s_share / (size / docs) < lift or n < site_floor(size, min_docs, min_docs_share):
            continue
        if bond == "#" or n * s_share / size >= min_site_share:
            out[word] = [n, share, bond]
    return out


def is_template_term(term: str, templates: Mapping[str, list]) -> bool:
    """Whether ``term`` is template text: all its words are template words, or it cuts a template word from its bond
    (a template word bound to its right neighbour ends the term, one bound to its left neighbour starts it, or one
    bound to a pair of neighbours is in it)."""
    words = term.split(" ")
    bonds = [templates.get(w) for w in words]
    if all(b is not None for b in bonds):
        return True
    first, last = bonds[0], bonds[-1]
    if (last is not None and last[2][0] == ">") or (first is not None and first[2][0] == "<"):
        return True
    return any(b is not None and b[2][0] == "=" for b in bonds)


_TOKEN_RE = re.compile(r"[^\W\d_]+|\d+")


def series_scaffold(member_texts: Iterable[Iterable[str]], extractor) -> list[str]:
    """The words of a series' own caption template: those standing next to its counter.

    ``member_texts`` holds, per copy of one series (near-identical re-saves, ``labels.images.series_key``), its texts.
    A generated series is one caption re-saved with a counter ("{title} edit_0042 final.jpg", "{title} variation
    #017", "{title} remix 12 (copy)"): its title and its scaffold are repeated alike, so no statistic over documents
    tells them apart, but the counter does. Each text becomes tokens (letter runs and digit runs of the extractor's cut
    text: dates and quantities are cut, punctuation is skipped); copies sharing a shape (the tokens with every number
    as ``#``) in at least ``SERIES_COUNTER`` copies, at a number position holding at least ``SERIES_COUNTER`` distinct
    values, have a counter there, and the nearest word on each side of it (folded; stopwords are no word) is
    scaffold. A constant number ("Room 101") is no counter. Returns the scaffold words, sorted.
    """
    shapes: dict[tuple[str, ...], list[list[str]]] = {}
    for texts in member_texts:
        for text in dict.fromkeys(texts):
            tokens = _TOKEN_RE.findall(extractor.cut(text))
            shape = tuple("#" if t.isdigit() else t for t in tokens)
            if "#" in shape:
                shapes.setdefault(shape, []).append(tokens)
    words: set[str] = set()
    for shape, copies in shapes.items():
        if len(copies) < SERIES_COUNTER:
            continue
        for i, t in enumerate(shape):
            if t != "#" or len({c[i] for c in copies}) < SERIES_COUNTER:
                continue
            for j in (i - 1, i + 1):
                if 0 <= j < len(shape) and shape[j] != "#":
                    w = extractor.word(shape[j])
                    if w is not None:
                        words.add(w)
    return sorted(words)


def without_words(groups: Mapping[str, str], words: Iterable[str]) -> dict[str, str]:
    """A ``term_groups`` record (mask -> tab-joined terms) without the terms holding any of ``words``."""
    banned = set(words)
    out = {}
    for mask, joined in groups.items():
        kept = [t for t in joined.split("\t") if banned.isdisjoint(t.split(" "))]
        if kept:
            out[mask] = "\t".join(kept)
    return out
