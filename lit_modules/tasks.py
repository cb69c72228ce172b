"""Task kinds of the multi-task model, chosen once from ``config["tasks"]`` (open_clip's ``create_loss`` pattern).

A task is one loss term on the shared backbone feature. ``build_tasks(tasks_cfg)`` turns the ``tasks`` config
section into task objects, and ``MultiTaskModule`` calls them without ever branching on the kind:

* ``from_config(tasks_cfg)`` (class method): the terms of that kind in a ``tasks`` section;
* ``build_heads(tasks, in_features, num_classes)`` (class method): its heads (layout: ``lit_modules.heads``);
* ``check_target``, ``logits(heads, feats, cache)``, ``loss(logits, target)``: the training step;
* ``make_metrics(num_classes)``, ``plan(metrics, rows)``, ``update(metrics, logits, target)``: validation
  metrics; the module holds the torchmetrics objects, so they move with it and Lightning resets them.

Adding a kind: one ``Task`` subclass here and its entry in ``TASK_KINDS``. Metric names:
docs/ARCHITECTURE.md ("Metric names").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from evaluation.head_metrics import WeakLabelMAP, precision_at_k
from lit_modules.heads import EmbeddingHead, weak_label_init_bias
from lit_modules.losses import classification_loss, multi_hot_softmax_loss, multi_label_bce_loss, proxy_logits

__all__ = ["TASK_KINDS", "Task", "build_heads", "build_tasks", "task_datasets"]


class Task:
    """One loss term: its log name (``weak_label``, ``embedding/<dataset>``, ``clf/<name>``), the dataset whose
    batches it reads, its weight in the total loss, its head name and its own config section ``cfg``."""

    kind: ClassVar[str]
    multi_hot_only: ClassVar[bool] = False  # targets must be float [B, C] (else long [B] class ids too)
    init_order: ClassVar[int] = 0  # order in which build_heads draws the random initial weights
    no_weight_decay: ClassVar[tuple[str, ...]] = ()  # parameter names or fnmatch patterns kept out of weight decay

    def __init__(self, name: str, dataset: str, weight: float, head: str, cfg: Mapping[str, Any]):
        self.name, self.dataset, self.weight, self.head, self.cfg = name, dataset, float(weight), head, cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dataset={self.dataset!r}, weight={self.weight})"

    @classmethod
    def from_config(cls, tasks_cfg: Mapping[str, Any]) -> list[Task]:
        """The enabled terms of this kind in a ``tasks`` section (missing keys take the schema defaults)."""
        raise NotImplementedError

    @classmethod
    def build_heads(cls, tasks: list[Task], in_features: int, num_classes: Mapping[str, int]) -> dict[str, nn.Module]:
        """The head modules of ``tasks`` (all of this kind), keyed as in ``lit_modules.heads``."""
        raise NotImplementedError

    def check_target(self, target: torch.Tensor | None, batch_size: int, num_classes: Mapping[str, int]) -> None:
        """A clear error for a batch target this task cannot train on."""
        n = num_classes[self.dataset]
        if target is None:
            raise ValueError(
                f"batch['{self.dataset}'] has no 'target' (label ids arrive as label_ids/label_weights): apply "
                "datamodules.targets.BatchTransform on the device first (the DataModule's on_after_batch_transfer)"
            )
        multi_hot = target.ndim == 2 and target.is_floating_point()
        ok = (multi_hot and tuple(target.shape) == (batch_size, n)) or (
            not self.multi_hot_only
            and target.ndim == 1
            and not target.is_floating_point()
            and target.shape[0] == batch_size
        )
        if not ok:
            expected = f"float [{batch_size}, {n}] multi-hot" + ("" if self.multi_hot_only else " or long [B]")
            raise ValueError(
                f"batch['{self.dataset}']['target'] has dtype {target.dtype} shape {tuple(target.shape)}; task "
                f"'{self.name}' expects {expected} (num_classes['{self.dataset}']={n})"
            )

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, C]`` of backbone features ``feats``; ``cache`` holds head outputs that tasks reading the same
        ``feats`` share (one dict per feature batch)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The unweighted scalar loss."""
        raise NotImplementedError

    def make_metrics(self, num_classes: Mapping[str, int]) -> dict[str, Metric]:
        """Fresh validation metrics of this task, keyed by their (unique) names in the module's metric dict."""
        return {}

    def plan(self, metrics: Mapping[str, Metric], rows: float) -> None:
        """Before an evaluation pass of about ``rows`` samples over all ranks (the same number on every rank)."""

    def update(self, metrics: Mapping[str, Metric], logits: torch.Tensor, target: torch.Tensor) -> dict[str, Metric]:
        """Update this task's metrics with one batch (float32 ``logits``); returns {log name after
        ``<stage>/``: metric} to log."""
        return {}


def _classes(num_classes: Mapping[str, int], dataset: str, key: str) -> int:
    if dataset not in num_classes:
        raise ValueError(f"{key} reads dataset '{dataset}', but num_classes only has {sorted(num_classes)}")
    n = int(num_classes[dataset])
    if n < 1:
        raise ValueError(f"num_classes['{dataset}']={n} (needed by {key}) must be positive")
    return n


class WeakLabelTask(Task):
    """Classification over the mined label space: softmax against the normalized multi-hot target, or one sigmoid
    per label (``tasks.weak_label.loss``); validation mAP and p@k (``evaluation.head_metrics``)."""

    kind = "weak_label"
    multi_hot_only = True
    precision_at = (1, 5)  # validation p@k, for the k <= C

    @classmethod
    def from_config(cls, tasks_cfg: Mapping[str, Any]) -> list[Task]:
        wl = tasks_cfg.get("weak_label") or {}
        if not wl.get("enabled", True):
            return []
        return [cls("weak_label", "weak_label", wl.get("weight", 1.0), "weak_label", wl)]

    @classmethod
    def build_heads(cls, tasks: list[Task], in_features: int, num_classes: Mapping[str, int]) -> dict[str, nn.Module]:
        (task,) = tasks
        n = _classes(num_classes, task.dataset, "tasks.weak_label")
        head = nn.Linear(in_features, n)
        with torch.no_grad():
            head.bias.fill_(weak_label_init_bias(task.cfg, n))
        return {"weak_label": head}

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        return heads["weak_label"](feats)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fn = multi_label_bce_loss if self.cfg["loss"] == "bce" else multi_hot_softmax_loss
        return fn(logits, target, float(self.cfg["label_smoothing"]))

    def _ks(self, num_labels: int) -> list[int]:
        return [k for k in self.precision_at if k <= num_labels]  # p@5 of 3 labels is not defined

    def make_metrics(self, num_classes: Mapping[str, int]) -> dict[str, Metric]:
        n = num_classes[self.dataset]
        return {"weak_label_map": WeakLabelMAP(n), **{f"weak_label_p{k}": MeanMetric() for k in self._ks(n)}}

    def plan(self, metrics: Mapping[str, Metric], rows: float) -> None:
        metrics["weak_label_map"].plan(rows)

    def update(self, metrics: Mapping[str, Metric], logits: torch.Tensor, target: torch.Tensor) -> dict[str, Metric]:
        positives = target > 0.5
        probs = logits.sigmoid() if self.cfg["loss"] == "bce" else logits.softmax(dim=1)
        metrics["weak_label_map"].update(probs, positives)
        logged = {"weak_label/mAP": metrics["weak_label_map"]}
        for k in self._ks(logits.shape[1]):
            per_row = precision_at_k(probs, positives, k)
            if per_row.numel():
                metrics[f"weak_label_p{k}"].update(per_row)
            logged[f"weak_label/p@{k}"] = metrics[f"weak_label_p{k}"]
        return logged


class EmbeddingTask(Task):
    """The retrieval embedding: normalized-softmax proxy loss of the shared embedding head against one proxy bank
    per dataset (``tasks.embedding``); no validation metric (evaluate.py scores retrieval)."""

    kind = "embedding"
    init_order = 2  # the embedding head was drawn after the classifiers: same seed, same initial weights
    # Proxies are compared by cosine: decay would only shrink their norm and raise their effective LR.
    no_weight_decay = ("heads.embedding.proxies.*",)

    @classmethod
    def from_config(cls, tasks_cfg: Mapping[str, Any]) -> list[Task]:
        emb = tasks_cfg.get("embedding") or {}
        if not emb.get("enabled", False):
            return []
        return [cls(f"embedding/{ds}", ds, emb.get("weight", 1.0), ds, emb) for ds in emb.get("datasets") or []]

    @classmethod
    def build_heads(cls, tasks: list[Task], in_features: int, num_classes: Mapping[str, int]) -> dict[str, nn.Module]:
        proxies = {t.dataset: _classes(num_classes, t.dataset, "tasks.embedding.datasets") for t in tasks}
        return {"embedding": EmbeddingHead(in_features, int(tasks[0].cfg["dim"]), proxies)}

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embedding" not in cache:  # one projection per feature batch, shared by every proxy bank
            cache["embedding"] = heads["embedding"](feats)
        temperature = float(self.cfg["temperature"])
        return proxy_logits(cache["embedding"], heads["embedding"].proxies[self.dataset], temperature)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, target)  # logits are already cosine / temperature


class ClassifierTask(Task):
    """A use-case classifier (``tasks.classifiers.<name>``): softmax cross-entropy on class ids, or the normalized
    multi-hot softmax on a multi-hot target; validation top-1 accuracy."""

    kind = "classifier"
    init_order = 1

    @classmethod
    def from_config(cls, tasks_cfg: Mapping[str, Any]) -> list[Task]:
        return [
            cls(f"clf/{name}", clf["dataset"], clf.get("weight", 1.0), name, clf)
            for name, clf in (tasks_cfg.get("classifiers") or {}).items()
        ]

    @classmethod
    def build_heads(cls, tasks: list[Task], in_features: int, num_classes: Mapping[str, int]) -> dict[str, nn.Module]:
        classifiers = nn.ModuleDict()
        for task in tasks:
            if "." in task.head or not task.head:
                raise ValueError(f"tasks.classifiers: name '{task.head}' must be non-empty and contain no '.'")
            key = f"tasks.classifiers.{task.head}.dataset"
            classifiers[task.head] = nn.Linear(in_features, _classes(num_classes, task.dataset, key))
        return {"classifiers": classifiers}

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        return heads["classifiers"][self.head](feats)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, target, float(self.cfg["label_smoothing"]))

    def make_metrics(self, num_classes: Mapping[str, int]) -> dict[str, Metric]:
        if self.dataset == "weak_label":  # multi-hot target: top-1 is right when it is any label
            return {f"clf_{self.head}_acc": MeanMetric()}
        return {f"clf_{self.head}_acc": MulticlassAccuracy(num_classes=num_classes[self.dataset], average="micro")}

    def update(self, metrics: Mapping[str, Metric], logits: torch.Tensor, target: torch.Tensor) -> dict[str, Metric]:
        metric = metrics[f"clf_{self.head}_acc"]
        if isinstance(metric, MulticlassAccuracy):
            metric.update(logits, target)
        else:
            metric.update(target.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1).gt(0.5).float())
        return {f"clf/{self.head}/acc": metric}


# The kinds in the order of their loss terms, logs and heads (the state-dict order of existing checkpoints).
TASK_KINDS: dict[str, type[Task]] = {t.kind: t for t in (WeakLabelTask, EmbeddingTask, ClassifierTask)}


def build_tasks(tasks_cfg: Mapping[str, Any]) -> list[Task]:
    """Every enabled loss term of a ``tasks`` config section, in a fixed order (by kind, as ``TASK_KINDS``)."""
    return [task for kind in TASK_KINDS.values() for task in kind.from_config(tasks_cfg)]


def task_datasets(tasks_cfg: Mapping[str, Any]) -> list[str]:
    """The datasets the enabled tasks read, in first-use order."""
    return list(dict.fromkeys(task.dataset for task in build_tasks(tasks_cfg)))


def build_heads(tasks: list[Task], in_features: int, num_classes: Mapping[str, int]) -> nn.ModuleDict:
    """The heads of every task, sized from ``num_classes`` (dataset -> classes).

    Returns:
        ``nn.ModuleDict`` with ``weak_label`` (Linear), ``embedding`` (EmbeddingHead) and ``classifiers``
        (ModuleDict of Linear), each only when a task uses it (``lit_modules.heads``).
    """
    if not tasks:
        raise ValueError("tasks: no task is enabled")
    kinds = [kind for kind in TASK_KINDS.values() if any(type(t) is kind for t in tasks)]
    built: dict[type[Task], dict[str, nn.Module]] = {}
    for kind in sorted(kinds, key=lambda k: k.init_order):  # the random draws in init_order ...
        built[kind] = kind.build_heads([t for t in tasks if type(t) is kind], in_features, num_classes)
    return nn.ModuleDict({key: head for kind in kinds for key, head in built[kind].items()})  # ... stored by kind
