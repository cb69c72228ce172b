"""Compose a run config from YAML files and command-line overrides, in one documented order.

Order (later wins):
  1. the structured schema's defaults (``configs/schema.py``)
  2. one file per config group (``configs.schema.GROUPS``), chosen by the base file's ``defaults`` (e.g.
     configs/model/vit_s16.yaml fills ``model``), then by the experiment preset's ``defaults``, then by the
     command line (``model=resnet50``); ``data/size`` files fill ``data`` after the ``data`` file
  3. the base file's own keys (configs/config.yaml)
  4. the experiment preset's keys (configs/experiment/<name>.yaml; a preset whose ``defaults`` name
     ``experiment: <base>`` is that preset with its own keys on top)
  5. command-line ``key=value`` overrides (the form W&B sweeps pass with ``${args_no_hyphens}``)

Every step is validated against the schema, so an unknown key or a wrong type fails at once with a
message naming the key, the file it came from and the closest valid key. Values from a closed set are
``Literal`` fields that OmegaConf checks itself; ``check_values`` holds only what types cannot say.

Why not Hydra: its ``compose()`` would replace most of this file, but ``hydra-core`` 1.3.8 (the latest
release) requires ``omegaconf<2.4``, and the repo pins omegaconf 2.4.0 for its ``Literal`` fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from configs.schema import GROUPS, RunConfig
from datamodules.sources import dataset_names

CONFIG_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def normalize_overrides(argv: Iterable[str]) -> list[str]:
    """Check command-line overrides: every item is ``key=value``; returns them as a list.

    Raises:
        ConfigError: for an item that is not ``key=value``, in one line that says what to write instead (a
            ``--key=value`` item: ``key=value``; the sweeps pass that form with ``${args_no_hyphens}``).
    """
    items = [str(a) for a in argv]
    for item in items:
        if item.startswith("-"):
            bare = item.lstrip("-")
            hint = f"write {bare}" if "=" in bare else f"write {bare}=VALUE"
            raise ConfigError(
                f"override '{item}': overrides are key=value with no leading '-': {hint} "
                "(W&B sweeps: command ${args_no_hyphens}; --help lists the options)"
            )
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    return items


def schema_keys(schema: Any, prefix: str = "") -> list[str]:
    """All dotted key paths a dataclass schema declares (dict-valued fields end the path)."""
    keys: list[str] = []
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        keys.append(path)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys.extend(schema_keys(type(default), prefix=path + "."))
    return keys


def _closest(key: str, schema: Any) -> str:
    """`` Did you mean ...?`` for an unknown key: the keys whose last component is the key's own (``lr`` ->
    ``optim.lr``), else difflib's closest full key, else the key whose last component is closest."""
    keys = schema_keys(schema)
    by_tail: dict[str, list[str]] = {}
    for k in keys:
        by_tail.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    tail = key.rsplit(".", 1)[-1]
    matches = [k for k in by_tail.get(tail, []) if k != key]
    if not matches:
        matches = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not matches:
        near = difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.7)
        matches = by_tail[near[0]] if near else []
    if not matches:
        return ""
    shown = sorted(matches, key=lambda k: (k.count("."), k))[:3]
    return " Did you mean " + " or ".join(f"'{k}'" for k in shown) + "?"


def _explain(err: OmegaConfBaseException, source: str, schema: Any) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"unknown config key '{key}' (from {source}).{_closest(key, schema)}")
    if isinstance(err, ValidationError):
        return ConfigError(f"bad value for config key '{key}' (from {source}): {msg}")
    return ConfigError(f"config error at '{key}' (from {source}): {msg}")


def _merge(cfg: DictConfig, other: Any, source: str, schema: Any) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as err:
        raise _explain(err, source, schema) from None


def _parse_dotlist(dotlist: list[str]) -> DictConfig:
    """``key=value`` items as a DictConfig; a malformed item fails naming the items."""
    try:
        return OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse command-line overrides {dotlist}: {err}") from None


def load_yaml(path: Path) -> DictConfig:
    """Load one YAML file safely (omegaconf's safe loader); fail naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def _group_file(group: str, name: str, config_dir: Path) -> Path:
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(f"no '{name}' in config group '{group}': choose one of {options}")
    return path


def _pop_defaults(cfg: DictConfig, source: str, preset: bool = False) -> dict[str, str]:
    """The file's ``defaults`` (group -> file name), removed from it; a preset may also name ``experiment``."""
    defaults = cfg.pop("defaults", None)
    if defaults is None:
        return {}
    defaults = OmegaConf.to_container(defaults)
    if not isinstance(defaults, dict):
        raise ConfigError(f"'defaults' in {source} must map group -> file name")
    allowed = (*GROUPS, "experiment") if preset else GROUPS
    unknown = set(defaults) - set(allowed)
    if unknown:
        raise ConfigError(f"unknown config group(s) {sorted(unknown)} in {source}: groups are {list(allowed)}")
    return {str(k): str(v) for k, v in defaults.items()}


def _presets(name: str, config_dir: Path) -> list[tuple[Path, DictConfig, dict[str, str]]]:
    """The preset ``name`` and the presets it extends (``defaults: {experiment: <base>}``), base first, each as
    (file, its keys, its group choices)."""
    chain: list[tuple[Path, DictConfig, dict[str, str]]] = []
    while name:
        path = _group_file("experiment", name, config_dir)
        if any(path == p for p, _, _ in chain):
            raise ConfigError(f"experiment presets extend each other in a loop: {[p.stem for p, _, _ in chain]}")
        keys = load_yaml(path)
        groups = _pop_defaults(keys, str(path), preset=True)
        name = groups.pop("experiment", "")
        chain.append((path, keys, groups))
    return chain[::-1]


def compose(
    overrides: Sequence[str] = (),
    config_dir: Path | None = None,
    base: str = "config.yaml",
    hardware: bool = True,
) -> DictConfig:
    """Compose and validate a run config.

    Args:
        overrides: command-line ``key=value`` items; ``experiment=NAME`` picks a preset and ``GROUP=NAME``
            (e.g. ``model=resnet50``, ``data/size=cpu``) picks a group file.
        config_dir: folder holding config.yaml and the group folders (default: this package).
        base: the base file inside config_dir.
        hardware: also check that the strategy/precision fit this machine (off to plan a GPU sweep on a CPU).

    Returns:
        The resolved, read-only DictConfig backed by ``RunConfig``.
    """
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    group_choice: dict[str, str] = {}
    experiment: str | None = None
    dotlist: list[str] = []
    for item in normalize_overrides(overrides):
        key, value = item.split("=", 1)
        if key == "experiment":
            experiment = value
        elif key in GROUPS and "." not in value and not value.startswith("{"):
            group_choice[key] = value
        else:
            dotlist.append(item)

    base_path = config_dir / base
    base_cfg = load_yaml(base_path)
    selected = _pop_defaults(base_cfg, str(base_path))
    presets = _presets(experiment, config_dir) if experiment else []
    for _, _, groups in presets:
        selected.update(groups)
    selected.update(group_choice)

    cfg = OmegaConf.structured(RunConfig)
    for group in GROUPS:
        if group in selected:
            path = _group_file(group, selected[group], config_dir)
            cfg = _merge(cfg, {group.split("/")[0]: load_yaml(path)}, str(path), RunConfig)
    cfg = _merge(cfg, base_cfg, str(base_path), RunConfig)
    for path, keys, _ in presets:
        cfg = _merge(cfg, keys, str(path), RunConfig)
    if experiment:
        cfg.experiment = experiment
    cfg = _merge(cfg, _parse_dotlist(dotlist), "command line", RunConfig)
    check_values(cfg, hardware=hardware)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for config key '{key}': {msg}")


def check_values(cfg: DictConfig, hardware: bool = True) -> None:
    """Checks the schema's types cannot express (ranges, cross-key rules; closed sets are ``Literal`` fields);
    run before any data or model is built."""
    scale = cfg.data.weak_label.scale
    _require(0.0 < scale <= 1.0, "data.weak_label.scale", f"{scale} is outside (0, 1]")
    _require(cfg.data.img_size > 0, "data.img_size", "must be positive")
    _require(cfg.data.batch_size > 0, "data.batch_size", "must be positive")
    _require(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(cfg.tasks.embedding.temperature > 0, "tasks.embedding.temperature", "must be positive")
    _require(cfg.tasks.embedding.dim > 0, "tasks.embedding.dim", "must be positive")
    known = dataset_names(cfg)
    for name in cfg.data.user_tasks:
        _require(known.count(name) == 1, f"data.user_tasks.{name}", "is a built-in dataset's name; rename the task")
    for name, clf in cfg.tasks.classifiers.items():
        _require(
            clf.dataset in known, f"tasks.classifiers.{name}.dataset", f"'{clf.dataset}' is not one of {sorted(known)}"
        )
    for ds in cfg.tasks.embedding.datasets:
        _require(ds in known, "tasks.embedding.datasets", f"'{ds}' is not one of {sorted(known)}")
    any_task = cfg.tasks.weak_label.enabled or cfg.tasks.embedding.enabled or len(cfg.tasks.classifiers) > 0
    _require(any_task, "tasks", "no task is enabled")
    _require(
        cfg.trainer.max_steps > 0 or cfg.trainer.max_epochs > 0, "trainer.max_steps", "set max_steps or max_epochs"
    )
    _require(all(k > 0 for k in cfg.eval.ks), "eval.ks", "every k must be positive")
    if hardware:
        check_hardware(cfg)


def check_hardware(cfg: DictConfig) -> None:
    """A strategy or precision that cannot run on this machine fails before anything is built."""
    import torch

    accel = cfg.trainer.accelerator
    has_gpu = torch.cuda.is_available()
    on_cpu = accel == "cpu" or (accel == "auto" and not has_gpu)
    strategy = str(cfg.trainer.strategy)
    _require(
        not (accel in ("gpu", "cuda") and not has_gpu),
        "trainer.accelerator",
        "'gpu' requested but no CUDA device is visible",
    )
    _require(
        not (on_cpu and strategy.startswith("fsdp")),
        "trainer.strategy",
        "fsdp needs GPUs; on CPU use 'ddp' (gloo) or 'auto'",
    )
    _require(
        not (on_cpu and str(cfg.trainer.precision).startswith("16")),
        "trainer.precision",
        "fp16 needs a GPU; use bf16-mixed or 32-true",
    )


def save_config(cfg: DictConfig, path: os.PathLike) -> None:
    """Write the resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def load_run_config(
    source: os.PathLike | Mapping[str, Any],
    overrides: Sequence[str] = (),
    hardware: bool = True,
    name: str | None = None,
) -> DictConfig:
    """A resolved config saved by a run, validated against the schema, with overrides applied.

    Args:
        source: the run's config.yaml, or the config as a mapping (a checkpoint's ``hyper_parameters["config"]``).
        overrides: command-line ``key=value`` items.
        hardware: also check the trainer section against this machine (off where it only describes the training).
        name: how error messages name a mapping source.
    """
    if isinstance(source, Mapping):
        cfg = _merge(OmegaConf.structured(RunConfig), dict(source), name or "stored config", RunConfig)
    else:
        path = Path(source)
        cfg = _merge(OmegaConf.structured(RunConfig), load_yaml(path), str(path), RunConfig)
    cfg = _merge(cfg, _parse_dotlist(normalize_overrides(overrides)), "command line", RunConfig)
    check_values(cfg, hardware=hardware)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    """Plain dict (for hparams, W&B config and weights_only-safe checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)
