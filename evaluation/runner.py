"""Evaluate one module on the datasets of ``eval.datasets``; write one JSON per dataset.

Datasets:
    fashion_mnist:   queries = the test split, gallery = the train split (same class = relevant);
                     k-NN and the linear probe train on the train features and report on the test ones.
    weak_label_val:  leave-one-out retrieval on the weak-label val split (relevant = shares a label):
                     the queries are a seeded choice of eval.loo_queries items (and at most
                     eval.query_limit), the gallery the whole split; plus the weak-label head's mAP
                     and p@k on the same query items when the module has that head.
Memory of weak_label_val does not grow with the label count C: targets are kept as label-id sets
(batches may carry dense multi-hot [B, C] targets or padded ids [B, L] with -1, optionally with
"label_ids"/"label_weights" keys), head logits are computed block by block from the backbone
feature and only for the labels present among the query items (evaluation.head_metrics).
For each feature of ``eval.features`` ("embedding" is skipped, with a note, when the module has no
embedding head): float cosine retrieval, binarized Hamming retrieval (eval.binarize), k-NN and
linear-probe accuracy, named as docs/ARCHITECTURE.md "Metric names" says:
    eval/<dataset>/<feature>/<float|binary>/{precision,recall,ir_recall,mAP}@<k>
      (recall = metric-learning Recall@K, ir_recall = fraction of relevant items retrieved:
      evaluation/retrieval.py)
    eval/<dataset>/<feature>/knn_acc, eval/<dataset>/<feature>/linear_probe_acc
    eval/weak_label_val/head/{mAP,p@k}
Caps: eval.gallery_limit / eval.query_limit take the first items of the (deterministic) loaders
(leave-one-out: query_limit caps the seeded query choice).

JSON (eval.output, else <run_dir>/eval/<dataset>.json):
    {"metrics": {name: value}, "dataset", "checkpoint", "config_hash", "feature_dims", "timings",
     "counts", "notes"}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from configs.compose import to_dict
from datamodules.sources import retrieval_datasets
from evaluation.embeddings import Extracted, extract_outputs
from evaluation.head_metrics import streaming_head_metrics
from evaluation.knn import knn_accuracy
from evaluation.linear_probe import linear_probe_accuracy
from evaluation.retrieval import (
    PAD,
    LabelSets,
    cat_label_sets,
    evaluate_retrieval,
    is_multi_label,
    label_sets,
    resolve_device,
)

log = logging.getLogger(__name__)

LoaderFn = Callable[[DictConfig, str, str], Iterable[dict[str, Any]]]


def metric_name(dataset: str, feature: str, *parts: str) -> str:
    """``eval/<dataset>/<feature>/<parts...>``, the contract's naming."""
    return "/".join(("eval", dataset, feature, *parts))


def config_hash(cfg: DictConfig) -> str:
    """16 hex chars of the SHA-256 of the resolved config (sorted JSON), without eval.checkpoint and
    eval.output: the same model config and evaluation settings give the same hash wherever they ran."""
    tree = to_dict(cfg)
    tree.get("eval", {}).pop("checkpoint", None)
    tree.get("eval", {}).pop("output", None)
    blob = json.dumps(tree, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def output_path(cfg: DictConfig, dataset: str, run_dir: Path | None) -> Path:
    """Where a dataset's JSON goes (a local path or a URL, as ``storage.as_path`` gives it).

    eval.output may hold "{dataset}", name a .json file (several datasets: <stem>.<dataset>.json) or a
    folder (<folder>/<dataset>.json); unset, it is <run_dir>/eval/<dataset>.json.
    """
    import storage

    out = cfg.eval.output
    if out:
        if "{dataset}" in str(out):
            return storage.as_path(str(out).format(dataset=dataset))
        path = storage.as_path(str(out))
        if path.suffix == ".json":
            return path if len(cfg.eval.datasets) == 1 else path.with_name(f"{path.stem}.{dataset}.json")
        return path / f"{dataset}.json"
    if run_dir is None:
        raise ValueError("nowhere to write the evaluation: set eval.output or give a run directory")
    return storage.join(run_dir, "eval", f"{dataset}.json")


def default_loader(cfg: DictConfig, dataset: str, split: str) -> Iterable[dict[str, Any]]:
    """datamodules.eval_loader (a missing data file raises FileNotFoundError naming its config key)."""
    from datamodules import eval_loader

    return eval_loader(cfg, dataset, split)


def _module_heads(module: torch.nn.Module) -> Iterable[str] | None:
    heads = getattr(module, "heads", None)
    return list(heads.keys()) if heads is not None else None


def _check_k(cfg: DictConfig, dataset: str, gallery_size: int, leave_one_out: bool) -> None:
    available = gallery_size - (1 if leave_one_out else 0)
    cap = f" (eval.gallery_limit={cfg.eval.gallery_limit})" if cfg.eval.gallery_limit else ""
    where = " after leaving each query out" if leave_one_out else ""
    for key, k in [("eval.ks", k) for k in cfg.eval.ks] + [("eval.knn_k", cfg.eval.knn_k)]:
        if key == "eval.knn_k" and leave_one_out:
            continue
        if k > available:
            raise ValueError(
                f"{key}: k={k} is larger than the {dataset} gallery, which has {available} items{where}{cap}"
            )


class _Timer:
    """Wall times of the evaluation's phases, in seconds."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 4)


def _retrieval(
    cfg: DictConfig,
    dataset: str,
    feature: str,
    queries: Extracted,
    gallery: Extracted | None,
    query_rows: Tensor | None,
    timer: _Timer,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, int]]:
    """Float (and binary) retrieval metrics of one feature, named by the contract. ``gallery=None``:
    leave-one-out on ``queries``, the queries being its items ``query_rows``."""
    ev = cfg.eval
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    kinds = [("float", "cosine")] + ([("binary", "hamming")] if ev.binarize else [])
    if gallery is None:
        q_x, q_y, self_index = queries.features[feature][query_rows], queries.targets[query_rows], query_rows
        g_x, g_y = queries.features[feature], queries.targets
    else:
        q_x, q_y, self_index = queries.features[feature], queries.targets, None
        g_x, g_y = gallery.features[feature], gallery.targets
    for kind, search in kinds:
        with timer(f"{feature}/{kind}_retrieval_s"):
            got, counts = evaluate_retrieval(
                q_x, q_y, g_x, g_y, list(ev.ks), search, ev.block_size, device=device, self_index=self_index
            )
        metrics.update({metric_name(dataset, feature, kind, name): value for name, value in got.items()})
    return metrics, counts


def loo_query_rows(cfg: DictConfig, num_items: int) -> Tensor:
    """Items used as leave-one-out queries: all of them when within eval.loo_queries and eval.query_limit,
    else a seeded (cfg.seed) random choice of that many, in ascending order."""
    caps = [c for c in (cfg.eval.loo_queries, cfg.eval.query_limit) if c]
    n = min([num_items, *caps])
    if n == num_items:
        return torch.arange(num_items)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    return torch.sort(torch.randperm(num_items, generator=gen)[:n]).values


class SparseTargets:
    """Wraps an eval loader: multi-label targets leave each batch as label-id sets, so no [N, C] tensor
    is ever concatenated. Batches keep a dummy class-id target for ``extract_outputs``.

    Accepts ``target`` as class ids [B] (passed through), dense multi-hot float [B, C], padded ids
    integer [B, L] (-1 = none), or ``label_ids`` [B, L] with optional ``label_weights`` [B, L].
    ``num_labels``: C of dense batches (None for ids); ``max_label``: the largest id seen.
    """

    def __init__(self, loader: Iterable[dict[str, Any]]):
        self.loader = loader
        self.parts: list[LabelSets] = []
        self.num_labels: int | None = None
        self.max_label = -1

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if isinstance(batch, dict) and ("label_ids" in batch or torch.as_tensor(batch.get("target", 0)).ndim == 2):
                if "label_ids" in batch:
                    sets = label_sets(torch.as_tensor(batch["label_ids"]).long(), batch.get("label_weights"))
                else:
                    target = torch.as_tensor(batch["target"])
                    if target.is_floating_point() or target.dtype == torch.bool:
                        self.num_labels = int(target.shape[1])
                    sets = label_sets(target)
                real = sets.ids[sets.ids != PAD]
                if real.numel():
                    self.max_label = max(self.max_label, int(real.max()))
                self.parts.append(sets)
                # The label sets are kept here; the batch goes on with a dummy class-id target and without its
                # label ids, so the device transform only normalizes its images (no [B, C] target is built).
                batch = {k: v for k, v in batch.items() if k not in ("label_ids", "label_weights")}
                batch["target"] = torch.zeros(len(sets), dtype=torch.long)
            yield batch

    @property
    def batch_transform(self) -> Any:
        """The wrapped loader's device transform (``datamodules.EvalLoader``), which ``extract_outputs`` applies."""
        return getattr(self.loader, "batch_transform", None)

    def targets(self, n: int) -> LabelSets | None:
        """The first ``n`` items' label sets (None when every batch had class ids)."""
        return cat_label_sets(self.parts)[:n] if self.parts else None


def _head_size(head: torch.nn.Module) -> int:
    """Output size of the weak-label head (an nn.Linear in lit_modules/heads.py)."""
    size = getattr(head, "out_features", None)
    if size is None:
        raise TypeError(f"the weak-label head is a {type(head).__name__} without out_features")
    return int(size)


def _check_head(cfg: DictConfig, head: torch.nn.Module, sparse: SparseTargets) -> None:
    """The head's label space must be the data's: same C for dense targets, every label id below C."""
    from evaluation.checkpoint import CheckpointMismatchError

    size = _head_size(head)
    data = f"data.weak_label (label_space={cfg.data.weak_label.label_space})"
    if sparse.num_labels is not None and sparse.num_labels != size:
        raise CheckpointMismatchError(
            f"the weak-label head predicts {size} labels but {data} has {sparse.num_labels}: "
            "the checkpoint was trained on another label space"
        )
    if sparse.max_label >= size:
        raise CheckpointMismatchError(
            f"the weak-label head predicts {size} labels but {data} holds label id {sparse.max_label}: "
            "the checkpoint was trained on another label space"
        )


def evaluate_dataset(
    cfg: DictConfig,
    module: torch.nn.Module,
    dataset: str,
    loader_fn: LoaderFn = default_loader,
    progress: bool = True,
) -> dict[str, Any]:
    """All metrics of one dataset; returns the JSON payload without checkpoint and config_hash."""
    splits = retrieval_datasets()  # eval dataset -> (dataset, gallery split, query split or None: leave-one-out)
    if dataset not in splits:
        raise ValueError(f"eval.datasets: unknown dataset '{dataset}': choose from {sorted(splits)}")
    ev = cfg.eval
    device = resolve_device(ev.device)
    timer = _Timer()
    notes: list[str] = []
    heads = _module_heads(module)
    has_embedding = ("embedding" in heads) if heads is not None else bool(cfg.tasks.embedding.enabled)
    features = []
    for feature in ev.features:
        if feature == "embedding" and not has_embedding:
            notes.append(
                "feature 'embedding' skipped: the module has no embedding head (tasks.embedding.enabled=false)"
            )
            log.info(notes[-1])
            continue
        features.append(feature)
    if not features:
        raise ValueError(f"eval.features={list(ev.features)}: nothing to evaluate for this module ({notes})")

    g_ds, g_split, q_split = splits[dataset]
    if ev.gallery_limit:  # a cap below a k fails before any image is read
        _check_k(cfg, dataset, int(ev.gallery_limit), leave_one_out=q_split is None)
    want_head = dataset == "weak_label_val" and heads is not None and "weak_label" in heads
    # The head's metrics come from the backbone feature (heads.weak_label's input), block by block.
    outputs = features + (["backbone"] if want_head and "backbone" not in features else [])
    sparse = SparseTargets(loader_fn(cfg, g_ds, g_split))
    with timer("extract_gallery_s"):
        gallery = extract_outputs(
            module, sparse, outputs, device, ev.precision, ev.gallery_limit, f"{dataset} {g_split}", progress
        )
    label_ids = sparse.targets(len(gallery))
    if label_ids is not None:
        gallery.targets = label_ids
    notes.extend(gallery.notes)
    _check_k(cfg, dataset, len(gallery), leave_one_out=q_split is None)  # before the query pass
    if want_head:
        _check_head(cfg, module.heads["weak_label"], sparse)
    queries = None
    if q_split is not None:
        with timer("extract_query_s"):
            queries = extract_outputs(
                module,
                loader_fn(cfg, g_ds, q_split),
                features,
                device,
                ev.precision,
                ev.query_limit,
                f"{dataset} {q_split}",
                progress,
            )
    timer.timings["gallery_images_per_sec"] = round(gallery.images_per_sec, 2)
    query_rows = loo_query_rows(cfg, len(gallery)) if queries is None else None

    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    for feature in features:
        if queries is None:
            got, counts = _retrieval(cfg, dataset, feature, gallery, None, query_rows, timer, device)
        else:
            got, counts = _retrieval(cfg, dataset, feature, queries, gallery, None, timer, device)
        metrics.update(got)
        if queries is not None and not is_multi_label(gallery.targets):
            g_x, g_y = gallery.features[feature], gallery.targets
            q_x, q_y = queries.features[feature], queries.targets
            with timer(f"{feature}/knn_s"):
                metrics[metric_name(dataset, feature, "knn_acc")] = knn_accuracy(
                    g_x, g_y, q_x, q_y, ev.knn_k, block_size=ev.block_size, device=device
                )
            lp = ev.linear_probe
            with timer(f"{feature}/linear_probe_s"):
                metrics[metric_name(dataset, feature, "linear_probe_acc")] = linear_probe_accuracy(
                    g_x, g_y, q_x, q_y, lp.epochs, lp.lr, lp.weight_decay, lp.batch_size, cfg.seed, device
                )
    if want_head:
        rows = query_rows if query_rows is not None else torch.arange(len(gallery))
        head_module = module.heads["weak_label"]
        with timer("head_metrics_s"):
            head = streaming_head_metrics(
                lambda x: head_module(x.to(device)).float().cpu(),
                gallery.features["backbone"][rows],
                gallery.targets[rows],
                _head_size(head_module),
                list(ev.ks),
            )
        metrics.update({f"eval/{dataset}/head/{name}": value for name, value in head.items()})
        counts["head_items"] = int(len(rows))
    elif dataset == "weak_label_val":
        notes.append("head metrics skipped: the module has no weak-label head")

    feature_dims = {f: int(gallery.features[f].shape[1]) for f in features}
    return {
        "metrics": metrics,
        "dataset": dataset,
        "feature_dims": feature_dims,
        "timings": timer.timings,
        "counts": counts,
        "notes": notes,
    }


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value  # NaN -> null


def evaluate_run(
    cfg: DictConfig,
    module: torch.nn.Module | None = None,
    run_dir: str | Path | None = None,
    loader_fn: LoaderFn | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Evaluate ``module`` (default: loaded from cfg.eval.checkpoint, else a random-init module) on
    every dataset of cfg.eval.datasets and write one JSON per dataset.

    Args:
        cfg: the run config (its ``eval`` section says what to compute).
        module: a module with ``embed(images, feature)``; None loads it as evaluate.py does.
        run_dir: the run directory (JSON default <run_dir>/eval/<dataset>.json).
        loader_fn: ``(cfg, dataset, split) -> loader``; default datamodules.eval_loader.
        checkpoint: recorded in the JSON (default: cfg.eval.checkpoint).
        progress: tqdm bars.

    Returns:
        Every dataset's metrics, flat ``{name: value}``.
    """
    from evaluation.checkpoint import build_random_module, load_checkpoint_module, resolve_checkpoint

    checkpoint = checkpoint or cfg.eval.checkpoint
    if module is None:
        if checkpoint:
            ckpt, ckpt_run_dir = resolve_checkpoint(checkpoint)
            module, checkpoint, run_dir = load_checkpoint_module(cfg, ckpt), ckpt, run_dir or ckpt_run_dir
        else:
            module = build_random_module(cfg)
    if run_dir is None and checkpoint:
        run_dir = resolve_checkpoint(checkpoint)[1]
    if run_dir is None:
        from tracking.run_dir import RunDir

        run_dir = RunDir.for_config(cfg).path
    loader_fn = loader_fn or default_loader
    digest = config_hash(cfg)
    all_metrics: dict[str, float] = {}
    for dataset in cfg.eval.datasets:
        start = time.perf_counter()
        payload = evaluate_dataset(cfg, module, dataset, loader_fn, progress)
        payload["timings"]["total_s"] = round(time.perf_counter() - start, 4)
        payload.update(checkpoint=str(checkpoint) if checkpoint else None, config_hash=digest)
        payload["metrics"] = {k: _json_value(v) for k, v in sorted(payload["metrics"].items())}
        path = output_path(cfg, dataset, run_dir)
        from tracking.run_dir import write_json_atomic

        write_json_atomic(path, payload)
        log.info("wrote %s", path)
        all_metrics.update({k: float("nan") if v is None else v for k, v in payload["metrics"].items()})
    return all_metrics
