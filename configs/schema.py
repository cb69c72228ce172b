"""Structured schema of a training / evaluation run.

Every key a YAML file or the command line may set is declared here, with its type and default, so
that omegaconf rejects an unknown key or a wrong type at start-up (see ``configs.compose``). A key with a
closed set of values is a ``Literal`` field: omegaconf refuses any other value and names the allowed ones.
Names say what a key is for; the YAML groups under ``configs/`` only fill these fields in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The backbone: any timm model name, created from scratch (no hub weights here)."""

    name: str = "vit_tiny_patch16_224"
    # Family used for tables and W&B grouping ("vit", "resnet", ...); derived from name when None.
    family: str | None = None
    drop_path_rate: float = 0.0
    # Activation checkpointing of the backbone's blocks (ViT-L/H at scale).
    grad_checkpointing: bool = False
    # channels_last memory format (CNNs on GPU).
    channels_last: bool = False
    # torch.compile the backbone only (never the LightningModule): fixed shapes, unwrapped weights.
    compile: bool = False
    # Extra keyword arguments for timm.create_model (e.g. patch_size, global_pool).
    kwargs: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- data


@dataclass
class AugmentConfig:
    """Train-time augmentation, passed to timm.data.create_transform."""

    scale_min: float = 0.08  # RandomResizedCrop lower scale bound
    hflip: float = 0.5
    rand_augment: str | None = None  # timm auto_augment string, e.g. "rand-m9-mstd0.5-inc1"
    mixup_alpha: float = 0.0  # 0 disables mixup (weak-label batches only)


@dataclass
class WeakLabelDataConfig:
    """Shards written by the label-mining pipeline (mine_labels.py)."""

    # The dataset manifest written next to the shards (vocabularies, per-shard counts, splits).
    manifest: str = "data/openclipart/manifest.json"
    # Optional override of the training shard list: brace pattern, or several joined by "::".
    # Sample counts still come from the manifest.
    shards: str | None = None
    label_space: Literal["raw", "clustered"] = "clustered"  # top annotation terms, or label groups
    scale: float = 1.0  # nested dataset-scale fraction in (0, 1]; one of the manifest's scales
    resampled: bool = True  # resample shards with replacement (equal batches per rank by design)


@dataclass
class FashionMNISTConfig:
    """The downstream shopping task (Debian dataset-fashion-mnist, IDX files)."""

    root: str = "/usr/share/datasets/fashion-mnist"
    train_limit: int | None = None  # cap on training images (CPU runs); None = all 60,000
    test_limit: int | None = None  # cap on test images; None = all 10,000
    # Class-balanced training draws (with replacement, every class equally likely), for a proxy-embedding dataset
    # whose classes are imbalanced; Fashion-MNIST itself is balanced, so off.
    class_balanced: bool = False


@dataclass
class ImageFolderTaskDataConfig:
    """A user's own classification dataset: an image folder (one sub-folder per class) or a
    manifest (CSV/JSONL with ``path`` and ``label`` columns)."""

    root: str | None = None
    manifest: str | None = None
    val_fraction: float = 0.1
    # Class-balanced training draws (with replacement, every class equally likely): for a task whose classes are
    # imbalanced and that trains proxies of the retrieval embedding (tasks.embedding.datasets).
    class_balanced: bool = False


@dataclass
class MixingConfig:
    """How several task datasets share a training step."""

    # "combined": one batch of every dataset per step; shorter datasets start their next pass (max_size_cycle).
    # "interleave": one dataset per step, drawn by ``ratios``.
    mode: Literal["combined", "interleave"] = "combined"
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass
class DataConfig:
    img_size: int = 224  # input resolution: the one place it is set (the model reads it too)
    batch_size: int = 64  # per device, per dataset
    eval_batch_size: int | None = None  # defaults to batch_size
    num_workers: int = 4
    shuffle_buffer: int = 2000
    # Logical slots a weak-label training pass is cut into (datamodules/slots.py): the sample order of a pass depends on
    # this, never on the world size or worker count, so a run resumes on any cluster. At most one slot per
    # shuffle_buffer samples is used; 1024 serves 64 nodes x 8 GPUs x 2 workers with whole slots.
    stream_slots: int = 1024
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weak_label: WeakLabelDataConfig = field(default_factory=WeakLabelDataConfig)
    fashion_mnist: FashionMNISTConfig = field(default_factory=FashionMNISTConfig)
    user_tasks: dict[str, ImageFolderTaskDataConfig] = field(default_factory=dict)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    # Append the sample keys of every training batch each rank consumes to this JSON-lines file (rank r > 0:
    # <path>.rank<r>); a resumed run first cuts it back to its checkpoint. None = off (tracking/sample_keys.py).
    record_keys: str | None = None
    # Local copy of remote shards (s3://, gs://, https://...) for multi-epoch runs: each shard is downloaded once and
    # read from this folder afterwards (datamodules/storage.py). None = off (remote shards are streamed every epoch).
    cache_dir: str | None = None
    # Bound of data.cache_dir in GiB: least recently used shards are deleted beyond it; 0 = no bound.
    cache_limit_gb: float = 100.0


# ---------------------------------------------------------------------------------------- tasks


@dataclass
class WeakLabelTaskConfig:
    """Weak-label classification over the mined label space."""

    enabled: bool = True
    weight: float = 1.0
    # "softmax": cross-entropy against the normalized multi-hot target (large-scale weak
    # supervision recipe); "bce": one sigmoid per label, summed over labels, mean over samples.
    loss: Literal["softmax", "bce"] = "softmax"
    label_smoothing: float = 0.0
    # Initial bias of every weak-label logit. None: -log(num_labels) for bce (the initial sigmoid is ~1/C,
    # near the label prior, instead of 0.5 on every label), 0 for softmax (a constant bias cancels there).
    # big_vision uses -10.0 (init_head_bias).
    init_bias: float | None = None


@dataclass
class EmbeddingTaskConfig:
    """Retrieval embedding trained with a normalized-softmax proxy loss."""

    enabled: bool = False
    weight: float = 1.0
    dim: int = 256
    temperature: float = 0.05
    # Each dataset named here gets its own proxy bank on the shared embedding.
    datasets: list[str] = field(default_factory=lambda: ["weak_label"])


@dataclass
class ClassifierTaskConfig:
    """A small use-case classifier head (the paper's skin-tone head; here Fashion-MNIST)."""

    dataset: str = "fashion_mnist"
    weight: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class TasksConfig:
    weak_label: WeakLabelTaskConfig = field(default_factory=WeakLabelTaskConfig)
    embedding: EmbeddingTaskConfig = field(default_factory=EmbeddingTaskConfig)
    classifiers: dict[str, ClassifierTaskConfig] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ optimizer


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm.optim.create_optimizer_v2 name
    # Peak learning rate. None (the default): computed from the global batch by the lr_base rule below;
    # a value set here (YAML or command line) wins over that rule and is used as given.
    lr: float | None = None
    # timm train.py semantics: lr = lr_base * (global_batch / lr_base_size) ** (0.5 if sqrt else 1), where
    # global_batch = data.batch_size x world size x trainer.accumulate_grad_batches (lit_modules/optim.py).
    lr_base: float = 1e-3  # peak LR at the reference batch (big_vision's ViT: 1e-3 at 4,096)
    lr_base_size: int = 4096  # the reference global batch of lr_base
    lr_base_scale: Literal["sqrt", "linear", "none"] | None = None  # None: sqrt for Adam-family, else linear
    weight_decay: float = 0.05  # not applied to norms, biases, position embeddings, cls token
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float | None = None  # layer-wise LR decay (fine-tuning stage), e.g. 0.75
    warmup_steps: int = 0
    scheduler: Literal["cosine", "constant"] = "cosine"  # after the linear warmup
    min_lr: float = 1e-6
    # A resume on another world size (or data.batch_size) than the checkpoint's (a requeue on fewer or more nodes):
    # "keep_global_batch" recomputes trainer.accumulate_grad_batches so the global batch, peak LR and schedule stay
    # the checkpoint's (the run stops before training if no integer does it); "rescale_lr" keeps the per-device
    # batch, so the global batch changes and the peak LR is recomputed by the lr_base rule above, the schedule
    # continuing from the restored step. Chosen at resume time (operational). docs/reliability.md.
    on_world_size_change: Literal["keep_global_batch", "rescale_lr"] = "keep_global_batch"
    ema_decay: float | None = None  # EMA of weights (timm ModelEmaV3); None disables


# -------------------------------------------------------------------------------------- trainer


@dataclass
class FSDPConfig:
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD"
    activation_checkpointing: bool = True  # per ViT block
    state_dict_type: Literal["sharded", "full"] = "sharded"  # sharded checkpoints at scale


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # "cpu", "gpu", "auto"
    devices: Any = "auto"  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # "auto", "ddp", "fsdp", "ddp_find_unused_parameters_true", ...
    precision: str = "32-true"  # "bf16-mixed" on GPUs
    max_steps: int = 1000  # training is driven by steps (webdataset epochs are nominal)
    max_epochs: int = -1
    val_check_interval: int | None = None  # in training steps; None = once per epoch
    limit_val_batches: float | None = None
    num_sanity_val_steps: int = 0
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 20
    checkpoint_every_n_steps: int = 500
    deterministic: bool = False
    # torch (and faiss) CPU threads; None keeps torch's default (OMP_NUM_THREADS, else the core count). CPU float
    # sums depend on the thread count, so a fixed count is what makes a CPU table repeat on another machine.
    cpu_threads: int | None = None
    # What a non-finite loss does: "raise" stops the run naming step and task; "skip" skips it.
    nonfinite_loss: Literal["raise", "skip"] = "raise"
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)


# --------------------------------------------------------------------------------------- logger


@dataclass
class LoggerConfig:
    wandb: bool = True
    project: str = "billion-scale-vit"
    entity: str | None = None
    # None: WANDB_MODE from the environment, else "offline" (no server is reachable by default).
    mode: str | None = None
    group: str | None = None  # defaults to the experiment name
    tags: list[str] = field(default_factory=list)
    # Log the final checkpoint ("model") and the data manifests ("dataset", named by their fingerprint) as W&B
    # artifacts, so a table row leads back to the exact weights and data (large: off by default).
    log_artifacts: bool = False


# ----------------------------------------------------------------------------------- evaluation


@dataclass
class LinearProbeConfig:
    epochs: int = 100
    lr: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 1024


@dataclass
class EvalConfig:
    """What evaluate.py computes for a checkpoint (or a random-init backbone)."""

    # a .ckpt (or sharded FSDP folder), or a run directory: its last.ckpt, else best.ckpt; EMA weights if trained
    checkpoint: str | None = None
    datasets: list[str] = field(default_factory=lambda: ["fashion_mnist"])  # + "weak_label_val"
    # "embedding": the retrieval head's output; "backbone": the backbone's pooled feature.
    features: list[Literal["embedding", "backbone"]] = field(default_factory=lambda: ["embedding", "backbone"])
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50])
    binarize: bool = True  # also report Hamming retrieval on sign bits
    knn_k: int = 20
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    gallery_limit: int | None = None  # cap gallery size (CPU runs)
    query_limit: int | None = None  # cap query size (CPU runs)
    # Leave-one-out datasets (weak_label_val): queries are a seeded random choice of this many items
    # (None: every item); the weak-label head's mAP and p@k are computed on the same items.
    loo_queries: int | None = 1000
    block_size: int = 1024  # queries per similarity block (memory O(block x gallery))
    device: str = "auto"
    # fp32 on every device so figures compare across GPU and CPU; "bf16" opts into autocast (faster on GPUs).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    output: str | None = None  # JSON path; default <run_dir>/eval/<dataset>.json


# ------------------------------------------------------------------------------------------ run


@dataclass
class RunConfig:
    experiment: str = "default"  # preset name; the W&B group unless logger.group is set
    stage: Literal["pretrain", "multitask"] = "pretrain"  # weak labels, or the second stage
    seed: int = 0
    output_dir: str = "runs"  # run directories land in <output_dir>/<run_name>
    run_name: str | None = None  # default: derived from the experiment and the compared axes
    init_from: str | None = None  # checkpoint to initialise weights from (stage two)
    # "auto": continue from <run_dir>/checkpoints/last.ckpt if present; "never"; or a ckpt path.
    resume: str = "auto"
    # Run evaluate.py's evaluation right after fit, logged into the same W&B run (what sweeps optimise).
    evaluate_after_fit: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Config groups, in merge order: a YAML file configs/<group>/<name>.yaml fills in the field named by the group's first
# component. data/size (configs/data/size/cpu.yaml: resolution, batch, workers) fills ``data`` after the data source's
# file, so ``data=img2dataset data/size=cpu`` is that corpus sized for a CPU.
GROUPS = ("model", "data", "data/size", "tasks", "optim", "trainer", "logger", "eval")

# Keys that say where and how a run executes, not what it computes (a dotted key, or a prefix ending in "."). They
# may differ between a run and its resume (another cluster, more loader workers), and they are left out of the run's
# identity (tracking/identity.py). Everything else is science: a run resumes only under the same values, and a table
# averages only runs that agree on all of it but the seed. The global batch and the world size these keys imply are
# recorded per run (run.json "lineage") and compared by the tables separately.
OPERATIONAL_KEYS = (
    "output_dir",
    "run_name",
    "resume",
    "evaluate_after_fit",
    "data.num_workers",
    "data.eval_batch_size",
    "data.record_keys",
    "data.cache_dir",
    "data.cache_limit_gb",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "optim.on_world_size_change",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.deterministic",
    "trainer.cpu_threads",
    "trainer.fsdp.",
    "logger.",
    "eval.checkpoint",
    "eval.output",
    "eval.device",
    "eval.block_size",
)
