"""Run a W&B sweep file locally, without a W&B server: validate, expand, execute, resume.

The YAML files under ``sweeps/`` are W&B's own format, so ``wandb sweep`` + ``wandb agent`` run them
unchanged against a server. This module runs the same files with no server::

    python run_sweep.py sweeps/demo_cpu.yaml                    # every run, one after another
    python run_sweep.py sweeps/scale_arch_cpu.yaml --dry-run    # print the runs and their commands
    python run_sweep.py sweeps/scale_arch.yaml --parallel 4 --gpus 0,1,2,3,4,5,6,7
    python run_sweep.py sweeps/demo_cpu.yaml -- trainer.max_steps=50   # extra overrides for every run

- Validation: what a local run needs (an ``${args...}`` macro, no null values, no runner keys, flat parameters);
  every run's overrides must compose with ``configs.compose`` before anything starts. W&B's own schema is checked
  by ``wandb sweep`` on the server, and for every shipped file by the tests (tests/test_studies_sweeps.py).
- Expansion: ``grid`` with itertools.product in W&B's order; ``random`` draws, seeded (``--count``, ``--seed``),
  from the distributions the shipped sweeps use (values, uniform, int_uniform, log_uniform_values). They are a few
  lines here because W&B's engine (``sweeps``) pins numpy<2; ``bayes`` and the other distributions need
  ``wandb agent``.
- Runs: name = sweep name + the run's varying parameters (deterministic); command = the sweep's
  ``command:`` with W&B's macros expanded exactly as ``wandb agent`` expands them, followed by
  ``logger.group=<sweep name> run_name=<name> output_dir=<dir>`` and any extra overrides.
  W&B logs offline unless ``--wandb-mode`` says otherwise.
- Resume: each run is decided from its directory (``decide``): finished -> skipped; killed, failed or crashed ->
  started again, and train.py continues from its last checkpoint by itself (``resume=auto``); running now ->
  left alone; a directory whose stored config differs from the plan -> named, and redone only with ``--rerun``
  (the old directory moved aside). Ctrl-C stops the live runs and still writes the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tracking.run_dir import write_json_atomic

log = logging.getLogger(__name__)

# What `wandb agent` runs when a sweep file has no `command:`.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# The argument macros `wandb agent` fills in (wandb/sdk/launch/sweeps/utils.py, create_sweep_command_args).
ARG_MACROS = (
    "args",
    "args_no_hyphens",
    "args_no_equals",
    "args_no_boolean_flags",
    "args_json",
    "args_append_hydra",
    "args_override_hydra",
)
# Set by this runner for every run; a sweep parameter or extra override must not set them.
RUNNER_KEYS = ("logger.group", "run_name", "output_dir")
LOCAL_METHODS = ("grid", "random")
MAX_GRID_RUNS = 100_000
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class SweepError(ValueError):
    """A sweep file, run or override that cannot be run; the message names the file and the problem."""


# ------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: ``name`` is the file's ``name:`` (else its stem); ``config`` the raw mapping."""

    path: Path
    name: str
    config: dict

    @property
    def parameters(self) -> dict:
        return self.config.get("parameters", {})


def load_sweep(path: os.PathLike | str) -> Sweep:
    """Read a W&B sweep YAML (safe loader), validate it, and return it.

    Raises:
        SweepError: naming the file and every problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: cannot parse YAML: {err}") from None
    validate_sweep(config, source=str(path))
    name = _safe(str(config.get("name") or path.stem))
    return Sweep(path=path, name=name, config=config)


def validate_sweep(config: Any, source: str = "sweep") -> None:
    """Check a sweep config for what a local run needs (``_local_problems``).

    Raises:
        SweepError: listing every problem found, each naming the field.
    """
    if not isinstance(config, dict):
        raise SweepError(f"{source}: a sweep file holds a mapping (program, method, metric, parameters, command)")
    problems = _local_problems(config)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise SweepError(f"{source}: invalid sweep config:\n  - " + "\n  - ".join(unique))


def _local_problems(config: dict) -> list[str]:
    problems: list[str] = []
    command = config.get("command", list(DEFAULT_COMMAND))
    macros = (
        [m for token in command for m in re.findall(r"\$\{([^}]*)\}", str(token))] if isinstance(command, list) else []
    )
    if not any(m in ARG_MACROS for m in macros):
        problems.append("command: no ${args...} macro, so the sweep's parameters would never reach the program")
    params = config.get("parameters")
    if not isinstance(params, dict) or not params:
        problems.append("parameters: a mapping of at least one parameter is required")
    for name, spec in params.items() if isinstance(params, dict) else ():
        if name in RUNNER_KEYS:
            problems.append(f"parameters.{name}: set by the runner (sweep name, run name, --output-dir)")
        if not isinstance(spec, dict):
            problems.append(f"parameters.{name}: a mapping (value, values, distribution, min, max) is required")
            continue
        values = spec.get("values", [spec["value"]] if "value" in spec else [])
        if isinstance(values, list) and any(v is None for v in values):
            problems.append(f"parameters.{name}: null reaches the program as the string 'None'")
        if "parameters" in spec:
            problems.append(f"parameters.{name}: nested parameters are not expanded locally; use dotted keys")
    return problems


# ---------------------------------------------------------------------------------- expansion


def varying_parameters(config: Mapping[str, Any]) -> list[str]:
    """Parameter names that can differ between runs (anything but a single ``value:``), in file order."""
    names = []
    for name, spec in config.get("parameters", {}).items():
        if isinstance(spec, dict) and set(spec) - {"value", "description"}:
            names.append(name)
    return names


def expand(config: Mapping[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The runs of a sweep as flat ``{parameter: value}`` dicts, keys in the file's order.

    Args:
        config: a validated sweep config.
        count: grid: the first ``count`` runs (like ``wandb agent --count``); random: the number of draws
            (default: the file's ``run_cap``).
        seed: seeds random search, so the same seed always gives the same runs.

    Returns:
        grid: every combination, in the order W&B's grid search proposes them; random: the distinct draws.
    """
    method = config.get("method")
    if method == "grid":
        runs = _expand_grid(config)
        return runs[:count] if count else runs
    if method == "random":
        n = count or config.get("run_cap")
        if not n or n < 1:
            raise SweepError("random search needs a number of runs: pass --count N (or set run_cap in the file)")
        return _expand_random(config, int(n), seed)
    raise SweepError(
        f"method '{method}' cannot run locally: it needs metric feedback from a W&B server "
        f"(use `wandb sweep` + `wandb agent`), or use one of {LOCAL_METHODS}"
    )


def parameter_kind(spec: Mapping[str, Any]) -> str:
    """W&B's distribution of a parameter spec: ``distribution`` when given, else what the keys imply (as the
    schema's defaults do): ``value`` constant, ``values`` categorical, integer ``min``/``max`` int_uniform, else uniform."""
    if "distribution" in spec:
        return str(spec["distribution"])
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    ints = all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("min", "max"))
    return "int_uniform" if ints else "uniform"


def _expand_grid(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination, as W&B's grid search orders them: itertools.product over the discrete parameters
    sorted by name (the last name varies fastest); constants join every run."""
    params = config.get("parameters", {})
    constants, axes = {}, {}
    for name, spec in params.items():
        kind = parameter_kind(spec)
        if kind not in GRID_KINDS:
            raise SweepError(f"parameters.{name}: grid search takes {', '.join(GRID_KINDS)} parameters, not {kind}")
        if kind == "constant":
            constants[name] = spec["value"]
        elif kind == "int_uniform":
            axes[name] = list(range(spec["min"], spec["max"] + 1))
        elif kind == "q_uniform":
            axes[name] = np.arange(spec["min"], spec["max"], spec.get("q", 1.0)).tolist()
        else:
            axes[name] = list(spec["values"])
    names = sorted(axes)
    total = math.prod(len(axes[n]) for n in names)
    if total > MAX_GRID_RUNS:
        raise SweepError(f"grid has {total} runs, more than {MAX_GRID_RUNS}")
    runs = [{**constants, **dict(zip(names, combo))} for combo in itertools.product(*(axes[n] for n in names))]
    return [{name: run[name] for name in params} for run in runs]


def _draw(spec: Mapping[str, Any], rng: random.Random) -> Any:
    """One draw of a W&B parameter, for the distributions the shipped sweeps use."""
    kind = parameter_kind(spec)
    draw = {
        "constant": lambda: spec["value"],
        "categorical": lambda: rng.choice(spec["values"]),
        "int_uniform": lambda: rng.randint(spec["min"], spec["max"]),
        "uniform": lambda: rng.uniform(spec["min"], spec["max"]),
        "log_uniform_values": lambda: math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"]))),
    }
    if kind not in draw:
        raise SweepError(
            f"distribution '{kind}' is not drawn locally ({', '.join(draw)}): run this sweep with wandb agent"
        )
    return draw[kind]()


def _expand_random(config: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # own generator: the same seed gives the same runs whatever else draws
    params = config.get("parameters", {})
    runs, seen = [], set()
    for _ in range(n):
        run = {name: _draw(spec, rng) for name, spec in params.items()}
        key = params_hash(run)
        if key not in seen:
            seen.add(key)
            runs.append(run)
    if len(runs) < n:
        log.warning("random search drew %d duplicate parameter sets; %d distinct runs remain", n - len(runs), len(runs))
    return runs


# ------------------------------------------------------------------------------ names, commands


def params_hash(params: Mapping[str, Any], length: int = 8) -> str:
    """A short stable hash of a run's parameters."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


def _format_number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4g}"
    return text if any(c in text for c in ".einf") else text + ".0"


def _name_part(key: str, value: Any) -> str:
    last = key.split(".")[-1]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return last if value else f"no_{last}"
    if isinstance(value, (int, float)):
        return f"{last}{_format_number(value)}"
    return f"{last}{json.dumps(value, sort_keys=True, separators=(',', ':'))}"


def run_name(sweep_name: str, params: Mapping[str, Any], varying: Sequence[str], hashed: bool = False) -> str:
    """``<sweep>-<part>-<part>``: group choices and strings as their value (``vit_s16``), numbers as
    ``<last key><value>`` (``scale0.25``), booleans as ``<key>``/``no_<key>``; filesystem-safe.

    ``hashed`` (random search, or a collision) appends a hash of all parameters; names over 120
    characters are cut and hashed too.
    """
    parts = [sweep_name] + [_name_part(k, params[k]) for k in varying if k in params]
    name = _safe("-".join(parts))
    if hashed or len(name) > 120:
        name = f"{name[:100]}-{params_hash(params)}"
    return name


def command_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument macros of one run (``args``, ``args_no_hyphens``, ...): wandb's own
    ``create_sweep_command_args``, the function ``wandb agent`` calls, so the formatting is W&B's by construction."""
    # Semi-private in wandb 0.31 (pinned in requirements.txt); tests pin its output. Imported here: wandb takes 2 s.
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {key: {"value": value} for key, value in params.items()}})


def build_command(
    config: Mapping[str, Any],
    params: Mapping[str, Any],
    python: str = sys.executable,
    runner_items: Sequence[tuple[str, str]] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The command of one run: the sweep's ``command:`` (W&B's default when absent) with its macros
    expanded as ``wandb agent`` does, then ``runner_items`` (key, value) in the same flag style, then ``extra``.

    ``${envvar:NAME}`` goes through wandb's ``create_sweep_command``; ``${env}`` expands to nothing (the
    environment is passed directly) and ``${interpreter}`` to ``python``.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    template = [str(t) for t in (config.get("command") or DEFAULT_COMMAND)]
    macros: dict[str, Any] = command_args(params)
    macros.update(env=[], interpreter=[python], program=[str(config["program"])] if config.get("program") else [])
    command: list[str] = []
    # create_sweep_command edits the list it is given: hand it a copy. The loop is wandb_agent.py's own.
    for token in create_sweep_command(list(template)):
        token = str(token)
        command += (macros.get(token[2:-1]) or []) if token.startswith("${") and token.endswith("}") else [token]
    hyphens = any(t in template for t in ("${args}", "${args_no_boolean_flags}", "${args_no_equals}"))
    command += [f"{'--' if hyphens else ''}{key}={value}" for key, value in runner_items]
    command += list(extra)
    return command


# ----------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, parameters, full command, the overrides in it (the command's items after the
    program: what train.py composes) and its run directory."""

    name: str
    params: dict
    command: list
    run_dir: Path
    program: str | None = None
    overrides: list = field(default_factory=list)


def _override_key(item: str) -> str:
    return item.lstrip("-+").split("=", 1)[0]


def plan(
    sweep: Sweep,
    output_dir: os.PathLike | str = "runs",
    count: int | None = None,
    seed: int = 0,
    extra: Sequence[str] = (),
    python: str | None = None,
    shard: tuple[int, int] | None = None,
) -> list[PlannedRun]:
    """Expand a sweep into named runs with their commands.

    Args:
        sweep: from ``load_sweep``.
        output_dir: parent of the run directories (passed to every run as ``output_dir``).
        count, seed: see ``expand``.
        extra: overrides appended to every run's command (they win over the sweep's parameters).
        python: interpreter for ``${interpreter}`` (default: this one).
        shard: ``(index, total)``: keep runs ``index, index + total, ...`` (one agent per node or array task).

    Returns:
        The runs, in expansion order.
    """
    from configs.compose import ConfigError, normalize_overrides

    try:
        normalized = normalize_overrides(extra)
    except ConfigError as err:
        raise SweepError(f"extra overrides: {err}") from None
    for item in normalized:
        if _override_key(item) in RUNNER_KEYS:
            raise SweepError(f"extra override '{item}': {_override_key(item)} is set by the runner (use --output-dir)")
    method = sweep.config.get("method")
    param_sets = expand(sweep.config, count=count, seed=seed)
    varying = varying_parameters(sweep.config)
    names = [run_name(sweep.name, p, varying, hashed=method != "grid") for p in param_sets]
    dupes = {n for n in names if names.count(n) > 1}
    names = [run_name(sweep.name, p, varying, hashed=True) if n in dupes else n for n, p in zip(names, param_sets)]
    import storage

    if storage.is_remote(output_dir):  # Path("s3://b/runs") would quietly be the local folder "s3:/b/runs"
        raise SweepError(
            f"--output-dir {output_dir}: the local sweep runner keeps its run directories (sweep.log, sweep.json, "
            "moved-aside reruns) on a local or shared file system; for a bucket, run each train.py with "
            "output_dir=<url> (or `wandb agent`)"
        )
    out_dir = Path(output_dir)
    program = str(sweep.config["program"]) if sweep.config.get("program") else None
    runs = []
    for name, params in zip(names, param_sets):
        items = [("logger.group", sweep.name), ("run_name", name), ("output_dir", str(out_dir))]
        command = build_command(sweep.config, params, python=python or sys.executable, runner_items=items, extra=extra)
        after = command[command.index(program) + 1 :] if program in command else [c for c in command if "=" in c]
        runs.append(PlannedRun(name, params, command, out_dir / name, program, after))
    if shard is not None:
        index, total = shard
        runs = runs[index::total]
    return runs


def composes(program: str | None) -> bool:
    """Whether a program takes this repo's config overrides (train.py, evaluate.py)."""
    return program is not None and Path(program).name in ("train.py", "evaluate.py")


def compose_runs(runs: Sequence[PlannedRun], config_dir: os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Compose every run's overrides with ``configs.compose`` (hardware checks aside: the planning machine need not be
    the training one) before anything starts.

    Returns:
        ``{run name: its science keys}`` (``tracking.identity.science``: what makes a run this run), for the runs
        of a program that composes (train.py, evaluate.py).

    Raises:
        SweepError: naming each run whose overrides do not compose, with the config error.
    """
    from configs.compose import ConfigError, compose, to_dict
    from tracking.identity import science

    problems, composed, cache = [], {}, {}
    for run in runs:
        if not composes(run.program):
            continue
        # The runner's own items are valid by construction and differ per run: compose the rest once.
        key = tuple(o for o in run.overrides if _override_key(o) not in RUNNER_KEYS)
        if key not in cache:
            try:
                cache[key] = science(to_dict(compose(list(key), config_dir=config_dir, hardware=False)))
            except ConfigError as err:
                cache[key] = None
                problems.append(f"run {run.name}: {err}")
        if cache[key] is not None:
            composed[run.name] = cache[key]
    if problems:
        raise SweepError("overrides that do not compose:\n  - " + "\n  - ".join(problems))
    return composed


def check_overrides(runs: Sequence[PlannedRun], config_dir: os.PathLike | None = None) -> int:
    """``compose_runs``; returns the number of distinct configurations checked."""
    return len({json.dumps(v, sort_keys=True, default=str) for v in compose_runs(runs, config_dir).values()})


# ---------------------------------------------------------------------------------- execution


def _run_record(run_dir: os.PathLike) -> dict[str, Any] | None:
    """``<run_dir>/run.json``, ``{}`` when unreadable, None when missing."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_status(run_dir: os.PathLike) -> str:
    """A run's status now (``tracking.run_dir.effective_status``: "finished", "running", "failed", "crashed" for a
    run whose process is gone, ...), "missing" or "unreadable"."""
    from tracking.run_dir import effective_status

    record = _run_record(run_dir)
    if record is None:
        return "missing"
    return effective_status(record) if record else "unreadable"


@dataclass(frozen=True)
class Decision:
    """What the runner does with a planned run, and why (``--dry-run`` prints both).

    action: "run" (new), "resume" (unfinished: train.py continues from its last checkpoint), "skip" (finished, or
    running now elsewhere), "rerun" (its directory is moved aside first: ``--rerun``/``--force``), "conflict" (its
    directory holds another configuration and it is unfinished: train.py would refuse it; not started).
    """

    action: str
    reason: str


def _stored_science(run_dir: Path) -> dict[str, Any] | None:
    from tracking.identity import science

    try:
        return science(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        return None


def decide(
    run: PlannedRun, planned: Mapping[str, Any] | None = None, rerun: bool = False, force: bool = False
) -> Decision:
    """The action for one run from its directory: status, and whether its stored config is the planned one.

    Args:
        planned: the run's composed science keys (``compose_runs``); None for a program that does not compose,
            whose recorded overrides (sweep.json) are compared instead.
        rerun: redo runs whose configuration changed. force: redo every run that is not running now.
    """
    from tracking.identity import differences

    record = _run_record(run.run_dir)
    if record is None:
        return Decision("run", "new")
    status = run_status(run.run_dir)
    stored = _stored_science(run.run_dir) if planned is not None else None
    if stored is not None:
        changed = differences(stored, planned, limit=4)
    else:
        recorded = _recorded_overrides(run.run_dir)
        changed = (
            [f"overrides {_comparable(recorded)} -> {_comparable(run.overrides)}"]
            if recorded is not None and _comparable(recorded) != _comparable(run.overrides)
            else []
        )
    what = "; ".join(changed)
    if status == "running":
        where = f" (pid {record.get('pid')} on {record.get('host')})" if record.get("pid") else ""
        return Decision("skip", f"running now{where}")
    if force:
        return Decision("rerun", f"--force: was {status}" + (f"; config changed: {what}" if changed else ""))
    if changed and rerun:
        return Decision("rerun", f"config changed: {what}")
    if changed and status == "finished":
        return Decision("skip", f"finished, but its config differs from this plan ({what}); --rerun redoes it")
    if changed:
        return Decision("conflict", f"its directory holds another config ({what}); --rerun moves it aside")
    if status == "finished":
        return Decision("skip", "finished earlier")
    error = f": {record.get('error')}" if record.get("error") else ""
    return Decision("resume", f"was {status}{error}")


def move_aside(run_dir: Path) -> Path:
    """Move a run directory to ``<output_dir>/.replaced/<name>-<UTC time>`` (nothing is deleted); returns where."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    target = run_dir.parent / ".replaced" / f"{run_dir.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir, target)
    return target


@dataclass
class RunOutcome:
    """What happened to one planned run: "finished", "failed", "skipped" (finished earlier) or "not started"."""

    name: str
    status: str
    returncode: int | None = None
    seconds: float = 0.0
    params: dict = field(default_factory=dict)
    note: str = ""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _recorded_overrides(run_dir: Path) -> list[str] | None:
    try:
        return json.loads((run_dir / "sweep.json").read_text()).get("overrides")
    except (OSError, ValueError, AttributeError):
        return None


def _comparable(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if _override_key(o) not in RUNNER_KEYS]


def _gpu_slots(gpus: str | None, parallel: int) -> list[str | None]:
    if not gpus:
        return [None] * parallel
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if len(ids) % parallel:
        raise SweepError(f"--gpus lists {len(ids)} devices, which do not split evenly over --parallel {parallel}")
    per = len(ids) // parallel
    return [",".join(ids[i * per : (i + 1) * per]) for i in range(parallel)]


def execute(
    runs: Sequence[PlannedRun],
    sweep_name: str = "sweep",
    parallel: int = 1,
    env: Mapping[str, str] | None = None,
    gpus: str | None = None,
    launcher: Sequence[str] = (),
    fail_fast: bool = False,
    echo: Callable[[str], None] | None = None,
    decisions: Mapping[str, Decision] | None = None,
    metric: str | None = None,
) -> list[RunOutcome]:
    """Run the planned runs, ``parallel`` at a time, as ``decisions`` say (default: ``decide`` on each run).

    Args:
        runs: from ``plan``.
        sweep_name: recorded in each run's ``sweep.json``.
        parallel: runs at once. With 1 a run's output streams to this terminal; with more it goes to
            ``<run_dir>/sweep.log``.
        env: the environment of every run (default: this process's).
        gpus: comma-separated device ids split evenly over the parallel slots (CUDA_VISIBLE_DEVICES).
        launcher: tokens put before each command (e.g. ``srun --ntasks-per-node=8``).
        fail_fast: start no new run after one fails.
        echo: where progress lines go.
        decisions: ``{run name: Decision}``; "skip" and "conflict" runs are not started, "rerun" runs start after
            their directory is moved aside.
        metric: the sweep's ``metric.name``, recorded in sweep.json (the metric its tables show).

    Returns:
        One outcome per run, in plan order. Ctrl-C stops the live runs (SIGTERM) and returns: they are
        "interrupted", the runs never started "not started".
    """
    if parallel < 1:
        raise SweepError("--parallel must be at least 1")
    # Flushed at once, so a progress line never lands after the output of the run it announces.
    echo = echo or (lambda line: print(line, flush=True))
    decisions = dict(decisions or {})
    slots: queue.Queue = queue.Queue()
    for slot in _gpu_slots(gpus, parallel):
        slots.put(slot)
    base_env = dict(os.environ if env is None else env)
    outcomes: dict[str, RunOutcome] = {}
    todo: list[PlannedRun] = []
    for run in runs:
        decision = decisions.get(run.name) or decide(run)
        decisions[run.name] = decision
        if decision.action in ("skip", "conflict"):
            status = "skipped" if decision.action == "skip" else "conflict"
            outcomes[run.name] = RunOutcome(run.name, status, params=run.params, note=decision.reason)
            echo(f"{'skip' if status == 'skipped' else 'CONFLICT'} {run.name}: {decision.reason}")
        else:
            todo.append(run)
    live: set[subprocess.Popen] = set()
    lock = threading.Lock()
    stop = threading.Event()
    interrupted = threading.Event()
    position = {run.name: i + 1 for i, run in enumerate(todo)}

    def launch(run: PlannedRun) -> RunOutcome:
        if stop.is_set():
            why = "interrupted (Ctrl-C)" if interrupted.is_set() else "an earlier run failed (--fail-fast)"
            return RunOutcome(run.name, "not started", params=run.params, note=why)
        slot = slots.get()
        try:
            decision = decisions[run.name]
            if decision.action == "rerun" and run.run_dir.exists():
                echo(f"moved {run.run_dir} aside to {move_aside(run.run_dir)} ({decision.reason})")
            run.run_dir.mkdir(parents=True, exist_ok=True)
            record = {
                "sweep": sweep_name,
                "params": run.params,
                "overrides": run.overrides,
                "command": run.command,
                "metric": metric,
            }
            write_json_atomic(run.run_dir / "sweep.json", record)
            run_env = dict(base_env)
            if slot is not None:
                run_env["CUDA_VISIBLE_DEVICES"] = slot
            command = [*launcher, *run.command]
            resumed = f" ({decision.reason})" if decision.action == "resume" else ""
            device = f" [CUDA_VISIBLE_DEVICES={slot}]" if slot is not None else ""
            echo(f"[{position[run.name]}/{len(todo)}] start {run.name}{resumed}{device}\n  $ {shlex.join(command)}")
            start = time.monotonic()
            with contextlib.ExitStack() as stack:
                kwargs: dict[str, Any] = {}
                if parallel > 1:
                    logfile = stack.enter_context(open(run.run_dir / "sweep.log", "a"))
                    kwargs = {"stdout": logfile, "stderr": subprocess.STDOUT}
                with lock:  # a Ctrl-C seen after the check at the top must not leave a run it cannot stop
                    if stop.is_set():
                        why = "interrupted (Ctrl-C)" if interrupted.is_set() else "an earlier run failed (--fail-fast)"
                        return RunOutcome(run.name, "not started", params=run.params, note=why)
                    proc = subprocess.Popen(command, env=run_env, **kwargs)
                    live.add(proc)
                try:
                    returncode = proc.wait()
                finally:
                    with lock:
                        live.discard(proc)
            seconds = time.monotonic() - start
        finally:
            slots.put(slot)
        # Ctrl-C reaches the run too (one terminal process group): it may end before the runner sees the interrupt.
        if returncode != 0 and (interrupted.is_set() or returncode in (-signal.SIGINT, 128 + signal.SIGINT)):
            with lock:  # the run saw the Ctrl-C first: start nothing more while the runner's own handler catches up
                interrupted.set()
                stop.set()
            return RunOutcome(run.name, "interrupted", returncode, seconds, params=run.params, note="Ctrl-C")
        status = "finished" if returncode == 0 else "failed"
        note = "" if returncode == 0 else f"exit code {returncode}"
        if returncode == 0 and composes(run.program) and run_status(run.run_dir) != "finished":
            note = "exit code 0 but run.json does not say finished"
        if status == "failed" and fail_fast:
            stop.set()
        log_hint = f" (log: {run.run_dir / 'sweep.log'})" if parallel > 1 and status == "failed" else ""
        echo(f"{status} {run.name} in {seconds:.0f}s{(': ' + note) if note else ''}{log_hint}")
        return RunOutcome(run.name, status, returncode, seconds, params=run.params, note=note)

    pool = ThreadPoolExecutor(max_workers=parallel)
    futures = {pool.submit(launch, run): run for run in todo}
    try:
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[outcome.name] = outcome
    except KeyboardInterrupt:
        echo("\ninterrupted: stopping the live runs (they resume where they stopped next time)")
        with lock:
            interrupted.set()
            stop.set()
            for proc in live:
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, run in futures.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                outcomes[run.name] = future.result()
            else:
                outcomes[run.name] = RunOutcome(run.name, "not started", params=run.params, note="interrupted (Ctrl-C)")
    finally:
        pool.shutdown(wait=True)
    return [outcomes[run.name] for run in runs]


def summary(outcomes: Sequence[RunOutcome], sweep_name: str) -> str:
    """A plain-text table of outcomes with counts per status."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    head = f"sweep {sweep_name}: {len(outcomes)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    width = max([len(o.name) for o in outcomes] + [3])
    lines = [head, f"  {'run':<{width}}  {'status':<11}  {'time':>7}  note"]
    for o in outcomes:
        took = f"{o.seconds:.0f}s" if o.seconds else "-"
        lines.append(f"  {o.name:<{width}}  {o.status:<11}  {took:>7}  {o.note}")
    return "\n".join(lines)


def write_summary(outcomes: Sequence[RunOutcome], sweep: Sweep, output_dir: Path, started: str) -> Path:
    """Write ``<output_dir>/<sweep>.sweep.json`` (a file, so run collectors never mistake it for a run)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{sweep.name}.sweep.json"
    record = {
        "sweep": sweep.name,
        "file": str(sweep.path),
        "started": started,
        "ended": _now(),
        "runs": [vars(o) for o in outcomes],
    }
    write_json_atomic(path, record)
    return path


# ---------------------------------------------------------------------------------------- CLI


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise SweepError(f"--shard '{text}' must be INDEX/TOTAL with 0 <= INDEX < TOTAL (e.g. 0/4)")
    return int(match.group(1)), int(match.group(2))


def _epilog(sweep_dir: Path = Path(__file__).resolve().parent.parent / "sweeps") -> str:
    lines = [
        "Overrides after `--` go to every run, e.g. `-- trainer.max_steps=50 data.num_workers=0`.",
        "Each run is `train.py` with the sweep's parameters; `python train.py --help` lists the config groups.",
        "",
        "sweep files (sweeps/<name>.yaml):",
    ]
    files = sorted(sweep_dir.glob("*.yaml"))
    width = max((len(p.stem) for p in files), default=0)
    for path in files:
        try:
            description = str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        except yaml.YAMLError:
            description = "(does not parse)"
        lines.append(f"  {path.stem:<{width}}  {description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_sweep.py",
        description="Run a W&B sweep file locally (no W&B server): grid or seeded random, resumable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    parser.add_argument("sweep", help="a W&B sweep YAML, e.g. sweeps/demo_cpu.yaml")
    parser.add_argument("--output-dir", default="runs", help="parent of the run directories (default: runs)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--count", type=int, default=None, help="random: number of runs; grid: the first N")
    parser.add_argument("--seed", type=int, default=0, help="seed of random search (default 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    parser.add_argument("--shard", default=None, help="INDEX/TOTAL: run only this agent's share (e.g. a SLURM array)")
    parser.add_argument("--gpus", default=None, help="device ids split over the parallel slots, e.g. 0,1,2,3")
    parser.add_argument("--launcher", default="", help="prefix for every command, e.g. 'srun --ntasks-per-node=8'")
    parser.add_argument("--python", default=sys.executable, help="interpreter for ${interpreter}")
    parser.add_argument(
        "--wandb-mode", default="offline", choices=("offline", "online", "disabled"), help="WANDB_MODE of the runs"
    )
    parser.add_argument("--fail-fast", action="store_true", help="start no new run after one fails")
    parser.add_argument("--no-check", action="store_true", help="skip composing every run's overrides first")
    parser.add_argument(
        "--rerun", action="store_true", help="redo runs whose config changed (the old directory is moved to .replaced/)"
    )
    parser.add_argument("--force", action="store_true", help="redo every run not running now (old ones moved aside)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``run_sweep.py``: returns 0 when every run finished (or had finished), 1 when one failed or conflicts, 2 on a
    bad sweep, 130 when interrupted (Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before or after the runs: nothing to stop, nothing to report
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = _now()
    try:
        sweep = load_sweep(args.sweep)
        runs = plan(
            sweep,
            output_dir=args.output_dir,
            count=args.count,
            seed=args.seed,
            extra=extra,
            python=args.python,
            shard=_parse_shard(args.shard),
        )
        planned = {} if args.no_check else compose_runs(runs)
        program = sweep.config.get("program")
        if program and not args.dry_run and not Path(program).exists():
            raise SweepError(f"program '{program}' not found from {Path.cwd()}: run from the repository root")
    except SweepError as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    decisions = {run.name: decide(run, planned.get(run.name), args.rerun, args.force) for run in runs}
    if args.dry_run:
        print(f"sweep {sweep.name} ({sweep.path}): {len(runs)} runs, method {sweep.config.get('method')}")
        for run in runs:
            d = decisions[run.name]
            print(f"  {d.action:<8} {run.name}: {d.reason}")
            print(f"    $ {shlex.join([*shlex.split(args.launcher), *run.command])}")
        return 0
    env = dict(os.environ, WANDB_MODE=args.wandb_mode)
    try:
        outcomes = execute(
            runs,
            sweep_name=sweep.name,
            parallel=args.parallel,
            env=env,
            gpus=args.gpus,
            launcher=shlex.split(args.launcher),
            fail_fast=args.fail_fast,
            decisions=decisions,
            metric=(sweep.config.get("metric") or {}).get("name"),
        )
    except SweepError as err:
        print(f"sweep error: {err}", file=sys.stderr)
        return 2
    print(summary(outcomes, sweep.name))
    path = write_summary(outcomes, sweep, Path(args.output_dir), started)
    print(f"summary: {path}")
    if any(o.status == "interrupted" or o.note == "interrupted (Ctrl-C)" for o in outcomes):
        return 130
    return 0 if all(o.status in ("finished", "skipped") for o in outcomes) else 1
