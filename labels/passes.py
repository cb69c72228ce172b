"""The per-shard pass functions of the label-mining run (see labels/pipeline.py for the order).

Each function is a pure function of one input partition (or one hash partition of the content keys)
and of files earlier passes wrote; it writes its outputs under ``<work>/<pass>/<id>/`` and its
``stats.json`` last (labels/store.py). The same functions run in the driver, in a local process pool
and in Ray workers (labels/engine.py); their arguments are plain JSON-able values.

Work layout:

- ``map/p<i>/units.jsonl``: the readable units of input partition ``i``, grouped by hash partition of
  their content key (``stats.json`` holds the byte offsets of each group), each with its canonical
  signals and eligible terms grouped by signal mask (``term_groups``); ``groups.json``: per curation group, the smallest cap ranks.
- ``reduce/r<j>/samples.jsonl``: hash partition ``j`` after the duplicate merge and the curation cap,
  ordered by input partition (``stats.json`` indexes each input partition's byte range), plus
  ``df.jsonl``: document frequency of eligible terms over those samples, one line per term partition
  (byte offsets in ``df_offsets.json``, gathered by the driver into ``df_ranges.bin``: ``write_df_ranges``).
- ``df/t<k>/vocab.json``: term partition ``k``'s exact document frequencies reduced to its share of the
  vocabulary (``df_task``).
- ``count/r<j>/counts.npz``: per candidate-vocabulary term, the samples that keep it after the
  per-image cap, and label co-occurrence (COO) for the PPMI embedder.
- ``write/p<i>/``: the output shards of input partition ``i`` per split and scale bucket (or
  ``samples.jsonl`` in text-only runs); the driver renames them into the dataset folder.

With the work folder on an object store (``output=s3://...``) each task folder holds the task's commit marker
``commit.json`` and its files under an attempt prefix the marker names (labels/store.py ``TaskFiles``); readers
find that prefix through ``task_folders`` (the driver's per-pass ``index.json``, else the markers) and read
byte ranges of the objects, ``store.BATCH`` at a time.
"""

from __future__ import annotations

import bisect
import functools
import gc
import hashlib
import heapq
import json
import operator
import os
import time
from collections import Counter
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

import storage
from labels import inputs, store
from labels.hashing import content_key, hash_unit, scale_bucket, split_of
from labels.images import ImageJob, ImageSettings, Preparer, read_bytes, series_key
from labels.scoring import LIST_SIGNALS, MaskScores, TermScorer, cluster_labels, select_group_labels
from labels.sources import InputError, Partition, check_unchanged, iter_partition
from labels.sources.base import sniff_raster
from labels.store import (
    BATCH,
    STATS,
    TaskFiles,
    committed_folders,
    dumps_line,
    read_json,
    read_jsons,
    read_lines,
    read_range,
    read_ranges,
    records,
    write_json_atomic,
    write_lines_atomic,
)
from labels.templates import (
    MIN_EVIDENCE,
    SERIES_COUNTER,
    is_template_term,
    records_by_partition,
    series_scaffold,
    template_words,
    without_words,
)
from labels.text import TermExtractor
from labels.vocab import by_df, split_by_term, top_terms
from storage import StorageError

_CONTEXTS: dict[str, dict] = {}


class MapUnit(NamedTuple):
    """One line of ``map/p<i>/units.jsonl`` (stored as a JSON list in this field order)."""

    seq: int  # position in the input partition
    key: str  # content key
    source: str
    uid: str
    path: str | None
    offset: int
    size: int
    ext: str
    signals: dict  # signal type -> texts
    terms: dict  # eligible terms by signal mask (term_groups)
    groups: list  # curation groups
    series: str | None  # perceptual hash of near-identical re-saves (labels.images.series_key), or None
    site: str | None


class Sample(NamedTuple):
    """One line of ``reduce/r<j>/samples.jsonl``: a sample after the duplicate merge and the caps."""

    part: int  # input partition of its first unit
    seq: int
    key: str
    source: str
    uids: list
    path: str | None
    offset: int
    size: int
    ext: str
    text: dict
    terms: dict
    site: str | None


# ---------------------------------------------------------------------------------------- helpers
def bucket_of(key: str, partitions: int) -> int:
    """Hash partition of a content key: its first 32 bits scaled to ``partitions``."""
    return (int(key[:8], 16) * partitions) >> 32


def cap_rank(key: str) -> float:
    """The rank a curation cap keeps by (the ``cap`` smallest per group stay): a hash of the key."""
    return hash_unit("cap:" + key)


def merge_signals(groups: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """Union of several units' signals: per type (sorted), distinct texts in order of first appearance."""
    if len(groups) == 1:  # the map pass's case: one unit
        return {name: list(dict.fromkeys(texts)) for name, texts in sorted(groups[0].items()) if texts}
    merged: dict[str, dict[str, None]] = {}
    for signals in groups:
        for name, texts in signals.items():
            bucket = merged.setdefault(name, {})
            for t in texts:
                bucket[t] = None
    return {name: list(texts) for name, texts in sorted(merged.items()) if texts}


def text_for_json(text: dict[str, list[str]]) -> dict:
    """A sample's source text as stored: keywords/category as lists, other signals as one string."""
    return {k: (list(v) if k in LIST_SIGNALS else "\n".join(v)) for k, v in text.items()}


def dumps(obj) -> bytes:
    """Canonical JSON bytes of a sample's ``json`` entry (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sample_groups(
    source: str, signals: dict[str, list[str]], group_by: list[str], site: str | None = None
) -> list[str]:
    """Curation groups of a sample: ``signal=value`` for each configured signal (``source`` is the
    source name, ``site`` the unit's site when it has one), every value of it."""
    out = []
    for g in group_by:
        values = [source] if g == "source" else ([site] if site else []) if g == "site" else signals.get(g, [])
        out.extend(f"{g}={v}" for v in values)
    return sorted(set(out))


def term_groups(
    scorer: TermScorer,
    signals: dict[str, list[str]],
    min_score: float,
    contexts: set[str] | None = None,
    seen: set[str] | None = None,
) -> dict[str, str]:
    """An image's eligible terms (score >= ``min_score``) in the work files' form: grouped by the mask of signal types
    that hold them, ``{"<mask>": "term\\tterm..."}`` (masks ascending, terms in order of first appearance).

    Terms never hold a tab (they are whitespace-split words joined by spaces), and a score is a function of the mask
    (``TermScorer.mask_score``): JSON-encoding a float per term was the largest share of the work files' cost.
    With ``contexts``, the context records of texts not in ``seen`` are added to it (``TermScorer.term_masks``).
    """
    by_mask: dict[int, list[str]] = {}
    for term, mask in scorer.term_masks(signals, contexts, seen).items():
        terms = by_mask.get(mask)
        if terms is None:
            if scorer.mask_score(mask) < min_score:
                continue
            terms = by_mask[mask] = []
        terms.append(term)
    return {str(m): "\t".join(ts) for m, ts in sorted(by_mask.items())}


def group_terms(groups: dict[str, str]) -> list[str]:
    """The terms of a ``term_groups`` record."""
    return [t for ts in groups.values() for t in ts.split("\t")]


def write_df(path: str, df: Counter, df_all: Counter | None, buckets: int) -> list[int]:
    """A reduce partition's document frequencies cut by term partition (``labels.vocab.term_bucket``): line ``j`` is
    ``[terms, counts, all_terms, all_counts]`` of term partition ``j`` (terms newline-joined; the ``all_`` pair, the
    counts before the curation cap, only when the cap dropped samples, else null). Returns the lines' byte offsets.

    Flat arrays, not term -> count objects: sorting and encoding objects of ~10^5 keys cost the reduce pass more than
    its merge. Terms never hold a newline (they are whitespace-split words joined by single spaces).
    """
    parts = split_by_term(df, buckets)
    parts_all = split_by_term(df_all, buckets) if df_all is not None else [None] * buckets
    offsets, lines = [0], []
    for d, d_all in zip(parts, parts_all):
        rec = ["\n".join(d), list(d.values()), None, None]
        if d_all is not None:
            rec[2:] = "\n".join(d_all), list(d_all.values())
        lines.append(dumps_line(rec))
        offsets.append(offsets[-1] + len(lines[-1]))
    write_lines_atomic(path, lines)
    return offsets


def parse_df(data: bytes) -> tuple[dict[str, int], dict[str, int]]:
    """``(df, df_all)`` of one term partition of a reduce partition's ``df.jsonl`` (its line, see ``write_df``)."""
    (terms, counts, all_terms, all_counts) = next(records(data))

    def table(joined: str, values: list[int]) -> dict[str, int]:
        return dict(zip(joined.split("\n"), values)) if values else {}

    df = table(terms, counts)
    return df, (table(all_terms, all_counts) if all_counts is not None else df)


def build_scorer(cfg: dict) -> TermScorer:
    """The term extractor + scorer a config (plain dict) describes."""
    t = cfg["text"]
    extractor = TermExtractor(
        max_words=t["max_words"],
        min_word_len=t["min_word_len"],
        drop_numeric=t["drop_numeric"],
        fold_plurals=t["fold_plurals"],
        extra_stopwords=list(t["extra_stopwords"]),
        stop_terms=list(t["stop_terms"]),
        boilerplate=list(t["boilerplate"]),
    )
    s = cfg["signals"]
    return TermScorer(extractor, dict(s["weights"]), list(s["exclude"]), s["combine"])


def _ctx(cfg: dict, name: str):
    """A per-process object built once per config, on first use: ``scorer`` (the term scorer and its caches) or
    ``preparer`` (image settings). Lazily, so that passes without text work never build the extractor."""
    key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        _CONTEXTS.clear()
        ctx = _CONTEXTS[key] = {}
    obj = ctx.get(name)
    if obj is None:
        if name == "scorer":
            obj = build_scorer(cfg)
        else:
            im = cfg["image"]
            obj = Preparer(
                ImageSettings(
                    im["short_side"], im["quality"], im["max_aspect"], im["render_timeout_s"], im["max_svg_bytes"]
                )
            )
        ctx[name] = obj
    return obj


def _without_gc(task):
    """Run a pass function with the cyclic garbage collector paused (its state restored after).

    The passes allocate millions of small acyclic objects (decoded JSON lines, term lists) that reference counting
    frees; the cyclic collector's generation scans over them were a third of the map/reduce parse time, measured.
    """

    @functools.wraps(task)
    def run(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return task(*args, **kwargs)
        finally:
            store.TaskFiles.close_all()  # a failed task's node-local staging folder goes too
            if enabled:
                gc.enable()

    return run


def _rss_mb() -> float:
    """Peak resident memory of this worker process so far, in MB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def task_dir(work: str, kind: str, i: int) -> str:
    return os.path.join(work, kind, f"{'p' if kind in ('map', 'write') else 'r'}{i:06d}")


def done_path(work: str, kind: str, i: int) -> str:
    """The task's commit marker: ``stats.json`` in its folder on local disk, ``commit.json`` on an object store."""
    return store.done_path(task_dir(work, kind, i))


def task_folder(work: str, kind: str, i: int) -> str:
    """Where a complete task's files are (remote: the attempt prefix its marker names; labels/store.py)."""
    return task_folders(work, kind, [i])[0]


DF_RANGES = "df_ranges.bin"  # the driver's table of every df.jsonl's term-partition byte ranges (write_df_ranges)
INDEX = "index.json"  # remote: a finished pass's attempt prefix per task, written by the driver (write_index)


def task_folders(work: str, kind: str, ids) -> list[str]:
    """``task_folder`` of each task. Remote: from the pass's index (one read) when the driver wrote it, else from
    the tasks' commit markers (read concurrently)."""
    dirs = [task_dir(work, kind, i) for i in ids]
    if dirs and store.is_remote(work):
        try:
            index = read_json(os.path.join(work, kind, INDEX))
        except FileNotFoundError:
            index = {}
        if all(os.path.basename(d) in index for d in dirs):
            return [os.path.join(d, index[os.path.basename(d)]) for d in dirs]
    return committed_folders(dirs)


def write_index(work: str, kind: str, markers: list[str]) -> None:
    """Remote work files: after a pass, record each task's attempt prefix (from its commit marker) in one object, so
    that each task of a later pass reads one object instead of a marker per task it reads from. Markers never change
    once created, so the index of a pass stays true for as long as the work prefix lives."""
    if not markers or not store.is_remote(markers[0]):
        return
    dirs = [os.path.dirname(m) for m in markers]
    index = {}
    for lo in range(0, len(dirs), BATCH):
        chunk = dirs[lo : lo + BATCH]
        index.update(zip(map(os.path.basename, chunk), map(os.path.basename, committed_folders(chunk))))
    write_json_atomic(os.path.join(work, kind, INDEX), index)


def read_stats(work: str, kind: str, i: int) -> dict:
    """A complete task's stats record."""
    return read_json(os.path.join(task_folder(work, kind, i), STATS))


def iter_files(work: str, kind: str, ids, name: str):
    """``(id, record)`` of the JSON file ``name`` of each task ``ids``, in order, ``store.BATCH`` tasks at a time."""
    ids = list(ids)
    for lo in range(0, len(ids), BATCH):
        chunk = ids[lo : lo + BATCH]
        yield from zip(chunk, read_jsons([os.path.join(f, name) for f in task_folders(work, kind, chunk)]))


def iter_stats(work: str, kind: str, ids):
    """``(ids, folders, stats records)`` of the tasks ``ids``, ``store.BATCH`` tasks at a time (remote: each batch's
    markers, then its records, read concurrently), so that a reader of every task's record holds one batch."""
    ids = list(ids)
    for lo in range(0, len(ids), BATCH):
        chunk = ids[lo : lo + BATCH]
        folders = task_folders(work, kind, chunk)
        yield chunk, folders, list(read_jsons([os.path.join(f, STATS) for f in folders]))


# ---------------------------------------------------------------------------------------- pass 1: map
@_without_gc
def map_task(cfg: dict, part: dict, work: str) -> None:
    """Read one input partition: hash each image, score its text, route units to hash partitions.

    Writes ``units.jsonl`` (``MapUnit`` lines ordered by hash partition), ``contexts.jsonl`` (the context records of
    the partition's first ``templates.docs_per_partition`` documents with text, cut by term partition,
    labels/templates.py; near-identical re-saves of one series counted once), ``groups.json`` and ``stats.json`` (read
    count, skips by reason, hash-partition and context byte offsets, fingerprint, boilerplate hits, and the input tars
    that could not be read to their end under ``run.on_bad_input=skip``: ``bad_inputs``).

    A unit's hash partition follows its series key when it has one (so a series meets in one reduce task, which caps
    it), else its content key; byte copies share both, so duplicates still meet.
    """
    t0 = time.perf_counter()
    p = Partition(**part)
    out = TaskFiles(task_dir(work, "map", p.index)).open()
    src = cfg["sources"][p.source]
    text_only = cfg["run"]["text_only"]
    parts_r = cfg["run"]["reduce_partitions"]
    min_score = float(cfg["vocab"]["min_score"])
    group_by = list(cfg["curation"]["group_by"]) if cfg["curation"]["max_per_group"] > 0 else []
    cap = int(cfg["curation"]["max_per_group"])
    series_on = int(cfg["curation"]["max_per_series"]) > 0 and not text_only
    templates_on = bool(cfg["templates"]["enabled"])
    docs_per_partition = int(cfg["templates"]["docs_per_partition"])
    scorer = _ctx(cfg, "scorer")
    scorer.extractor.boilerplate_hits = Counter()
    buckets: list[list[bytes]] = [[] for _ in range(parts_r)]
    groups: dict[str, dict[str, float]] = {}
    skipped: Counter[str] = Counter()
    contexts: Counter[str] = Counter()
    series_seen: set[str] = set()
    texts_seen: set = set()  # a text repeated verbatim counts once per partition: no slot, no template
    site_docs: Counter[str] = Counter()  # sampled documents per site (else source): a site affix's lift
    context_docs = 0
    fp = hashlib.sha256()
    read = 0
    seq = 0
    bad_inputs = [] if cfg["run"]["on_bad_input"] == "skip" else None  # None: a damaged tar fails the task
    source = SimpleNamespace(**src)
    check_unchanged(source, p)

    for unit in iter_partition(source, p, read_images=not text_only, bad_inputs=bad_inputs):
        read += 1
        key = None
        reason = unit.skip
        if reason is None:
            data = unit.data
            if data is None and not text_only:
                try:
                    data = read_bytes(unit.path, unit.offset, unit.size)
                except StorageError:
                    raise  # the store kept failing: not a missing image (the task fails; a rerun redoes it)
                except (OSError, TypeError):
                    reason = "missing_image"
            if reason is None and data is not None and not text_only and unit.ext != "svg":
                reason = sniff_raster(data)
            if reason is None:
                # Text-only runs never touch images: the key then hashes the unit's id.
                key = content_key(data if data is not None else f"{unit.source}:{unit.uid}".encode())
        signals = merge_signals([unit.signals])
        if reason is not None:
            fp.update(dumps_line([unit.source, unit.uid, reason, signals]))
            skipped[reason] += 1
            continue
        series = series_key(data) if series_on and unit.ext != "svg" and data is not None else None
        sampled = templates_on and context_docs < docs_per_partition and (series is None or series not in series_seen)
        doc_contexts: set[str] | None = set() if sampled else None
        scores = term_groups(scorer, signals, min_score, doc_contexts, texts_seen) if signals else {}
        if doc_contexts is not None and scores:
            if series is not None:
                series_seen.add(series)
            context_docs += 1
            origin = unit.site or unit.source
            site_docs[origin] += 1
            contexts.update(doc_contexts)
            at = "\t@" + origin
            contexts.update([r + at for r in doc_contexts if "\t" not in r])
        gs = sample_groups(unit.source, signals, group_by, unit.site) if group_by else []
        if gs:
            rank = cap_rank(key)
            for g in gs:
                d = groups.setdefault(g, {})
                d[key] = rank
                if len(d) > 2 * (cap + 1):
                    groups[g] = dict(sorted(d.items(), key=lambda kv: (kv[1], kv[0]))[: cap + 1])
        # A MapUnit, encoded as the list of its fields (the reduce pass reads it back with MapUnit._make).
        line = [seq, key, unit.source, unit.uid, unit.path, unit.offset, unit.size, unit.ext, signals, scores, gs]
        line += [series, unit.site]
        encoded = dumps_line(line)
        fp.update(encoded)  # the fingerprint covers every unit's locator, key, signals and scores
        route = hashlib.sha1(b"series:" + series.encode()).hexdigest() if series is not None else key
        buckets[bucket_of(route, parts_r)].append(encoded)
        seq += 1
    check_unchanged(source, p)  # not rewritten while it was read
    bad = [b._asdict() for b in bad_inputs or ()]
    for b in bad:
        fp.update(dumps_line(["bad_input", b["input"], b["reason"], b["error"], b["samples_kept"]]))
    offsets = [0]
    for b in buckets:
        offsets.append(offsets[-1] + sum(len(x) for x in b))
    write_lines_atomic(out.path("units.jsonl"), (x for b in buckets for x in b))
    ctx_offsets, ctx_lines = [0], []
    for table in records_by_partition(contexts, parts_r):
        ctx_lines.append(dumps_line(["\n".join(table), list(table.values())]))
        ctx_offsets.append(ctx_offsets[-1] + len(ctx_lines[-1]))
    write_lines_atomic(out.path("contexts.jsonl"), ctx_lines)
    kept = {g: sorted(d.items(), key=lambda kv: (kv[1], kv[0]))[: cap + 1] for g, d in sorted(groups.items())}
    write_json_atomic(out.path("groups.json"), kept)
    out.commit(
        {
            "partition": p.name,
            "index": p.index,
            "read": read,
            "units": seq,
            "skipped": dict(sorted(skipped.items())),
            "offsets": offsets,
            "context_offsets": ctx_offsets,
            "context_docs": context_docs,
            "context_sites": dict(sorted(site_docs.items())),
            "fingerprint": fp.hexdigest(),
            "boilerplate": dict(sorted(scorer.extractor.boilerplate_hits.items())),
            "bad_inputs": bad,
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": _rss_mb(),
        },
    )


# ---------------------------------------------------------------------------------------- pass 2: reduce
@_without_gc
def reduce_task(cfg: dict, r: int, num_parts: int, work: str, context_docs: int = 0) -> None:
    """Merge duplicates of hash partition ``r`` across every input partition, cap series and curation groups,
    count document frequencies (``df.jsonl``, cut by term partition for the df pass), and decide the template words
    of term partition ``r`` from every map task's context records (``templates.json``, labels/templates.py).

    A key's units merge into its first unit (input order): their texts join, the extra units are
    ``duplicate_merged``; no text at all is ``no_text``; a series (units sharing a perceptual hash) keeps its
    ``curation.max_per_series`` smallest cap ranks, the others are ``series_cap``; a sample ranked past a group's
    cap is ``group_cap``. Skips are attributed to the input partition of the unit they drop. ``context_docs`` is the
    number of documents the map tasks counted contexts of (the denominator of ``templates.min_share``).
    """
    t0 = time.perf_counter()
    out = TaskFiles(task_dir(work, "reduce", r)).open()
    min_score = float(cfg["vocab"]["min_score"])
    max_series = int(cfg["curation"]["max_per_series"])
    caps = read_json(os.path.join(work, "caps.json"))
    scorer = _ctx(cfg, "scorer")
    by_key: dict[str, list[tuple[int, MapUnit]]] = {}
    contexts: Counter[str] = Counter()
    for ps, folders, sts in iter_stats(work, "map", range(num_parts)):  # BATCH map tasks at a time
        units = read_ranges(
            [os.path.join(f, "units.jsonl") for f in folders],
            [st["offsets"][r] for st in sts],
            [st["offsets"][r + 1] for st in sts],
        )
        ctx = read_ranges(
            [os.path.join(f, "contexts.jsonl") for f in folders],
            [st["context_offsets"][r] for st in sts],
            [st["context_offsets"][r + 1] for st in sts],
        )
        for p, data, ctx_data in zip(ps, units, ctx):
            for line in records(data):
                unit = MapUnit._make(line)
                by_key.setdefault(unit.key, []).append((p, unit))
            if ctx_data:
                recs, counts = next(records(ctx_data))
                if counts:
                    contexts.update(dict(zip(recs.split("\n"), counts)))
    skipped: dict[int, Counter] = {}
    capped: Counter[str] = Counter()
    df_capped: Counter[str] = Counter()  # terms of the samples the caps drop: df + df_capped = df before the caps
    df: Counter[str] = Counter()
    merged: list[tuple[Sample, list[str], str | None]] = []  # (sample, curation groups, series key)
    for key, group in by_key.items():
        group.sort(key=lambda x: (x[0], x[1].seq))
        p0, first = group[0]
        if len(group) > 1:
            for p, _ in group[1:]:
                skipped.setdefault(p, Counter())["duplicate_merged"] += 1
            text = merge_signals([u.signals for _, u in group])
            terms = term_groups(scorer, text, min_score) if text else {}
            gs = sorted({x for _, u in group for x in u.groups})
        else:
            text, terms, gs = first.signals, first.terms, first.groups
        if not text:
            skipped.setdefault(p0, Counter())["no_text"] += 1
            continue
        uids = [u.uid for _, u in group]
        sample = Sample(
            p0,
            first.seq,
            key,
            first.source,
            uids,
            first.path,
            first.offset,
            first.size,
            first.ext,
            text,
            terms,
            first.site,
        )
        merged.append((sample, gs, first.series))
    scaffold: dict[str, list[str]] = {}  # series key -> its own caption words (labels/templates.py series_scaffold)
    if max_series > 0:
        series: dict[str, list[tuple[float, str]]] = {}
        series_texts: dict[str, list[list[str]]] = {}
        for sample, _, sk in merged:
            if sk is not None:
                series.setdefault(sk, []).append((cap_rank(sample.key), sample.key))
                series_texts.setdefault(sk, []).append([t for texts in sample.text.values() for t in texts])
        over = {k for members in series.values() if len(members) > max_series for _, k in sorted(members)[max_series:]}
        for sk, texts in series_texts.items():
            if len(texts) >= SERIES_COUNTER:
                words = series_scaffold(texts, scorer.extractor)
                if words:
                    scaffold[sk] = words
    else:
        over = set()
    scaffold_dropped: Counter[str] = Counter()  # scaffold word -> kept copies it was taken from
    samples: list[Sample] = []
    labelable = 0
    for sample, gs, sk in merged:
        if sk in scaffold and sample.key not in over:
            terms = without_words(sample.terms, scaffold[sk])
            if terms != sample.terms:
                held = {w for t in group_terms(sample.terms) for w in t.split(" ")}
                scaffold_dropped.update(w for w in scaffold[sk] if w in held)
                sample = sample._replace(terms=terms)
        terms_list = group_terms(sample.terms)
        if sample.key in over:
            skipped.setdefault(sample.part, Counter())["series_cap"] += 1
            df_capped.update(terms_list)
            continue
        if gs:
            rank = cap_rank(sample.key)
            g_over = next((g for g in gs if g in caps and rank > caps[g]), None)
            if g_over is not None:
                skipped.setdefault(sample.part, Counter())["group_cap"] += 1
                capped[g_over] += 1
                df_capped.update(terms_list)
                continue
        df.update(terms_list)
        labelable += bool(terms_list)
        samples.append(sample)
    samples.sort(key=lambda s: (s.part, s.seq))
    index_parts, index_offsets, pos, lines = [], [], 0, []
    for s in samples:
        line = dumps_line(list(s))
        if not index_parts or index_parts[-1] != s.part:
            index_parts.append(s.part)
            index_offsets.append(pos)
        lines.append(line)
        pos += len(line)
    index_offsets.append(pos)
    write_lines_atomic(out.path("samples.jsonl"), lines)
    df_offsets = write_df(
        out.path("df.jsonl"), df, df + df_capped if df_capped else None, int(cfg["run"]["reduce_partitions"])
    )
    # Its own file, not stats.json: every df task reads one per reduce partition, and stats.json holds the
    # per-input-partition index (P entries).
    write_json_atomic(out.path("df_offsets.json"), df_offsets)
    tc = cfg["templates"]
    evidence = max(MIN_EVIDENCE, min(float(tc["min_docs"]), float(tc["min_docs_share"]) * context_docs))
    min_docs = max(evidence, float(tc["min_share"]) * context_docs)
    found, candidates = template_words(contexts, min_docs, float(tc["rigidity"])) if tc["enabled"] else ({}, {})
    write_json_atomic(out.path("templates.json"), {"found": found, "site_candidates": candidates})
    out.commit(
        {
            "samples": len(samples),
            "labelable": labelable,
            "index": {"parts": index_parts, "offsets": index_offsets},
            "skipped_by_part": {str(p): dict(sorted(c.items())) for p, c in sorted(skipped.items())},
            "group_cap": dict(sorted(capped.items())),
            "series_scaffold": dict(sorted(scaffold_dropped.items())),
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": _rss_mb(),
        },
    )


def write_df_ranges(work: str, num_reduce: int) -> None:
    """After the reduce pass: ``df_ranges.bin``, int64 little-endian ``[term partition j][reduce partition r] ->
    (start, end)`` of term partition j in reduce partition r's ``df.jsonl``, so that df task j reads its row in one
    read (R x R x 16 bytes: 16 MB at R = 1,024)."""
    table = np.zeros((num_reduce, num_reduce, 2), dtype="<i8")
    for r, offsets in iter_files(work, "reduce", range(num_reduce), "df_offsets.json"):
        o = np.asarray(offsets, dtype="<i8")
        table[:, r, 0], table[:, r, 1] = o[:-1], o[1:]
    storage.write_bytes(os.path.join(work, DF_RANGES), table.tobytes())


# ---------------------------------------------------------------------------------------- pass 2b: df
HEAD_TERMS = 25  # the most frequent terms before the curation cap, for the report


@_without_gc
def df_task(cfg: dict, j: int, num_reduce: int, work: str, num_samples: int) -> None:
    """Exact document frequencies of term partition ``j`` (summed over every reduce partition) and its share of the
    vocabulary (``labels.vocab.top_terms``: the ``vocab.max_terms`` best terms within ``min_df`` and the
    ``max_df_share`` ceiling, the terms over the ceiling), template terms left out (``templates.json``, written by
    the driver from the reduce pass: labels/templates.py), plus its ``HEAD_TERMS`` most frequent terms before the
    caps and its ``HEAD_TERMS`` most frequent template terms. Writes ``vocab.json``, then ``stats.json``.

    ``num_samples`` is the number of samples that can carry a label (an eligible term, after duplicates and caps):
    the ceiling's denominator. Per term partition, so that no process holds every term of the corpus and no count is
    approximate.
    """
    t0 = time.perf_counter()
    out = TaskFiles(task_dir(work, "df", j)).open()
    v = cfg["vocab"]
    templates = read_json(os.path.join(work, "templates.json"))
    df: Counter[str] = Counter()
    capped: Counter[str] = Counter()  # in samples the caps dropped: df + capped = df before the caps
    # Row j of the driver's range table: where term partition j lies in each reduce partition's df.jsonl (one read,
    # not one df_offsets.json per reduce partition: R x R small reads in all were most of this pass on a store).
    row = read_range(os.path.join(work, DF_RANGES), j * num_reduce * 16, (j + 1) * num_reduce * 16)
    ranges = np.frombuffer(row, dtype="<i8").reshape(num_reduce, 2).tolist()
    for lo in range(0, num_reduce, BATCH):  # BATCH reduce tasks at a time
        folders = task_folders(work, "reduce", range(lo, min(num_reduce, lo + BATCH)))
        for data in read_ranges(
            [os.path.join(f, "df.jsonl") for f in folders],
            [a for a, _ in ranges[lo : lo + BATCH]],
            [b for _, b in ranges[lo : lo + BATCH]],
        ):
            part, part_all = parse_df(data)
            df.update(part)
            if part_all is not part:
                capped.update({t: c - part.get(t, 0) for t, c in part_all.items() if c > part.get(t, 0)})
    template: dict[str, int] = {}
    if templates:
        template = {t: c for t, c in df.items() if is_template_term(t, templates)}
        content = {t: c for t, c in df.items() if t not in template}
    else:
        content = df
    rec = top_terms(content, int(v["min_df"]), int(v["max_terms"]), float(v["max_df_share"]) * num_samples)
    rec["candidate_terms"] = len(df)
    rec["head"] = [list(p) for p in heapq.nsmallest(HEAD_TERMS, (df + capped if capped else df).items(), key=by_df)]
    rec["template_terms"] = len(template)
    rec["template_head"] = [list(p) for p in heapq.nsmallest(HEAD_TERMS, template.items(), key=by_df)]
    write_json_atomic(out.path("vocab.json"), rec)
    out.commit({"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": _rss_mb()})


# ---------------------------------------------------------------------------------------- pass 3: count
@_without_gc
def count_task(cfg: dict, r: int, work: str, cooccurrence: bool) -> None:
    """Per candidate term, the samples of hash partition ``r`` that keep it after the per-image cap;
    with ``cooccurrence``, label co-occurrence counts too (``counts.npz``: ``used``, ``rows``, ``cols``,
    ``vals``)."""
    from labels.cluster import CooccurrenceCounter

    t0 = time.perf_counter()
    out = TaskFiles(task_dir(work, "count", r)).open()
    vocab = read_json(os.path.join(work, "vocab_df.json"))["terms"]
    index = {t: i for i, t in enumerate(vocab)}
    max_labels = int(cfg["vocab"]["max_labels_per_image"])
    mask_score = MaskScores(cfg["signals"]["weights"], cfg["signals"]["combine"])
    kept: list[int] = []  # every sample's kept label ids, concatenated
    counter = CooccurrenceCounter(len(vocab)) if cooccurrence else None
    for line in read_lines(os.path.join(task_folders(work, "reduce", [r])[0], "samples.jsonl")):
        ids = [i for i, _ in select_group_labels(Sample._make(line).terms, index, mask_score, max_labels)]
        kept += ids
        if counter is not None and ids:
            ids.sort()
            counter.add(ids)
    used = np.bincount(np.asarray(kept, dtype=np.int64), minlength=len(vocab)).astype(np.int64)
    rows, cols, vals = counter.triplets() if counter is not None else (np.zeros(0, np.int64),) * 3
    tmp = out.path("counts.tmp.npz")
    np.savez(tmp, used=used, rows=rows, cols=cols, vals=vals)
    os.replace(tmp, out.path("counts.npz"))
    out.commit({"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": _rss_mb()})


# ---------------------------------------------------------------------------------------- pass 4: write
ORIGINS_KEPT = 5  # origins (site or source) kept per label per write task, for the quality report


def unlabelled_reason(terms: list[str], templates: dict, over_ceiling: set[str]) -> str:
    """Why a sample has no label: ``no_terms`` (its text held no eligible term: stopwords, numbers, dates, cut
    boilerplate, or scores under vocab.min_score), ``template_only`` (only template terms), ``over_ceiling`` (only
    template terms and terms over vocab.max_df_share), else ``rare_terms`` (its terms are under vocab.min_df or past
    vocab.max_terms)."""
    if not terms:
        return "no_terms"
    rest = [t for t in terms if not (templates and is_template_term(t, templates))]
    if not rest:
        return "template_only"
    if all(t in over_ceiling for t in rest):
        return "over_ceiling"
    return "rare_terms"


def _partition_samples(work: str, p: int, num_reduce: int):
    """Samples of input partition ``p`` from every hash partition, in input order (k-way merge)."""
    streams = []
    for _, folders, sts in iter_stats(work, "reduce", range(num_reduce)):  # BATCH reduce tasks at a time
        paths, starts, ends = [], [], []
        for folder, st in zip(folders, sts):
            idx = st["index"]
            parts = idx["parts"]
            lo = bisect.bisect_left(parts, p)  # parts is sorted
            if lo < len(parts) and parts[lo] == p:
                paths.append(os.path.join(folder, "samples.jsonl"))
                starts.append(idx["offsets"][lo])
                ends.append(idx["offsets"][lo + 1])
        streams += [records(data) for data in read_ranges(paths, starts, ends)]
    return heapq.merge(*(map(Sample._make, st) for st in streams), key=operator.attrgetter("seq"))


@_without_gc
def write_task(cfg: dict, part: dict, work: str, num_reduce: int) -> None:
    """Label the samples of one input partition and write its output shards (per split and scale
    bucket) under ``write/p<i>/``; image failures are skipped by reason; ``stats.json`` holds the
    shard list with exact counts, label counts and per-image histograms."""
    from labels.shards import ShardSet

    t0 = time.perf_counter()
    p = Partition(**part)
    out = TaskFiles(task_dir(work, "write", p.index)).open()
    lab = read_json(os.path.join(work, "labels.json"))
    vocab, term_cluster = lab["vocab"], lab["term_cluster"]
    index = {t: i for i, t in enumerate(vocab)}
    v = cfg["vocab"]
    max_labels, keep_unlabeled = int(v["max_labels_per_image"]), v["keep_unlabeled"]
    mask_score = MaskScores(cfg["signals"]["weights"], cfg["signals"]["combine"])
    val_fraction = float(cfg["split"]["val_fraction"])
    scales = [float(x) for x in cfg["split"]["scales"]]
    text_only = cfg["run"]["text_only"]
    preparer = _ctx(cfg, "preparer")
    skipped: Counter[str] = Counter()
    raw_counts: Counter[int] = Counter()
    clustered_counts: Counter[int] = Counter()
    per_image = {"raw": Counter(), "clustered": Counter()}
    split_counts: Counter[str] = Counter()
    bucket_counts: Counter[int] = Counter()
    written = labelled = 0
    shards = None if text_only else ShardSet(out.dir, scales, cfg["shards"]["maxcount"], cfg["shards"]["maxsize"])
    text_lines = []
    rounded = functools.lru_cache(maxsize=None)(lambda x: round(x, 4))  # a handful of distinct scores
    why_unlabelled: Counter[str] = Counter()
    ids_by_origin: dict[str, list[int]] = {}  # site (else source) -> raw label ids of its written samples
    origin_written: Counter[str] = Counter()  # site (else source) -> written samples (the quality report)
    clustered_ids: list[int] = []
    templates = read_json(os.path.join(work, "templates.json"))
    over_ceiling = {d["term"] for d in read_json(os.path.join(work, "vocab_df.json"))["df_ceiling"]["dropped"]}
    source = SimpleNamespace(**cfg["sources"][p.source])
    check_unchanged(source, p)  # the partition the map pass read, not a rewrite of it
    # A remote input tar is downloaded once for the task and its images read from the copy (labels.inputs).
    with inputs.local_copies([] if text_only else p.files) as local:
        for s in _partition_samples(work, p.index, num_reduce):
            key, text, terms = s.key, s.text, s.terms
            raw = select_group_labels(terms, index, mask_score, max_labels)
            if not raw:
                why_unlabelled[unlabelled_reason(group_terms(terms), templates, over_ceiling)] += 1
                if not keep_unlabeled:
                    skipped["no_label"] += 1
                    continue
            clustered = cluster_labels(raw, term_cluster)
            split = split_of(key, val_fraction)
            bucket = scale_bucket(key, scales) if split == "train" else -1
            meta = {
                "key": key,
                "source": s.source,
                "labels": {"raw": [i for i, _ in raw], "clustered": [c for c, _ in clustered]},
                "scores": {"raw": [rounded(x) for _, x in raw], "clustered": [rounded(x) for _, x in clustered]},
                "terms": [vocab[i] for i, _ in raw],
                "text": text_for_json(text),
                "uids": s.uids,
            }
            if text_only:
                meta.update(split=split, scale_bucket=scales[bucket] if bucket >= 0 else None)
                text_lines.append(dumps_line(meta))
            else:
                _, jpeg, reason = preparer(ImageJob(s.seq, key, local.get(s.path, s.path), s.offset, s.size, s.ext))
                if reason == "input_changed":
                    raise InputError(f"input changed during the run (bytes no longer match): {s.path}")
                if reason is not None:
                    skipped[reason] += 1
                    continue
                shards.write({"__key__": key, "jpg": jpeg, "json": dumps(meta)}, split, bucket)
            written += 1
            labelled += bool(raw)
            ids = ids_by_origin.get(s.site or s.source)
            if ids is None:
                ids = ids_by_origin[s.site or s.source] = []
            origin_written[s.site or s.source] += 1
            ids += [i for i, _ in raw]  # counted once at the end (C-level counting, not a Counter update per label)
            clustered_ids += [c for c, _ in clustered]
            per_image["raw"][len(raw)] += 1
            per_image["clustered"][len(clustered)] += 1
            split_counts[split] += 1
            if bucket >= 0:
                bucket_counts[bucket] += 1
    check_unchanged(source, p)
    if text_only:
        write_lines_atomic(out.path("samples.jsonl"), text_lines)
        splits = None
    else:
        splits = shards.close()
    origins: dict[int, Counter] = {}  # label -> where its images come from
    for origin, ids in ids_by_origin.items():
        for i, n in Counter(ids).items():
            raw_counts[i] += n
            origins.setdefault(i, Counter())[origin] = n
    clustered_counts.update(clustered_ids)
    out.commit(
        {
            "partition": p.name,
            "written": written,
            "labelled": labelled,
            "skipped": dict(sorted(skipped.items())),
            "raw_counts": sorted(raw_counts.items()),
            "clustered_counts": sorted(clustered_counts.items()),
            "per_image": {k: sorted(h.items()) for k, h in per_image.items()},
            "split_counts": dict(sorted(split_counts.items())),
            "bucket_counts": sorted(bucket_counts.items()),
            "unlabelled": dict(sorted(why_unlabelled.items())),
            # per label, its ORIGINS_KEPT largest origins (ties by name): the quality report's "top sources"
            "origins": [
                [i, sorted(o.items(), key=lambda kv: (-kv[1], kv[0]))[:ORIGINS_KEPT]]
                for i, o in sorted(origins.items())
            ],
            "origin_written": sorted(origin_written.items()),
            "splits": splits,
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": _rss_mb(),
        },
    )
