"""Compose a run config from YAML files and command-line overrides, in one documented order.

Order (later wins):
  1. the structured schema's defaults (``configs/schema.py``)
  2. one file per config group, chosen by the base file's ``defaults`` (e.g. configs/model/vit_s16.yaml
     fills ``model``), then by the experiment preset's ``defaults``, then by the command line
     (``model=resnet50``)
  3. the base file's own keys (configs/config.yaml)
  4. the experiment preset's keys (configs/experiment/<name>.yaml)
  5. command-line overrides: ``key=value`` dotlists or the ``--key=value`` form W&B agents pass

Every step is validated against the schema, so an unknown key or a wrong type fails at once with a
message naming the key, the file it came from and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Sequence
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
    """Accept ``key=value`` and ``--key=value`` (and ``--key value``); return ``key=value`` items."""
    items: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise ConfigError(f"override '--{arg}' has no value; use --{arg}=VALUE")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg:
            raise ConfigError(f"override '{arg}' is not of the form key=value")
        items.append(arg)
        i += 1
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
    match = difflib.get_close_matches(key, schema_keys(schema), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


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


def _pop_defaults(cfg: DictConfig, source: str) -> dict[str, str]:
    defaults = cfg.pop("defaults", None)
    if defaults is None:
        return {}
    defaults = OmegaConf.to_container(defaults)
    if not isinstance(defaults, dict):
        raise ConfigError(f"'defaults' in {source} must map group -> file name")
    unknown = set(defaults) - set(GROUPS)
    if unknown:
        raise ConfigError(f"unknown config group(s) {sorted(unknown)} in {source}: groups are {list(GROUPS)}")
    return {str(k): str(v) for k, v in defaults.items()}


def compose(
    overrides: Sequence[str] = (),
    config_dir: Path | None = None,
    base: str = "config.yaml",
    hardware: bool = True,
) -> DictConfig:
    """Compose and validate a run config.

    Args:
        overrides: command-line items, ``key=value`` or ``--key=value``; ``experiment=NAME`` picks a
            preset and ``GROUP=NAME`` (e.g. ``model=resnet50``) picks a group file.
        config_dir: folder holding config.yaml and the group folders (default: this package).
        base: the base file inside config_dir.
        hardware: also check that the strategy/precision fit this machine (off to plan a GPU sweep on a CPU).

    Returns:
        The resolved, read-only DictConfig backed by ``RunConfig``.
    """
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    items = normalize_overrides(overrides)
    group_choice: dict[str, str] = {}
    experiment: str | None = None
    dotlist: list[str] = []
    for item in items:
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
    exp_cfg = None
    exp_path = None
    if experiment:
        exp_path = _group_file("experiment", experiment, config_dir)
        exp_cfg = load_yaml(exp_path)
        selected.update(_pop_defaults(exp_cfg, str(exp_path)))
    selected.update(group_choice)

    cfg = OmegaConf.structured(RunConfig)
    for group in GROUPS:
        if group in selected:
            path = _group_file(group, selected[group], config_dir)
            cfg = _merge(cfg, {group: load_yaml(path)}, str(path), RunConfig)
    cfg = _merge(cfg, base_cfg, str(base_path), RunConfig)
    if exp_cfg is not None:
        cfg = _merge(cfg, exp_cfg, str(exp_path), RunConfig)
        cfg.experiment = experiment
    cfg = _merge(cfg, _parse_dotlist(dotlist), "command line", RunConfig)
    check_values(cfg, hardware=hardware)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for config key '{key}': {msg}")


def check_values(cfg: DictConfig, hardware: bool = True) -> None:
    """Checks the schema's types cannot express; run before any data or model is built."""
    _require(cfg.stage in ("pretrain", "multitask"), "stage", f"'{cfg.stage}' is not pretrain|multitask")
    wl = cfg.data.weak_label
    _require(
        wl.label_space in ("raw", "clustered"),
        "data.weak_label.label_space",
        f"'{wl.label_space}' is not raw|clustered",
    )
    _require(0.0 < wl.scale <= 1.0, "data.weak_label.scale", f"{wl.scale} is outside (0, 1]")
    _require(cfg.data.img_size > 0, "data.img_size", "must be positive")
    _require(cfg.data.batch_size > 0, "data.batch_size", "must be positive")
    _require(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(
        cfg.data.mixing.mode in ("combined", "interleave"),
        "data.mixing.mode",
        f"'{cfg.data.mixing.mode}' is not combined|interleave",
    )
    _require(
        cfg.tasks.weak_label.loss in ("softmax", "bce"),
        "tasks.weak_label.loss",
        f"'{cfg.tasks.weak_label.loss}' is not softmax|bce",
    )
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
        cfg.optim.scheduler in ("cosine", "constant"),
        "optim.scheduler",
        f"'{cfg.optim.scheduler}' is not cosine|constant",
    )
    _require(
        cfg.trainer.nonfinite_loss in ("raise", "skip"),
        "trainer.nonfinite_loss",
        f"'{cfg.trainer.nonfinite_loss}' is not raise|skip",
    )
    _require(
        cfg.trainer.max_steps > 0 or cfg.trainer.max_epochs > 0, "trainer.max_steps", "set max_steps or max_epochs"
    )
    _require(all(k > 0 for k in cfg.eval.ks), "eval.ks", "every k must be positive")
    for feat in cfg.eval.features:
        _require(feat in ("embedding", "backbone"), "eval.features", f"'{feat}' is not embedding|backbone")
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


def load_run_config(path: os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a resolved config saved by a run, validate it against the schema, apply overrides."""
    path = Path(path)
    cfg = _merge(OmegaConf.structured(RunConfig), load_yaml(path), str(path), RunConfig)
    cfg = _merge(cfg, _parse_dotlist(normalize_overrides(overrides)), "command line", RunConfig)
    check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    """Plain dict (for hparams, W&B config and weights_only-safe checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------------- entry-point help


HELP_FLAGS = ("-h", "--help")
PRINT_CONFIG = "--print-config"


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def cli_help(prog: str, summary: str, config_dir: Path | None = None) -> str:
    """The ``--help`` text of an entry point that takes config overrides.

    Args:
        prog: the script name (``train.py``).
        summary: its module docstring (usage lines first).
        config_dir: where the group folders live (default: this package).

    Returns:
        The summary, the override forms, every config group with its choices (the base file's default
        marked), the experiment presets with the first comment line of each file, and ``--print-config``.
    """
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    defaults = OmegaConf.to_container(load_yaml(config_dir / "config.yaml")).get("defaults", {})
    lines = [summary.strip(), "", "Options:"]
    lines += [
        "  -h, --help        this text",
        f"  {PRINT_CONFIG}    compose the config from the given overrides, print it as YAML and exit 0",
        "                    (nothing runs; hardware checks are skipped, so a GPU preset prints on a CPU)",
        "",
        "Overrides (later wins), in either form:",
        "  key=value         e.g. data.weak_label.scale=0.25 trainer.max_steps=50",
        "  --key=value       the form `wandb agent` passes with ${args}; `--key value` works too",
        "  GROUP=NAME        pick a file of a config group, e.g. model=resnet_demo trainer=ddp",
        "  experiment=NAME   a preset from configs/experiment (below); GROUP=NAME and key=value override it",
        "",
        "Config groups (configs/<group>/<name>.yaml; * = default):",
    ]
    for group in GROUPS:
        names = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        shown = [f"{n}*" if n == defaults.get(group) else n for n in names]
        lines.append(f"  {group + ':':<9} {', '.join(shown)}")
    lines += ["", "Experiment presets (experiment=NAME):"]
    presets = sorted((config_dir / "experiment").glob("*.yaml"))
    width = max((len(p.stem) for p in presets), default=0)
    lines += [f"  {p.stem:<{width}}  {_first_comment(p)}" for p in presets]
    return "\n".join(lines) + "\n"


def parse_cli(argv: Sequence[str], prog: str, summary: str) -> tuple[list[str], bool]:
    """Split an entry point's arguments: prints ``cli_help`` and exits 0 on ``-h``/``--help``.

    Returns:
        (the overrides, whether ``--print-config`` was given).
    """
    args = list(argv)
    if any(a in HELP_FLAGS for a in args):
        print(cli_help(prog, summary), end="")
        raise SystemExit(0)
    return [a for a in args if a != PRINT_CONFIG], PRINT_CONFIG in args


def print_config(cfg: DictConfig) -> None:
    """Print the resolved config as YAML (``--print-config``)."""
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
