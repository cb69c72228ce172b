"""Template text in web captions: the rule that keeps it out of the labels (docs/labels.md).

Web captions wrap their content in text repeated verbatim around a varying slot: "{title} - Free Download PNG",
"Licensed under Creative Commons Attribution 4.0", "{title} HD Wallpaper". Every word of such a template stands
next to the same neighbour wherever it occurs ("free" before "download", "licensed" before "under"), while a content
word meets many neighbours ("red flower", "flower pattern", "a flower in a vase"). This is the statistic Kneser-Ney
smoothing is built on (a word's number of distinct contexts, not its count, says how freely it is used); here:

    rigidity(w) = max over the two sides and every neighbour v of  docs(w next to v on that side) / docs(w)

A word is **template text** when it is frequent (in at least ``templates.min_share`` of the documents and
``vocab.min_df`` of them) and rigid (``rigidity >= templates.rigidity``). A term is dropped when all its words are
template words ("hd wallpaper"), or when it cuts a template word from the neighbour it is bound to ("flower hd",
whose "hd" belongs with "wallpaper"); a rigid content compound keeps its whole form ("teddy bear" stays when
"teddy" is bound to "bear"). Neighbours are the adjacent word or stopword inside one piece of punctuation
(labels/text.py ``TermExtractor.chunks``): numbers, dates, cut boilerplate and text edges are no neighbours.

Counting: each map task counts, per document (near-identical re-saves of one series counted once per partition),
``docs(w)`` and ``docs(w next to v)``, cut by term partition of ``w`` (``labels.vocab.term_bucket``); reduce task
``j`` sums term partition ``j`` over every map task and decides its words exactly; the driver joins the (small)
lists; the df pass drops the terms. No process holds more than one term partition's counts.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

MIN_EVIDENCE = 10  # distinct texts: below this, a rigid bond is no evidence of a template, whatever the corpus size


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


def template_words(counts: Mapping[str, int], min_docs: float, rigidity: float) -> dict[str, list]:
    """Template words of one term partition's merged records: ``word -> [docs, rigidity, bond]`` where ``bond`` is
    the dominant neighbour record (``"<left"`` or ``">right"``), for every word in at least ``min_docs`` documents
    whose rigidity reaches ``rigidity``. Ties between neighbours break by the record's text (deterministic)."""
    docs: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    for rec, n in counts.items():
        tab = rec.find("\t")
        if tab < 0:
            docs[rec] = n
            continue
        word, side = rec[:tab], rec[tab + 1 :]
        cur = best.get(word)
        if cur is None or n > cur[0] or (n == cur[0] and side < cur[1]):
            best[word] = (n, side)
    out = {}
    for word in sorted(docs):
        n = docs[word]
        if n < min_docs or word not in best:
            continue
        top, side = best[word]
        share = top / n
        if share >= rigidity:
            out[word] = [n, round(share, 4), side]
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
