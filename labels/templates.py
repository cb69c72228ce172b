"""Template text in web captions: the rule that keeps it out of the labels (docs/labels.md).

Web captions wrap their content in text repeated verbatim around a varying slot: "{title} - Free Download PNG",
"Licensed under Creative Commons Attribution 4.0", "Sticker: {title}". Every word of such a template stands next to
the same neighbours wherever it occurs ("free" before "download", "cliphub" between a "|" and the end), while a
content word meets many ("red flower", "flower pattern", "a flower in a vase"): Kneser-Ney's observation that a
word's distinct contexts, not its count, say how freely it is used. Context records (labels/text.py
``TermExtractor.chunks``): ``w\t<v`` / ``w\t>v`` (adjacent word), ``w\t<^`` / ``w\t>$`` (text edge),
``w\t=L R`` (the pair of neighbours of any kind), ``w\t@site`` (the document's site), and ``w`` (the document holds
it). Per word:

    rigidity(w) = max over its word and pair records r of  docs(w with r) / docs(w)

A word in at least ``min_docs`` documents is **template text** when ``rigidity >= templates.rigidity``, or when it
stands at one edge of its texts and on one site in that share of its documents, ``SITE_LIFT`` times more than the
site's share of documents (a site's one-word affix: "Download {title} ..."; decided by the driver, which sums the
candidate sites' sizes). A term is dropped when all its words are template words ("hd wallpaper"), or when it
cuts a template word from its bond ("flower hd", whose "hd" belongs with "wallpaper"); a rigid content compound
keeps its whole form ("teddy bear" stays when "teddy" is bound to "bear").

Counting: each map task counts the records of its first ``templates.docs_per_partition`` documents (texts repeated
verbatim, up to numbers and dates, once; one copy per series), cut by term partition of the word
(``labels.vocab.term_bucket``); reduce task ``j`` sums term partition ``j`` over every map task and decides its
words exactly; the driver joins the (small) lists; the df pass drops the terms. No process holds more than one term
partition's counts, and nothing depends on the engine or the reduce-partition count.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

SITE_LIFT = 2.0  # a site affix is this many times more concentrated on its site than the site's share of documents
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


EDGES = ("<^", ">$")  # a word bound to the start or the end of its text


def template_words(counts: Mapping[str, int], min_docs: float, rigidity: float) -> tuple[dict, dict]:
    """Template words of one term partition's merged records, and its site-affix candidates.

    Returns ``(found, candidates)``: ``found`` maps ``word -> [docs, rigidity, bond]`` (``bond`` the dominant
    neighbour record: ``"<left"``, ``">right"`` or ``"=left right"``) for every word in at least ``min_docs``
    documents whose rigidity reaches ``rigidity``; text edges and sites do not count there. ``candidates`` maps
    ``word -> [docs, edge share, edge bond, site, site share]`` for the other such words that stand at one edge of
    their text (``"<^"``: first, ``">$"``: last) and on one site in at least ``rigidity`` of their documents: a
    one-word affix of a site ("Download {title}"), kept or not by the driver once it knows the site's size
    (``site_affixes``). Ties break by the record's text (deterministic).
    """
    docs: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    edge: dict[str, tuple[int, str]] = {}
    site: dict[str, tuple[int, str]] = {}
    for rec, n in counts.items():
        tab = rec.find("\t")
        if tab < 0:
            docs[rec] = n
            continue
        word, side = rec[:tab], rec[tab + 1 :]
        table = site if side[0] == "@" else edge if side in EDGES else best
        cur = table.get(word)
        if cur is None or n > cur[0] or (n == cur[0] and side < cur[1]):
            table[word] = (n, side)
    found, candidates = {}, {}
    for word in sorted(docs):
        n = docs[word]
        if n < min_docs:
            continue
        top, side = best.get(word, (0, ""))
        if top / n >= rigidity:
            found[word] = [n, round(top / n, 4), side]
            continue
        e, s = edge.get(word), site.get(word)
        if e is not None and s is not None and e[0] / n >= rigidity and s[0] / n >= rigidity:
            candidates[word] = [n, round(e[0] / n, 4), e[1], s[1][1:], round(s[0] / n, 4)]
    return found, candidates


def site_affixes(candidates: Mapping[str, list], site_docs: Mapping[str, int], docs: int, lift: float) -> dict:
    """The candidates (``template_words``) whose site holds them ``lift`` times more often than its share of the
    documents says: ``word -> [docs, edge share, edge bond]``. A word that starts (or ends) most texts of one site
    and is ``lift`` times concentrated there is that site's affix; a title word of a one-site corpus (lift 1), or one
    spread over sites, is not."""
    out = {}
    for word, (n, e_share, bond, s, s_share) in sorted(candidates.items()):
        size = site_docs.get(s, 0)
        if size and s_share / (size / docs) >= lift:
            out[word] = [n, e_share, bond]
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
