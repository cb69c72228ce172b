"""The label-mining run: sources -> weak labels (raw and clustered) -> shards, manifest and report.

Passes, each streaming (memory does not grow with the corpus; the work tables live in SQLite):

1. Read: every unit of every source, in a fixed order. Units with a skip reason known at read time
   are counted; the rest are hashed (key = SHA-1 of the image bytes) and stored with their signals.
2. Merge: units grouped by key. Extra units of a key are merged into its first one
   (``duplicate_merged``: their texts, e.g. every category folder, join the sample's text); a sample
   with no text at all is ``no_text``. Term scores are computed and document frequencies counted.
3. Vocabulary: terms with document frequency >= min_df, capped at max_terms; then a counting pass
   drops the terms that fewer than min_df images keep after the per-image cap. Long-tail clustering
   of the kept terms gives the ``clustered`` space.
4. Write: samples in input order; each gets its raw labels (top terms above the score threshold)
   and clustered labels; an image with none is ``no_label`` (unless ``vocab.keep_unlabeled``); images
   are rendered/decoded by a process pool (ordered ``imap`` over bounded windows), failures counted
   by reason; samples go to the val shards or the train shards of their nested scale bucket.

Counts add up by construction and are checked: ``read == written + sum(skipped.values())``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from labels.cluster import (
    Clusters,
    CooccurrenceCounter,
    build_clusters,
    cluster_embeddings,
    embed_ppmi,
    embed_sentence,
    identity_clusters,
    protect_head,
    resolve_embedder,
)
from labels.hashing import content_key, scale_bucket, split_of
from labels.images import ImageJob, ImageSettings, Preparer, read_bytes
from labels.report import write_report
from labels.scoring import TermScorer, cluster_labels, eligible_terms, select_labels
from labels.shards import FORMAT_VERSION, MANIFEST, ShardSet, remove_dataset, write_json
from labels.sources import InputError, iter_source
from labels.sources.base import sniff_raster
from labels.store import SampleRow, WorkStore
from labels.text import TermExtractor
from labels.vocab import TermCounter, build_vocabulary
from tracking.textio import json_line

log = logging.getLogger(__name__)

# Signal types stored as lists in a sample's "text"; the others are single strings.
LIST_SIGNALS = ("keywords", "category")
DEFAULT_THRESHOLD = {"sentence": 0.2, "ppmi": 0.4}
WINDOW_PER_WORKER = 256  # images in flight per worker in the writing pass


@dataclass
class MiningResult:
    """What a run produced: the dataset folder, its manifest (None for text-only runs) and stats."""

    output: str
    manifest_path: str | None
    counts: dict
    stats: dict
    vocab_sizes: dict = field(default_factory=dict)


def build_scorer(cfg: DictConfig) -> TermScorer:
    """The term extractor + scorer a config describes."""
    extractor = TermExtractor(
        max_words=cfg.text.max_words,
        min_word_len=cfg.text.min_word_len,
        drop_numeric=cfg.text.drop_numeric,
        fold_plurals=cfg.text.fold_plurals,
        extra_stopwords=list(cfg.text.extra_stopwords),
        stop_terms=list(cfg.text.stop_terms),
    )
    return TermScorer(extractor, dict(cfg.signals.weights), list(cfg.signals.exclude), cfg.signals.combine)


def merge_signals(groups: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """Union of several units' signals: per type (sorted), distinct texts in order of first appearance.

    Applied to one unit it gives that unit's canonical signals (the form stored in the first pass).
    """
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


def label_json(
    s: SampleRow, raw: list[tuple[int, float]], clustered: list[tuple[int, float]], vocab: list[str]
) -> dict:
    """The ``json`` entry of a written sample (docs/ARCHITECTURE.md)."""
    return {
        "key": s.key,
        "source": s.source,
        "labels": {"raw": [i for i, _ in raw], "clustered": [c for c, _ in clustered]},
        "scores": {"raw": [round(x, 4) for _, x in raw], "clustered": [round(x, 4) for _, x in clustered]},
        "terms": [vocab[i] for i, _ in raw],
        "text": text_for_json(s.text),
        "uids": s.uids,
    }


def dumps(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Run:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.out = cfg.output
        self.text_only = cfg.run.text_only
        self.progress = cfg.run.progress
        self.scorer = build_scorer(cfg)
        # Plain copies of the values the per-sample loops read (DictConfig access is slow).
        self.min_score = float(cfg.vocab.min_score)
        self.max_labels = int(cfg.vocab.max_labels_per_image)
        self.min_df = int(cfg.vocab.min_df)
        self.keep_unlabeled = bool(cfg.vocab.keep_unlabeled)
        self.val_fraction = float(cfg.split.val_fraction)
        self.scales = [float(x) for x in cfg.split.scales]
        self.needs_cooccurrence = bool(cfg.cluster.enabled) and resolve_embedder(cfg.cluster.embedder) == "ppmi"
        self.cooc = None
        self.read = 0
        self.skipped: Counter[str] = Counter()
        self.timings: dict[str, float] = {}
        self.fingerprint = hashlib.sha256()

    def bar(self, **kw) -> tqdm:
        return tqdm(disable=not self.progress, dynamic_ncols=True, mininterval=0.5, **kw)

    # ------------------------------------------------------------------------------ pass 1
    def read_units(self, store: WorkStore) -> None:
        seq = 0
        with self.bar(desc="read", unit=" items") as bar:
            for src in self.cfg.sources:
                for unit in iter_source(src, read_images=not self.text_only):
                    self.read += 1
                    bar.update()
                    key = None
                    reason = unit.skip
                    if reason is None:
                        data = unit.data
                        if data is None and not self.text_only:
                            try:
                                data = read_bytes(unit.path, unit.offset, unit.size)
                            except (OSError, TypeError):
                                reason = "missing_image"
                        if reason is None and data is not None and not self.text_only and unit.ext != "svg":
                            reason = sniff_raster(data)
                        if reason is None:
                            # Text-only runs never touch images: the key then hashes the unit's id.
                            key = content_key(data if data is not None else f"{unit.source}:{unit.uid}".encode())
                    signals = merge_signals([unit.signals])
                    signals_json = json.dumps(signals, ensure_ascii=False)
                    self.fingerprint.update(f"{unit.source}\0{unit.uid}\0{key}\0{reason}\0{signals_json}\n".encode())
                    if reason is not None:
                        self.skipped[reason] += 1
                        continue
                    store.add_unit(
                        seq, key, unit.source, unit.uid, unit.path, unit.offset, unit.size, unit.ext, signals
                    )
                    seq += 1
        store.finish_units()

    # ------------------------------------------------------------------------------ pass 2
    def merge(self, store: WorkStore) -> TermCounter:
        df = TermCounter(self.cfg.vocab.max_candidate_terms)
        min_score = self.min_score
        with self.bar(desc="merge + score", unit=" items") as bar:
            for key, group in store.units_by_key():
                bar.update(len(group))
                if len(group) > 1:
                    self.skipped["duplicate_merged"] += len(group) - 1
                if len(group) == 1:  # stored canonical: reuse the stored blob as it is
                    text_blob = group[0][7]
                    text = store.load(text_blob)
                else:
                    text = merge_signals([store.load(g[7]) for g in group])
                    text_blob = None
                if not text:
                    self.skipped["no_text"] += 1
                    continue
                terms = eligible_terms(self.scorer.score(text), min_score)
                df.update(terms)
                seq, source, _, path, offset, size, ext, _ = group[0]
                store.add_sample(
                    SampleRow(seq, key, source, [g[2] for g in group], path, offset, size, ext, text, terms), text_blob
                )
        store.finish_samples()
        return df

    # ------------------------------------------------------------------------------ clustering
    def cluster(self, store: WorkStore, vocab: list[str], df: list[int]) -> tuple[Clusters, dict]:
        cc = self.cfg.cluster
        info = {
            "enabled": bool(cc.enabled),
            "method": cc.method,
            "embedder": None,
            "distance_threshold": None,
            "head_fraction": cc.head_fraction,
        }
        if not cc.enabled or len(vocab) < 2:
            return identity_clusters(vocab), info
        embedder = resolve_embedder(cc.embedder)
        emb = None
        if embedder == "sentence":
            try:
                emb = embed_sentence(vocab, batch_size=cc.batch_size)
            except Exception as err:  # a broken optional model install: fall back when allowed
                if cc.embedder != "auto":
                    raise
                log.warning("sentence model failed (%s); using the PPMI co-occurrence embedding", err)
                embedder = "ppmi"
        if embedder == "ppmi":
            if self.cooc is None:  # the sentence model failed after the counting pass
                self.needs_cooccurrence = True
                self.prune_to_used(store, vocab)
            emb = embed_ppmi(self.cooc, dim=cc.svd_dim, seed=cc.seed)
        threshold = cc.distance_threshold if cc.distance_threshold is not None else DEFAULT_THRESHOLD[embedder]
        assign = cluster_embeddings(emb, cc.method, threshold, cc.n_clusters, cc.seed)
        # Vocabulary ids are in descending frequency: the first terms are the head.
        is_head = np.arange(len(vocab)) < int(round(cc.head_fraction * len(vocab)))
        assign = protect_head(assign, emb, is_head)
        info.update(embedder=embedder, distance_threshold=threshold if cc.method == "agglomerative" else None)
        return build_clusters(vocab, df, assign), info

    def prune_to_used(self, store: WorkStore, vocab: list[str]) -> list[str]:
        """Drop vocabulary terms that fewer than ``min_df`` images keep after the per-image cap.

        Removing a term can only move the remaining terms up in an image's ranking, so one pass
        guarantees that every kept term labels at least ``min_df`` images. The same pass counts label
        co-occurrence for the PPMI embedder (restricted to the kept terms afterwards).
        """
        index = {t: i for i, t in enumerate(vocab)}
        used = [0] * len(vocab)
        counter = CooccurrenceCounter(len(vocab)) if self.needs_cooccurrence else None
        min_score, max_labels = self.min_score, self.max_labels
        for terms in self.bar_iter(store.sample_terms(), "label counts", store.num_samples()):
            raw = select_labels(terms, index, min_score, max_labels)
            for i, _ in raw:
                used[i] += 1
            if counter is not None and raw:
                counter.add(sorted(i for i, _ in raw))
        keep = [i for i, n in enumerate(used) if n >= self.min_df]
        if counter is not None:
            self.cooc = counter.result()[keep][:, keep]
        return [vocab[i] for i in keep]

    def bar_iter(self, it, desc: str, total: int | None = None) -> Iterator:
        with self.bar(desc=desc, total=total, unit=" samples") as bar:
            for x in it:
                yield x
                bar.update()

    # ------------------------------------------------------------------------------ pass 4
    def labelled_samples(self, store: WorkStore, vocab: list[str], clusters: Clusters) -> Iterator[tuple]:
        """``(sample, raw, clustered, split, bucket)`` for every sample that will be written."""
        index = {t: i for i, t in enumerate(vocab)}
        scales, val_fraction, min_score, max_labels = self.scales, self.val_fraction, self.min_score, self.max_labels
        term_cluster = clusters.term_cluster
        for s in store.samples():
            raw = select_labels(s.terms, index, min_score, max_labels)
            if not raw and not self.keep_unlabeled:
                self.skipped["no_label"] += 1
                continue
            clustered = cluster_labels(raw, term_cluster)
            split = split_of(s.key, val_fraction)
            bucket = scale_bucket(s.key, scales) if split == "train" else -1
            yield s, raw, clustered, split, bucket

    def write(self, store: WorkStore, vocab: list[str], clusters: Clusters) -> dict:
        stats = _WriteStats(len(vocab), len(clusters.names))
        items = self.labelled_samples(store, vocab, clusters)
        total = store.num_samples()
        if self.text_only:
            path = os.path.join(self.out, "samples.jsonl")
            with open(path, "wb") as f, self.bar(desc="label", total=total, unit=" samples") as bar:
                for s, raw, clustered, split, bucket in items:
                    meta = label_json(s, raw, clustered, vocab)
                    meta.update(split=split, scale_bucket=self.scales[bucket] if bucket >= 0 else None)
                    f.write(json_line(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"))
                    stats.add(raw, clustered, split, bucket)
                    bar.update()
            return {"splits": stats.splits(self.scales), "stats": stats}
        shards = ShardSet(self.out, self.scales, self.cfg.shards.maxcount, self.cfg.shards.maxsize)
        im = self.cfg.image
        preparer = Preparer(
            ImageSettings(im.short_side, im.quality, im.max_aspect, im.render_timeout_s, im.max_svg_bytes)
        )
        workers = self.cfg.run.workers
        # spawn: the parent may hold torch/tokenizer threads (sentence model); forking those is unsafe.
        pool = mp.get_context("spawn").Pool(workers) if workers > 0 else None
        window = max(64, WINDOW_PER_WORKER * max(1, workers))
        try:
            with self.bar(desc="render + write", total=total, unit=" images") as bar:
                while True:
                    batch = []
                    for item in items:
                        batch.append(item)
                        if len(batch) >= window:
                            break
                    if not batch:
                        break
                    jobs = [ImageJob(s.seq, s.key, s.path, s.offset, s.size, s.ext) for s, *_ in batch]
                    results = (
                        pool.imap(preparer, jobs, chunksize=self.cfg.run.chunksize) if pool else map(preparer, jobs)
                    )
                    for (s, raw, clustered, split, bucket), (seq, jpeg, reason) in zip(batch, results):
                        assert seq == s.seq  # ordered imap
                        bar.update()
                        if reason == "input_changed":
                            raise InputError(f"input changed during the run (bytes no longer match): {s.path}")
                        if reason is not None:
                            self.skipped[reason] += 1
                            continue
                        meta = label_json(s, raw, clustered, vocab)
                        shards.write({"__key__": s.key, "jpg": jpeg, "json": dumps(meta)}, split, bucket)
                        stats.add(raw, clustered, split, bucket)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            splits = shards.close()
        return {"splits": splits, "stats": stats}


class _WriteStats:
    """Label counts and per-image histograms over the written samples (bounded: one int per label)."""

    def __init__(self, num_raw: int, num_clustered: int) -> None:
        self.raw_counts = [0] * num_raw
        self.clustered_counts = [0] * num_clustered
        self.per_image = {"raw": Counter(), "clustered": Counter()}
        self.written = 0
        self.labelled = 0
        self.split_counts: Counter[str] = Counter()
        self.bucket_counts: Counter[int] = Counter()

    def add(self, raw, clustered, split: str, bucket: int) -> None:
        self.written += 1
        self.labelled += bool(raw)
        for i, _ in raw:
            self.raw_counts[i] += 1
        for c, _ in clustered:
            self.clustered_counts[c] += 1
        self.per_image["raw"][len(raw)] += 1
        self.per_image["clustered"][len(clustered)] += 1
        self.split_counts[split] += 1
        if bucket >= 0:
            self.bucket_counts[bucket] += 1

    def splits(self, scales: list[float]) -> dict:
        """Split sizes for a text-only run (no shards)."""
        by_scale, running = {}, 0
        for i, s in enumerate(scales):
            running += self.bucket_counts[i]
            by_scale[repr(s)] = running
        return {
            "train": {"num_samples": self.split_counts["train"], "num_samples_by_scale": by_scale, "shards": []},
            "val": {"num_samples": self.split_counts["val"], "shards": []},
        }


def check_inputs(cfg: DictConfig) -> None:
    """Fail at once, before any work, when a configured input path does not exist."""
    for i, src in enumerate(cfg.sources):
        path = src.path
        if src.type == "img2dataset" and any(ch in path for ch in "*?["):
            continue  # a glob: checked when listed
        if not os.path.exists(path):
            raise InputError(f"sources[{i}] ({src.type}): input path not found: {path}")


def run(cfg: DictConfig) -> MiningResult:
    """Mine weak labels from the configured sources and write the dataset (see the module docstring).

    Args:
        cfg: a validated config from ``configs.labels_schema.load_labels_config``.

    Returns:
        The output folder, manifest path, counts and report stats.

    Raises:
        labels.sources.InputError: a missing input path, a malformed manifest (file and line), or
            input files that changed between passes.
    """
    t_start = time.perf_counter()
    check_inputs(cfg)
    out = cfg.output
    os.makedirs(out, exist_ok=True)
    work_dir = os.path.join(out, "_work")
    r = _Run(cfg)
    store = WorkStore(work_dir)
    try:
        t = time.perf_counter()
        r.read_units(store)
        r.timings["read_s"] = time.perf_counter() - t

        t = time.perf_counter()
        df = r.merge(store)
        r.timings["merge_score_s"] = time.perf_counter() - t

        t = time.perf_counter()
        df_vocab = build_vocabulary(df.counts, cfg.vocab.min_df, cfg.vocab.max_terms)
        vocab = r.prune_to_used(store, df_vocab)
        if not vocab:
            raise InputError(
                f"no term labels vocab.min_df={cfg.vocab.min_df} images with score >= vocab.min_score="
                f"{cfg.vocab.min_score} ({store.num_samples()} samples with text): nothing to train on; lower them"
            )
        vocab_df = [df.counts[t] for t in vocab]
        candidate_terms, df_floor, df_prunes = len(df), df.floor, df.prunes
        del df
        r.timings["vocab_s"] = time.perf_counter() - t

        t = time.perf_counter()
        clusters, cluster_info = r.cluster(store, vocab, vocab_df)
        r.timings["cluster_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if cfg.run.text_only:
            remove_dataset(out)
        written = r.write(store, vocab, clusters)
        r.timings["write_s"] = time.perf_counter() - t
    finally:
        store.close(remove=not cfg.run.keep_work)
        if not cfg.run.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)

    ws: _WriteStats = written["stats"]
    counts = {"read": r.read, "written": ws.written, "skipped": dict(sorted(r.skipped.items()))}
    if r.read != ws.written + sum(r.skipped.values()):
        raise AssertionError(f"count identity broken: {counts}")
    fingerprint = "sha256:" + r.fingerprint.hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "label_spaces": {
            "raw": {
                "num_classes": len(vocab),
                "names": vocab,
                "counts": ws.raw_counts,
                "df": vocab_df,
                "cluster": clusters.term_cluster,
            },
            "clustered": {
                "num_classes": len(clusters.names),
                "names": clusters.names,
                "members": clusters.members,
                "counts": ws.clustered_counts,
            },
        },
        "scales": list(cfg.split.scales),
        "splits": written["splits"],
        "image": {"format": "jpg", "short_side": cfg.image.short_side},
        "clustering": cluster_info,
        "pipeline_config": OmegaConf.to_container(cfg, resolve=True),
        "input_fingerprint": fingerprint,
        "counts": counts,
    }
    if cfg.run.text_only:
        manifest["text_only"] = True
    manifest_path = os.path.join(out, MANIFEST)
    write_json(manifest_path, manifest)

    t = time.perf_counter()
    considered = ws.written + r.skipped.get("no_label", 0)
    stats = {
        "name": cfg.name,
        "counts": counts,
        "splits": {k: {kk: vv for kk, vv in v.items() if kk != "shards"} for k, v in written["splits"].items()},
        "num_shards": {k: len(v["shards"]) for k, v in written["splits"].items()},
        "coverage": {
            # Share of images with >= 1 label among those that reached labelling (text present, image ok).
            "labelled_share": round(ws.labelled / considered, 4) if considered else 0.0,
            "labelled": ws.labelled,
            "considered": considered,
        },
        "vocab": {
            "candidate_terms": candidate_terms,
            "df_prune_floor": df_floor,
            "df_prunes": df_prunes,
            "after_min_df_max_terms": len(df_vocab),
            "raw": len(vocab),
            "clustered": len(clusters.names),
            "multi_term_clusters": sum(1 for m in clusters.members if len(m) > 1),
        },
        "clustering": cluster_info,
        "input_fingerprint": fingerprint,
    }
    stats = write_report(
        os.path.join(out, "report"),
        stats,
        vocab,
        ws.raw_counts,
        clusters.names,
        ws.clustered_counts,
        clusters.members,
        ws.per_image,
    )
    r.timings["report_s"] = time.perf_counter() - t
    r.timings["total_s"] = time.perf_counter() - t_start
    stats["timings"] = {k: round(v, 3) for k, v in r.timings.items()}
    stats["peak_rss_mb"] = _peak_rss_mb()
    write_json(os.path.join(out, "report", "stats.json"), stats)
    return MiningResult(
        output=out,
        manifest_path=None if cfg.run.text_only else manifest_path,
        counts=counts,
        stats=stats,
        vocab_sizes={"raw": len(vocab), "clustered": len(clusters.names)},
    )
