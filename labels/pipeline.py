"""The label-mining run: sources -> weak labels (raw and clustered) -> shards, manifest and report.

The run is a sequence of passes over partitions (labels/passes.py), each task a pure function of one
partition that writes its result and its stats record last, run by a local process pool or Ray
(labels/engine.py, ``run.engine``); the driver only lists partitions, merges small records and
writes the manifest:

1. map (per input partition: one img2dataset tar, ``run.partition_size`` files or manifest rows):
   read, hash image content, normalize text, score candidate terms, route units to
   ``run.reduce_partitions`` hash partitions of their series key (near-identical re-saves), else content key;
   per-group cap ranks; the context records of the template statistic (labels/templates.py).
2. curation caps (driver): per group (``curation.group_by``) the rank of its ``max_per_group``-th sample.
3. reduce (per hash partition): duplicates merge across input partitions (texts joined), the series cap
   (``series_cap``) and the group cap (``group_cap``) drop samples past them, document frequencies are counted;
   the template words of the task's term partition are decided. No process ever holds every key.
4. vocabulary (driver, df pass per term partition): template words joined; DF summed; template terms left out;
   terms in more than ``vocab.max_df_share`` of the samples that can carry a label dropped (the
   document-frequency ceiling); min_df / max_terms.
5. count (per hash partition): samples keeping each term after the per-image cap (terms fewer than
   min_df images keep are dropped) and label co-occurrence for the PPMI embedder.
6. clustering of the kept terms (driver).
7. write (per input partition): label each sample, split and scale bucket by key hash, render/re-encode
   the image, write that partition's shards; the driver renames them into the dataset folder in
   partition order (``train-b<i>-%06d.tar``, ``val-%06d.tar``) and writes ``manifest.json`` last.

Kill the run at any point and rerun the same command: completed tasks are skipped (their stats files
exist), the output is byte-identical to an uninterrupted run. Counts add up and are checked, per
partition and in total: ``read == written + sum(skipped.values())``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy import sparse

import storage
from configs.labels_schema import AUTO_REDUCE_PARTITIONS
from labels import inputs, passes
from labels.cluster import (
    Clusters,
    CooccurrenceCounter,
    build_clusters,
    cluster_embeddings,
    effective_method,
    embed_ppmi,
    embed_sentence,
    identity_clusters,
    protect_head,
    resolve_embedder,
)
from labels.engine import Engine, PassFailed, Task
from labels.lifetime import ObjectLock, OutputBusy, OutputLock
from labels.passes import build_scorer, merge_signals, text_for_json  # noqa: F401 - re-exported
from labels.report import write_quality_report, write_report
from labels.shards import FORMAT_VERSION, MANIFEST, dataset_files, remove_dataset, write_json
from labels.sources import InputError, Partition, list_partitions
from labels.store import STATS, is_remote, read_json, read_range, read_ranges, upload_folder, write_json_atomic
from labels.templates import SITE_LIFT, site_affixes
from labels.vocab import merge_top

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = {"sentence": 0.2, "ppmi": 0.4}
DENSE_COOC_CELLS = 1 << 24  # the driver sums co-occurrence densely up to this many cells (128 MB of int64)
# Config keys that choose how the run executes, not what it computes: excluded from the work-dir
# fingerprint and the manifest, so engines and worker counts give byte-identical outputs.
EXECUTION_KEYS = ("engine", "workers", "progress", "keep_work", "max_retries")


@dataclass
class MiningResult:
    """What a run produced: the dataset folder, its manifest (None for text-only runs) and stats."""

    output: str
    manifest_path: str | None
    counts: dict
    stats: dict
    vocab_sizes: dict = field(default_factory=dict)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def check_inputs(cfg: DictConfig) -> None:
    """Fail at once, before any work, when a configured input path (local or a URL) does not exist."""
    for i, src in enumerate(cfg.sources):
        path = src.path
        if inputs.is_remote(path) and src.type != "img2dataset":
            raise InputError(f"sources[{i}] ({src.type}): {path}: only img2dataset tars can be read from a URL")
        if src.type == "img2dataset" and (inputs.has_glob(path) or len(inputs.expand(path)) > 1):
            continue  # a glob or a brace range: each tar is checked when listed
        if not inputs.exists(path):
            raise InputError(f"sources[{i}] ({src.type}): input path not found: {path}")


def computed_config(cfg: DictConfig) -> dict:
    """The config as the tasks see it (plain dict), without the execution-only ``run`` keys."""
    d = OmegaConf.to_container(cfg, resolve=True)
    d["run"] = {k: v for k, v in d["run"].items() if k not in EXECUTION_KEYS}
    return d


# The layout of the passes' work files: a work folder written by code of another format is started afresh, never
# read (2: write tasks record written samples per origin for the quality report; 3: inputs.json, the inputs' versions).
WORK_FORMAT = 3
INPUT_VERSIONS = "inputs.json"  # in the work folder: each partition's input version when its work files were made


def _prepare_work(work: str, cfg_dict: dict, parts: list[Partition]) -> str:
    """Reuse ``work`` only when it was made by this config over this partition list; else start fresh. Returns the
    folder the passes use: ``work`` itself on local disk; on an object store ``work/<fingerprint>``, a prefix of its
    own per config and input listing, so that a task of an earlier run with another config, still running after its
    driver died, can never commit into this run's work files (the prefixes of other configs are deleted). Work read
    from an input that has changed since is dropped too (``_drop_work_of_changed_inputs``)."""
    listing = [{k: v for k, v in p.to_dict().items() if k != "version"} for p in parts]
    fingerprint = hashlib.sha256(
        json.dumps({"config": cfg_dict, "partitions": listing, "work_format": WORK_FORMAT}, sort_keys=True).encode()
    ).hexdigest()
    if is_remote(work):
        own = os.path.join(work, fingerprint[:24])
        for prefix in storage.listdir(work):
            if str(prefix).rstrip("/") != own:
                log.info("removing work files of another config or input listing: %s", prefix)
                storage.remove(str(prefix), recursive=True)
        _drop_work_of_changed_inputs(own, parts)
        return own
    marker = os.path.join(work, "run.json")
    if os.path.exists(marker):
        try:
            if read_json(marker).get("fingerprint") == fingerprint:
                _drop_work_of_changed_inputs(work, parts)
                return work
        except (OSError, ValueError):
            pass
        log.info("work folder %s was made by another config or input listing: starting afresh", work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    write_json_atomic(marker, {"fingerprint": fingerprint})
    _drop_work_of_changed_inputs(work, parts)
    return work


def _drop_work_of_changed_inputs(work: str, parts: list[Partition]) -> None:
    """Keep no work file computed from an input that has changed since (a tar downloaded again after a partial
    download, a folder re-synced): the map output of each such partition, and every pass after the map, which read
    all of them. The other partitions' map outputs stay, so a rerun after one tar is repaired maps that tar only; a
    changed input whose map never completed (it failed) costs nothing."""
    path = os.path.join(work, INPUT_VERSIONS)
    try:
        before = read_json(path)
    except FileNotFoundError:
        before = {}
    changed = [p for p in parts if str(p.index) in before and before[str(p.index)] != p.version]
    stale = [p for p in changed if storage.exists(passes.done_path(work, "map", p.index))]
    if stale:
        log.warning(
            "%d input(s) changed since the work files in %s were made; their map output and every later pass are "
            "redone: %s",
            len(stale),
            work,
            ", ".join(p.name for p in stale[:5]) + (" ..." if len(stale) > 5 else ""),
        )
        # The later passes go first, the changed inputs' map outputs last: a rerun killed in between still finds
        # those map outputs, so it still sees them as stale and drops whatever was left of the later passes.
        keep = {passes.task_dir(work, "map", p.index) for p in parts}
        for entry in storage.listdir(work):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name == "map":
                for task in storage.listdir(entry):
                    if str(task).rstrip("/") not in keep:  # the pass's index (remote) and anything not a task
                        storage.remove(str(task), recursive=True)
            elif name not in ("run.json", INPUT_VERSIONS):
                storage.remove(str(entry), recursive=True)
        for p in stale:
            storage.remove(passes.task_dir(work, "map", p.index), recursive=True)
    write_json_atomic(path, {str(p.index): p.version for p in parts})


def _append_file(src, dst) -> None:
    """Append open file ``src`` to open file ``dst``: in the kernel (``sendfile``) where it can, else by chunks."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(dst.fileno(), src.fileno(), offset, size - offset)
            if sent == 0:
                break
            offset += sent
    except OSError:  # a file system without sendfile between regular files: the rest by chunks
        pass
    if offset < size:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 22)


class _LabelTotals:
    """Label counts summed over the write pass's stats records, which are kept without them (``add``)."""

    def __init__(self) -> None:
        self.raw: Counter[int] = Counter()
        self.clustered: Counter[int] = Counter()
        self.per_image = {"raw": Counter(), "clustered": Counter()}
        self.labelled = 0
        self.unlabelled: Counter[str] = Counter()
        self.origins: dict[int, Counter] = {}
        self.origin_written: Counter[str] = Counter()  # written samples per site (else source)

    def add(self, w: dict) -> dict:
        self.unlabelled.update(w.pop("unlabelled"))
        for i, pairs in w.pop("origins"):
            self.origins.setdefault(int(i), Counter()).update(dict(pairs))
        self.origin_written.update(dict(w.pop("origin_written")))
        self.raw.update({int(i): n for i, n in w.pop("raw_counts")})
        self.clustered.update({int(c): n for c, n in w.pop("clustered_counts")})
        for space, hist in w.pop("per_image").items():
            self.per_image[space].update({int(k): n for k, n in hist})
        self.labelled += w["labelled"]
        return w


class _Driver:
    def __init__(self, cfg: DictConfig, fence=None, hold=None) -> None:
        self.cfg = cfg
        self.hold = hold  # the output lock: check() before every pass and before the dataset is written
        self.cfg_dict = computed_config(cfg)
        self.out = cfg.output
        self.work = os.path.join(self.out, "_work")
        self.R = int(cfg.run.reduce_partitions)  # 0 (auto) is resolved by resolve_reduce_partitions once listed
        self.engine = Engine(cfg.run.engine, cfg.run.workers, cfg.run.max_retries, cfg.run.progress, fence)
        self.passes: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.label_totals = _LabelTotals()

    def run_pass(self, name: str, fn, tasks: list[Task]) -> None:
        self.check_hold()
        try:
            st = self.engine.run_pass(name, fn, tasks)
        except PassFailed as err:
            raise InputError(str(err)) from None
        passes.write_index(self.work, name, [t.done_path for t in tasks])
        self.passes[name] = st.to_dict()
        self.timings[f"{name}_s"] = st.wall_s

    def check_hold(self) -> None:
        """Stop (``InputError``) if another run took the output over (an output on an object store: ObjectLock)."""
        if self.hold is not None:
            try:
                self.hold.check()
            except OutputBusy as err:
                raise InputError(str(err)) from None

    def task_totals(self, kind: str, n: int) -> dict:
        """Summed task seconds and the largest worker peak memory of a pass (from its stats records)."""
        seconds, peak = 0.0, 0.0
        for _, rec in passes.iter_files(self.work, kind, range(n), STATS):
            seconds += rec.get("seconds", 0.0)
            peak = max(peak, rec.get("peak_rss_mb", 0.0))
        return {"task_s": round(seconds, 3), "peak_worker_rss_mb": peak}

    # ------------------------------------------------------------------------------ caps
    def caps(self, parts: list[Partition]) -> dict:
        """Per curation group over its cap: the rank of its ``max_per_group``-th sample (samples with a
        larger rank are dropped). Each map task kept its ``cap + 1`` smallest ranks per group, so the
        global ``cap + 1`` smallest are among them."""
        cap = int(self.cfg.curation.max_per_group)
        caps: dict[str, float] = {}
        if cap > 0 and len(self.cfg.curation.group_by):
            merged: dict[str, dict[str, float]] = {}
            for _, groups in passes.iter_files(self.work, "map", [p.index for p in parts], "groups.json"):
                for g, pairs in groups.items():
                    merged.setdefault(g, {}).update(pairs)
            for g, d in sorted(merged.items()):
                if len(d) > cap:
                    caps[g] = sorted(d.values())[cap - 1]
        write_json_atomic(os.path.join(self.work, "caps.json"), caps)
        return caps

    def resolve_reduce_partitions(self, num_parts: int) -> None:
        """``run.reduce_partitions=0``: one hash partition per input partition, at most ``AUTO_REDUCE_PARTITIONS``,
        so a reduce task's memory stays flat as the corpus grows; the tasks (and the work fingerprint, and the
        manifest's pipeline config) see the resolved count."""
        if self.R == 0:
            self.R = max(1, min(num_parts, AUTO_REDUCE_PARTITIONS))
        self.cfg_dict["run"]["reduce_partitions"] = self.R

    # ------------------------------------------------------------------------------ templates
    def context_docs(self, parts: list[Partition]) -> int:
        """Documents the map tasks counted contexts of (the denominator of ``templates.min_share``)."""
        return sum(st["context_docs"] for _, st in passes.iter_files(self.work, "map", [p.index for p in parts], STATS))

    def templates(self, parts: list[Partition], context_docs: int) -> dict:
        """Join the reduce pass's template words (one list per term partition, disjoint) and the site affixes among
        its candidates into ``templates.json``. Site sizes are summed from the map stats for the candidates' sites
        only, so the driver never holds a table of every site."""
        found: dict[str, list] = {}
        candidates: dict[str, list] = {}
        for _, rec in passes.iter_files(self.work, "reduce", range(self.R), "templates.json"):
            found.update(rec["found"])
            candidates.update(rec["site_candidates"])
        if candidates:
            sites = {c[3] for c in candidates.values()}
            site_docs: Counter[str] = Counter()
            for _, rec in passes.iter_files(self.work, "map", [p.index for p in parts], STATS):
                st = rec["context_sites"]
                site_docs.update({s: n for s, n in st.items() if s in sites})
            tc = self.cfg.templates
            found.update(
                site_affixes(
                    candidates,
                    site_docs,
                    context_docs,
                    SITE_LIFT,
                    float(tc.min_docs),
                    float(tc.min_docs_share),
                    float(tc.min_site_share),
                )
            )
        found = dict(sorted(found.items()))
        write_json_atomic(os.path.join(self.work, "templates.json"), found)
        return found

    # ------------------------------------------------------------------------------ vocabulary
    def vocabulary(self) -> dict:
        """Merge the df pass's per-term-partition shares into the vocabulary (``max_terms`` pairs held at a time)."""
        v = self.cfg.vocab
        num_samples = labelable = 0
        for _, st in passes.iter_files(self.work, "reduce", range(self.R), STATS):
            num_samples += st["samples"]
            # The ceiling's denominator: samples that can carry a label (an eligible term, after duplicates and caps).
            labelable += st["labelable"]
        self.run_pass(
            "df",
            passes.df_task,
            [
                Task(
                    f"term partition {j}",
                    passes.done_path(self.work, "df", j),
                    (self.cfg_dict, j, self.R, self.work, labelable),
                )
                for j in range(self.R)
            ],
        )
        t = time.perf_counter()
        kept: list = []
        dropped: list = []
        head: list = []
        template_head: list = []
        candidates = template_terms = 0
        for _, rec in passes.iter_files(self.work, "df", range(self.R), "vocab.json"):
            kept = merge_top(kept, rec["kept"], int(v.max_terms))
            dropped = merge_top(dropped, rec["dropped"], None)
            head = merge_top(head, rec["head"], passes.HEAD_TERMS)
            template_head = merge_top(template_head, rec["template_head"], passes.HEAD_TERMS)
            candidates += rec["candidate_terms"]
            template_terms += rec["template_terms"]
        info = {
            "terms": [t for t, _ in kept],
            "df": [c for _, c in kept],
            "num_samples": num_samples,
            "labelable_samples": labelable,
            "candidate_terms": candidates,
            "df_ceiling": {
                "max_df_share": float(v.max_df_share),
                "denominator": labelable,
                "dropped": [{"term": t, "df": c, "share": round(c / max(labelable, 1), 4)} for t, c in dropped],
            },
            "templates": {"terms": template_terms, "head": [[t, c] for t, c in template_head]},
            "head_before_curation": [[t, c] for t, c in head],
        }
        write_json_atomic(os.path.join(self.work, "vocab_df.json"), info)
        self.timings["vocab_s"] = time.perf_counter() - t
        return info

    # ------------------------------------------------------------------------------ clustering
    def labels(self, vinfo: dict, needs_cooc: bool) -> dict:
        terms = vinfo["terms"]
        n = len(terms)
        used = np.zeros(n, dtype=np.int64)
        # Up to DENSE_COOC_CELLS (4,096 terms) the partitions' counts are summed into a dense matrix (a scatter-add
        # each); above, by the sparse counter's buffered merge.
        dense = np.zeros(n * n, dtype=np.int64) if needs_cooc and n * n <= DENSE_COOC_CELLS else None
        counter = CooccurrenceCounter(n) if needs_cooc and dense is None else None
        folders = passes.task_folders(self.work, "count", range(self.R))
        for npz in read_ranges([os.path.join(f, "counts.npz") for f in folders]):
            with np.load(io.BytesIO(npz), allow_pickle=False) as z:
                used += z["used"]
                if dense is not None:
                    # (row, col) pairs of one partition are distinct (CooccurrenceCounter.triplets): += is exact
                    dense[z["rows"] * n + z["cols"]] += z["vals"]
                elif counter is not None:
                    counter.merge(z["rows"], z["cols"], z["vals"])
        keep = [i for i, n in enumerate(used) if n >= self.cfg.vocab.min_df]
        vocab = [terms[i] for i in keep]
        if not vocab:
            raise InputError(
                f"no term labels vocab.min_df={self.cfg.vocab.min_df} images with score >= vocab.min_score="
                f"{self.cfg.vocab.min_score} ({vinfo['num_samples']} samples with text): nothing to train on; lower them"
            )
        vocab_df = [vinfo["df"][i] for i in keep]
        if dense is not None:
            cooc = sparse.csr_matrix(dense.reshape(n, n).astype(np.float64))[keep][:, keep]
        else:
            cooc = counter.result()[keep][:, keep] if counter is not None else None
        clusters, info = self.cluster(vocab, vocab_df, cooc)
        lab = {
            "vocab": vocab,
            "vocab_df": vocab_df,
            "names": clusters.names,
            "members": clusters.members,
            "term_cluster": clusters.term_cluster,
            "clustering": info,
        }
        write_json_atomic(os.path.join(self.work, "labels.json"), lab)
        return lab

    def cluster(self, vocab: list[str], df: list[int], cooc) -> tuple[Clusters, dict]:
        cc = self.cfg.cluster
        info = {
            "enabled": bool(cc.enabled),
            "method": effective_method(cc.method, len(vocab)),
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
                if cc.embedder != "auto" or cooc is None:
                    raise
                log.warning("sentence model failed (%s); using the PPMI co-occurrence embedding", err)
                embedder = "ppmi"
        if embedder == "ppmi":
            emb = embed_ppmi(cooc, dim=cc.svd_dim, seed=cc.seed)
        threshold = cc.distance_threshold if cc.distance_threshold is not None else DEFAULT_THRESHOLD[embedder]
        assign = cluster_embeddings(emb, cc.method, threshold, cc.n_clusters, cc.seed)
        # Vocabulary ids are in descending frequency: the first terms are the head.
        is_head = np.arange(len(vocab)) < int(round(cc.head_fraction * len(vocab)))
        assign = protect_head(assign, emb, is_head)
        info.update(embedder=embedder, distance_threshold=threshold if info["method"] == "agglomerative" else None)
        return build_clusters(vocab, df, assign), info

    # ------------------------------------------------------------------------------ collect
    def collect(self, parts: list[Partition]) -> tuple[dict, list[dict]]:
        """Rename each partition's shards into the dataset folder (global numbering in partition
        order), idempotently, and return the manifest's ``splits`` plus the write stats."""
        scales = [float(x) for x in self.cfg.split.scales]
        indices = [p.index for p in parts]
        wstats = [self.label_totals.add(rec) for _, rec in passes.iter_files(self.work, "write", indices, STATS)]
        write_folders = passes.task_folders(self.work, "write", indices)
        storage.makedirs(self.out)
        manifest_path = os.path.join(self.out, MANIFEST)
        storage.remove(manifest_path)  # no manifest may list shards that are being replaced
        if self.cfg.run.text_only:
            remove_dataset(self.out)
            sources = [os.path.join(f, "samples.jsonl") for f in write_folders]
            if is_remote(self.out):
                with storage.open_atomic(os.path.join(self.out, "samples.jsonl")) as out:
                    for src in sources:  # one partition's file at a time, in partition order
                        out.write(read_range(src))
            else:
                tmp = os.path.join(self.out, "samples.jsonl.tmp")
                with open(tmp, "wb") as out:
                    for src in sources:  # whole files, in partition order (line by line was 3 s per 1M samples)
                        with open(src, "rb") as f:
                            _append_file(f, out)
                os.replace(tmp, os.path.join(self.out, "samples.jsonl"))
            split_counts, bucket_counts = Counter(), Counter()
            for w in wstats:
                split_counts.update(w["split_counts"])
                bucket_counts.update({int(b): n for b, n in w["bucket_counts"]})
            by_scale, running = {}, 0
            for i, s in enumerate(scales):
                running += bucket_counts[i]
                by_scale[repr(s)] = running
            splits = {
                "train": {"num_samples": split_counts["train"], "num_samples_by_scale": by_scale, "shards": []},
                "val": {"num_samples": split_counts["val"], "shards": []},
            }
            return splits, wstats
        plan = []  # (src, dst, entry)
        train_by_bucket: dict[float, list] = {s: [] for s in scales}
        val = []
        for d, w in zip(write_folders, wstats):
            for sh in w["splits"]["train"]["shards"]:
                train_by_bucket[sh["scale_bucket"]].append((os.path.join(d, sh["url"]), sh))
            for sh in w["splits"]["val"]["shards"]:
                val.append((os.path.join(d, sh["url"]), sh))
        train_shards, val_shards, by_scale, running = [], [], {}, 0
        for i, s in enumerate(scales):
            for k, (src, sh) in enumerate(train_by_bucket[s]):
                entry = {"url": f"train-b{i}-{k:06d}.tar", "num_samples": sh["num_samples"], "scale_bucket": s}
                plan.append((src, os.path.join(self.out, entry["url"])))
                train_shards.append(entry)
                running += sh["num_samples"]
            by_scale[repr(s)] = running
        for k, (src, sh) in enumerate(val):
            entry = {"url": f"val-{k:06d}.tar", "num_samples": sh["num_samples"]}
            plan.append((src, os.path.join(self.out, entry["url"])))
            val_shards.append(entry)
        targets = {dst for _, dst in plan}
        for path in dataset_files(self.out):
            if path not in targets:
                storage.remove(path)  # a stale shard of an earlier, different run
        if is_remote(self.out):
            # No rename on an object store: each shard is copied by the store itself (server-side, no bytes through
            # this driver) to its final name; the work files go when the run ends, so a rerun copies again.
            fs, _ = storage.url_to_fs(self.out)
            for src, dst in plan:
                s_in, d_in = fs._strip_protocol(src), fs._strip_protocol(dst)
                storage.retry_call(lambda s_in=s_in, d_in=d_in: fs.copy(s_in, d_in), url=dst, what="copy")
        else:
            for src, dst in plan:
                if os.path.exists(src):
                    os.replace(src, dst)
                elif not os.path.exists(dst):
                    raise InputError(f"shard {src} vanished before it was moved to {dst}: remove {self.work} and rerun")
        splits = {
            "train": {
                "num_samples": sum(s["num_samples"] for s in train_shards),
                "num_samples_by_scale": by_scale,
                "shards": train_shards,
            },
            "val": {"num_samples": sum(s["num_samples"] for s in val_shards), "shards": val_shards},
        }
        return splits, wstats


def run(cfg: DictConfig) -> MiningResult:
    """Mine weak labels from the configured sources and write the dataset (see the module docstring).

    Args:
        cfg: a validated config from ``configs.labels_schema.load_labels_config``.

    Returns:
        The output folder, manifest path, counts and report stats.

    Raises:
        labels.sources.InputError: a missing input path, a malformed manifest (file and line), a
            partition that could not be read (named; the rerun retries it), input files that
            changed between passes, or an output folder another run is writing (naming its pid).
    """
    t_start = time.perf_counter()
    check_inputs(cfg)
    # The driver holds the output folder for its lifetime; its tasks are fenced by it (labels/lifetime.py). On an
    # object store the hold is a lock object with a heartbeat (ObjectLock), checked before each pass and the output.
    lock = ObjectLock(cfg.output) if is_remote(cfg.output) else OutputLock(cfg.output)
    try:
        fence = lock.acquire()
    except OutputBusy as err:
        raise InputError(str(err)) from None
    except OSError as err:  # an output folder that cannot be created or written
        raise InputError(f"cannot write to output {cfg.output}: {err}") from None
    try:
        d = _Driver(cfg, fence, lock)
        try:
            return _run(d, cfg, t_start)
        finally:
            d.engine.close()
    finally:
        lock.release()


def _run(d: _Driver, cfg: DictConfig, t_start: float) -> MiningResult:
    t = time.perf_counter()
    parts = list_partitions(cfg.sources, int(cfg.run.partition_size))
    if not parts:
        raise InputError("the configured sources hold no input")
    storage.makedirs(d.out)
    d.resolve_reduce_partitions(len(parts))
    d.work = _prepare_work(d.work, d.cfg_dict, parts)
    d.timings["list_s"] = time.perf_counter() - t
    work, cd, R = d.work, d.cfg_dict, d.R
    P = len(parts)

    d.run_pass(
        "map",
        passes.map_task,
        [Task(p.name, passes.done_path(work, "map", p.index), (cd, p.to_dict(), work)) for p in parts],
    )
    t = time.perf_counter()
    caps = d.caps(parts)
    d.timings["caps_s"] = time.perf_counter() - t
    context_docs = d.context_docs(parts)
    d.run_pass(
        "reduce",
        passes.reduce_task,
        [
            Task(f"hash partition {r}", passes.done_path(work, "reduce", r), (cd, r, P, work, context_docs))
            for r in range(R)
        ],
    )
    templates = d.templates(parts, context_docs)
    passes.write_df_ranges(work, R)
    vinfo = d.vocabulary()
    needs_cooc = bool(cfg.cluster.enabled) and cfg.cluster.embedder in ("auto", "ppmi")
    d.run_pass(
        "count",
        passes.count_task,
        [Task(f"hash partition {r}", passes.done_path(work, "count", r), (cd, r, work, needs_cooc)) for r in range(R)],
    )
    t = time.perf_counter()
    lab = d.labels(vinfo, needs_cooc)
    d.timings["cluster_s"] = time.perf_counter() - t
    d.run_pass(
        "write",
        passes.write_task,
        [Task(p.name, passes.done_path(work, "write", p.index), (cd, p.to_dict(), work, R)) for p in parts],
    )
    t = time.perf_counter()
    d.check_hold()
    splits, wstats = d.collect(parts)
    d.timings["collect_s"] = time.perf_counter() - t

    # ---------------------------------------------------------------- counts, per partition and in total
    # Stats records are read one at a time and reduced to what the totals need: the driver's memory stays flat in
    # the number of partitions (a map record holds R offsets, a write record the partition's label counts).
    reduce_skips: dict[str, Counter] = {}
    group_cap: Counter[str] = Counter()
    series_scaffold: Counter[str] = Counter()  # a series' own caption word -> kept copies it was dropped from
    for _, rs in passes.iter_files(work, "reduce", range(R), STATS):
        for part, sk in rs["skipped_by_part"].items():
            reduce_skips.setdefault(part, Counter()).update(sk)
        group_cap.update(rs["group_cap"])
        series_scaffold.update(rs["series_scaffold"])
    per_part = []
    fingerprints = hashlib.sha256()
    boilerplate: Counter[str] = Counter()
    bad_inputs: list[dict] = []  # input tars not readable to their end (run.on_bad_input=skip), in input order
    map_stats = passes.iter_files(work, "map", [p.index for p in parts], STATS)
    for p, w, (_, m) in zip(parts, wstats, map_stats):
        fingerprints.update(m["fingerprint"].encode())
        boilerplate.update(m["boilerplate"])
        sk = Counter(m["skipped"])
        sk.update(reduce_skips.get(str(p.index), {}))
        sk.update(w["skipped"])
        entry = {"partition": p.name, "read": m["read"], "written": w["written"], "skipped": dict(sorted(sk.items()))}
        if m.get("bad_inputs"):
            entry["bad_inputs"] = m["bad_inputs"]
            bad_inputs.extend(m["bad_inputs"])
        if entry["read"] != entry["written"] + sum(sk.values()):
            raise AssertionError(f"count identity broken for partition {p.name}: {entry}")
        per_part.append(entry)
    skipped: Counter[str] = Counter()
    for e in per_part:
        skipped.update(e["skipped"])
    counts = {
        "read": sum(e["read"] for e in per_part),
        "written": sum(e["written"] for e in per_part),
        "skipped": dict(sorted(skipped.items())),
    }
    if counts["read"] != counts["written"] + sum(skipped.values()):
        raise AssertionError(f"count identity broken: {counts}")
    if bad_inputs:
        # Whole input files, not samples (their samples before the damage are in read/written/skipped above).
        counts["skipped_inputs"] = dict(sorted(Counter(b["reason"] for b in bad_inputs).items()))
        counts["bad_inputs"] = bad_inputs
        log.warning(
            "%d input tar(s) could not be read to their end and were skipped: %s",
            len(bad_inputs),
            "; ".join(f"{b['input']}: {b['error']}" for b in bad_inputs[:5]),
        )
    fingerprint = "sha256:" + fingerprints.hexdigest()  # = sha256 of the map fingerprints joined, in order

    vocab, names, members = lab["vocab"], lab["names"], lab["members"]
    totals = d.label_totals
    raw_counts = [totals.raw.get(i, 0) for i in range(len(vocab))]
    clustered_counts = [totals.clustered.get(c, 0) for c in range(len(names))]
    per_image, labelled = totals.per_image, totals.labelled

    manifest = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "label_spaces": {
            "raw": {
                "num_classes": len(vocab),
                "names": vocab,
                "counts": raw_counts,
                "df": lab["vocab_df"],
                "cluster": lab["term_cluster"],
            },
            "clustered": {"num_classes": len(names), "names": names, "members": members, "counts": clustered_counts},
        },
        "scales": list(cfg.split.scales),
        "splits": splits,
        "image": {"format": "jpg", "short_side": cfg.image.short_side},
        "clustering": lab["clustering"],
        "pipeline_config": d.cfg_dict,
        "input_fingerprint": fingerprint,
        "counts": counts,
    }
    if cfg.run.text_only:
        manifest["text_only"] = True
    manifest_path = os.path.join(d.out, MANIFEST)
    d.check_hold()
    write_json(manifest_path, manifest)  # last of the dataset: a reader never sees a manifest listing a missing shard

    # ---------------------------------------------------------------- report
    t = time.perf_counter()
    considered = counts["written"] + skipped.get("no_label", 0)
    for name, kind, n in (
        ("map", "map", P),
        ("reduce", "reduce", R),
        ("df", "df", R),
        ("count", "count", R),
        ("write", "write", P),
    ):
        d.passes[name].update(d.task_totals(kind, n))
    stats = {
        "name": cfg.name,
        "counts": counts,
        "splits": {k: {kk: vv for kk, vv in v.items() if kk != "shards"} for k, v in splits.items()},
        "num_shards": {k: len(v["shards"]) for k, v in splits.items()},
        "coverage": {
            # Share of images with >= 1 label among those that reached labelling (text present, image ok).
            "labelled_share": round(labelled / considered, 4) if considered else 0.0,
            "labelled": labelled,
            "considered": considered,
        },
        "vocab": {
            "candidate_terms": vinfo["candidate_terms"],
            "after_min_df_max_terms": len(vinfo["terms"]),
            "raw": len(vocab),
            "clustered": len(names),
            "multi_term_clusters": sum(1 for m in members if len(m) > 1),
        },
        "dropped": {
            "df_ceiling": vinfo["df_ceiling"],
            "boilerplate_phrases": dict(sorted(boilerplate.items(), key=lambda kv: (-kv[1], kv[0]))),
            "templates": {
                "words": templates,  # word -> [documents, rigidity, dominant neighbour]
                "terms": vinfo["templates"]["terms"],
                "head": vinfo["templates"]["head"],
            },
            "series_scaffold": dict(sorted(series_scaffold.items(), key=lambda kv: (-kv[1], kv[0]))),
            "curation": {
                "group_by": list(cfg.curation.group_by),
                "max_per_group": int(cfg.curation.max_per_group),
                "max_per_series": int(cfg.curation.max_per_series),
                "capped_groups": len(caps),
                "dropped_by_group": dict(sorted(group_cap.items(), key=lambda kv: (-kv[1], kv[0]))[:50]),
            },
        },
        "unlabelled": dict(sorted(totals.unlabelled.items())),
        "head_before_curation": vinfo["head_before_curation"],
        "distributed": {
            "engine": cfg.run.engine,
            "workers": d.engine.workers,
            "input_partitions": P,
            "reduce_partitions": R,
            "passes": d.passes,
            "engine_startup_s": round(d.engine.startup_s, 3),
        },
        "clustering": lab["clustering"],
        "input_fingerprint": fingerprint,
    }
    report_url = os.path.join(d.out, "report")
    # On an object store the report is written into a local folder, then uploaded (stats.json last).
    report_dir = tempfile.mkdtemp(prefix="mine_labels-report-") if is_remote(d.out) else report_url
    stats = write_report(report_dir, stats, vocab, raw_counts, names, clustered_counts, members, per_image)
    write_quality_report(report_dir, stats, vocab, raw_counts, totals.origins, totals.origin_written)
    with open(os.path.join(report_dir, "partitions.jsonl"), "w", encoding="ascii") as f:
        for e in per_part:
            f.write(json.dumps(e, ensure_ascii=True, sort_keys=True) + "\n")
    d.timings["report_s"] = time.perf_counter() - t
    d.timings["total_s"] = time.perf_counter() - t_start
    stats["timings"] = {k: round(v, 3) for k, v in d.timings.items()}
    stats["peak_rss_mb"] = _peak_rss_mb()
    write_json(os.path.join(report_dir, "stats.json"), stats)
    if report_dir != report_url:
        try:
            upload_folder(report_dir, report_url, last="stats.json")
        finally:
            shutil.rmtree(report_dir, ignore_errors=True)
    if not cfg.run.keep_work:
        if is_remote(d.out):
            storage.remove(os.path.join(d.out, "_work"), recursive=True)
        else:
            shutil.rmtree(d.work, ignore_errors=True)
    return MiningResult(
        output=d.out,
        manifest_path=None if cfg.run.text_only else manifest_path,
        counts=counts,
        stats=stats,
        vocab_sizes={"raw": len(vocab), "clustered": len(names)},
    )
