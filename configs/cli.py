"""The command line of the entry points: ``--help``, ``--print-config``, and expected errors as one line.

``train.py`` and ``evaluate.py`` take config overrides (``key=value``, see ``configs.compose``). Every entry point
runs its ``main`` through ``run_main``, which turns an expected error (a bad config, a missing manifest or shard, an
unreadable checkpoint, a run directory of another config, W&B without a login) into one line on stderr and exit
code 2, as run_sweep.py and make_report.py exit on bad input. ``BSV_DEBUG=1`` in the environment shows the
traceback instead; an unexpected error always shows it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from configs.compose import CONFIG_DIR, load_yaml
from configs.schema import GROUPS

HELP_FLAGS = ("-h", "--help")
PRINT_CONFIG = "--print-config"
DEBUG_ENV = "BSV_DEBUG"

# Errors that mean "the input is wrong", not "the code is": (module, class) pairs, matched along the exception's
# MRO so nothing heavy is imported to recognise them. Each message names the file or key and what to do.
EXPECTED_ERRORS = {
    ("configs.compose", "ConfigError"): "config error",
    ("datamodules.sources", "DataConfigError"): "data error",  # ManifestError too
    ("datamodules.manifest", "ManifestMismatchError"): "data error",
    ("lit_modules.checkpoints", "CheckpointError"): "checkpoint error",
    ("evaluation.checkpoint", "CheckpointMismatchError"): "checkpoint error",
    ("tracking.run_dir", "RunIdentityError"): "run directory",
    ("tracking.run_dir", "RunInUseError"): "run directory",
    ("lit_modules.multitask", "NonFiniteLossError"): "training stopped",
    ("lit_modules.optim", "TopologyChangeError"): "resume error",
    ("labels.sources.base", "InputError"): "input error",
    ("studies.sweep", "SweepError"): "sweep error",
    ("wandb.errors.errors", "Error"): "W&B",  # UsageError (no API key), CommError, AuthenticationError
    ("builtins", "FileNotFoundError"): "file not found",
}
WAY_OUT = {"W&B": " (log in with `wandb login`, or log without a server: logger.mode=offline)"}


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
        config_dir: where the group folders live (default: the ``configs`` package).

    Returns:
        The summary, the override forms, every config group with its choices (the base file's default
        marked), the experiment presets with the first comment line of each file, ``--print-config`` and
        the debug switch.
    """
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    defaults = OmegaConf.to_container(load_yaml(config_dir / "config.yaml")).get("defaults", {})
    lines = [summary.strip(), "", "Options:"]
    lines += [
        "  -h, --help        this text",
        f"  {PRINT_CONFIG}    compose the config from the given overrides, print it as YAML and exit 0",
        "                    (nothing runs; hardware checks are skipped, so a GPU preset prints on a CPU)",
        f"  {DEBUG_ENV}=1       (environment) show the traceback of an expected error (bad config, missing",
        "                    manifest, unreadable checkpoint, ...) instead of its one-line message",
        "",
        "Overrides (later wins), all of the form key=value (no leading --):",
        "  key=value         e.g. data.weak_label.scale=0.25 trainer.max_steps=50",
        "  GROUP=NAME        pick a file of a config group, e.g. model=resnet_demo trainer=ddp data/size=cpu",
        "  experiment=NAME   a preset from configs/experiment (below); GROUP=NAME and key=value override it",
        "  W&B sweeps pass this form with ${args_no_hyphens}.",
        "",
        "Config groups (configs/<group>/<name>.yaml; * = default):",
    ]
    width = max(len(g) for g in GROUPS) + 1
    for group in GROUPS:
        names = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        shown = [f"{n}*" if n == defaults.get(group) else n for n in names]
        lines.append(f"  {group + ':':<{width}} {', '.join(shown)}")
    lines += ["", "Experiment presets (experiment=NAME; full-scale ones run on one GPU unless trainer=NAME says more):"]
    presets = sorted((config_dir / "experiment").glob("*.yaml"))
    pwidth = max((len(p.stem) for p in presets), default=0)
    lines += [f"  {p.stem:<{pwidth}}  {_first_comment(p)}" for p in presets]
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


def expected_error(err: BaseException) -> str | None:
    """The one-line message for an expected error (``EXPECTED_ERRORS``), else None."""
    kind = next(
        (EXPECTED_ERRORS[k] for c in type(err).__mro__ if (k := (c.__module__, c.__qualname__)) in EXPECTED_ERRORS),
        None,
    )
    if kind is None:
        return None
    message = str(err).strip()
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: its own message is the last line
        message = message.splitlines()[-1].split(": ", 1)[-1]
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
        message = f"{message}: {err.filename}"
    return f"{kind}: {message}{WAY_OUT.get(kind, '')}"


def run_main(main: Callable[[], Any], prog: str) -> int:
    """Run an entry point's ``main()``; returns the exit code for ``sys.exit``.

    An int from ``main`` is the exit code, anything else is 0. An expected error (``EXPECTED_ERRORS``) prints
    ``<prog>: <kind>: <message>`` on stderr and returns 2, with the traceback only when ``BSV_DEBUG=1``.
    """
    try:
        result = main()
    except Exception as err:
        message = expected_error(err)
        if message is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"{prog}: {message}  [{DEBUG_ENV}=1 shows the traceback]", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
