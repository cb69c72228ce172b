"""W&B logging that never blocks training, one W&B run per training run across kills, resumes and evaluations.

- Mode: ``logger.mode``, else WANDB_MODE, else online under `wandb agent` (it has a server) and offline otherwise
  (no server is reachable here; `wandb sync` later).
- One run: the run id is fixed up front and kept in run.json (Lightning #4935), so every restart of the training run
  logs into the same W&B run (in offline mode each start opens a new ``wandb/offline-run-*`` folder of that id).
- One monotonic history: W&B keys history rows by ``_step`` and offline folders cannot know the step an earlier
  folder reached, so an implicit step restarts at 0 in each (docs/sweeps.md cites W&B's resume docs). Here every
  row's ``_step`` is the trainer's global step, and a restarted run skips the steps an earlier start already sent
  (run.json ``wandb_next_step``): the rows it would re-log were trained again from the same checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

import storage
from configs.compose import to_dict
from tracking.identity import agent_ids, science
from tracking.run_dir import RunDir, axes

log = logging.getLogger(__name__)

# wandb waits 90 s for an unreachable server at init and forever for uploads at the end by default. Bounded here so a
# dead server costs seconds, not minutes (WANDB_INIT_TIMEOUT / WANDB_FINISH_TIMEOUT override them); data that did
# not upload stays in ./wandb for `wandb sync`.
INIT_TIMEOUT_S = 20.0
FINISH_TIMEOUT_S = 120.0


def wandb_mode(cfg: DictConfig) -> str:
    """logger.mode, else the WANDB_MODE environment variable, else 'online' under `wandb agent` (the agent talks to
    a server, and the sweep's runs must reach it), else 'offline' (no server is reachable here)."""
    return cfg.logger.mode or os.environ.get("WANDB_MODE") or ("online" if agent_ids() else "offline")


def _step_logger_class():
    """``WandbLogger`` whose history rows are keyed by the trainer's global step (imported lazily: Lightning)."""
    from lightning.fabric.utilities.logger import _add_prefix
    from lightning.pytorch.loggers import WandbLogger

    class StepKeyedWandbLogger(WandbLogger):
        """Logs each row at ``step=trainer global step``; drops rows below ``next_step`` (sent by an earlier start
        of this run) and tells ``on_step`` each new step before sending it, so a kill never leaves a step that a
        restart sends again. ``dropped`` counts the rows left out."""

        def __init__(self, *args: Any, next_step: int = 0, on_step: Callable[[int], None] | None = None, **kw: Any):
            super().__init__(*args, **kw)
            self.next_step = int(next_step)
            self.on_step = on_step
            self.dropped = 0
            self._sent = -1

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            if step is None:
                return super().log_metrics(metrics, step)
            if step < self.next_step:
                self.dropped += 1
                return None
            if step > self._sent:
                self._sent = step
                if self.on_step is not None:
                    self.on_step(step)
            row = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
            self.experiment.log({**row, "trainer/global_step": step}, step=step)
            return None

    return StepKeyedWandbLogger


def run_tags(cfg: DictConfig) -> list[str]:
    a = axes(cfg)
    tags = [
        f"arch:{a['arch']}",
        f"family:{a['family']}",
        f"scale:{a['scale']:g}",
        f"labels:{a['label_space']}",
        f"tasks:{a['tasks']}",
        f"stage:{a['stage']}",
        f"experiment:{a['experiment']}",
    ]
    return tags + list(cfg.logger.tags)


def build_wandb_logger(cfg: DictConfig, run_dir: RunDir, rank_zero: bool = True):
    """A Lightning WandbLogger whose run id is fixed up front and kept in run.json, so a resumed
    run continues the same W&B run (Lightning #4935). Returns None when logging is off.

    When online logging fails (no server, not logged in), it falls back to offline and says so;
    training never blocks on W&B: init gives up after ``INIT_TIMEOUT_S`` and the final upload after
    ``FINISH_TIMEOUT_S`` unless WANDB_INIT_TIMEOUT / WANDB_FINISH_TIMEOUT say otherwise.
    """
    if not cfg.logger.wandb:
        return None
    WandbLogger = _step_logger_class()  # noqa: N806 (a class)

    mode = wandb_mode(cfg)
    record = run_dir.read_run()
    run_id = record.get("wandb_id") or _new_id()
    os.environ.setdefault("WANDB_SILENT", "true")
    kwargs = dict(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=run_dir.name,
        id=run_id,
        resume="allow",
        save_dir=".",
        group=cfg.logger.group or cfg.experiment,
        tags=run_tags(cfg),
        job_type=cfg.stage,
        config={**to_dict(cfg), "axes": axes(cfg)},
        settings=wandb_settings(),
        next_step=_next_step(record, mode),
        on_step=(lambda step: run_dir.update(wandb_next_step=step)) if rank_zero else None,
    )
    logger = WandbLogger(mode=mode, **kwargs)
    if mode == "online" and rank_zero:
        try:
            _ = logger.experiment  # force init now so a dead server shows here, not mid-training
        except Exception as err:  # wandb raises several error types for network/auth failures
            log.warning("W&B online logging failed (%s); logging offline to ./wandb instead", err)
            # The wandb service still holds the half-initialised run under our id ("run ID is in use"): stop it,
            # so the offline run can keep the id (and `wandb sync` later continues the same run).
            import wandb

            with contextlib.suppress(Exception):
                wandb.teardown()
            os.environ["WANDB_MODE"] = "offline"
            logger = WandbLogger(mode="offline", **kwargs)
            try:
                _ = logger.experiment
            except Exception as again:  # the service may not have let the id go yet: a fresh id never clashes
                log.warning("offline W&B run under id %s failed (%s); using a fresh run id", run_id, again)
                with contextlib.suppress(Exception):
                    wandb.teardown()
                kwargs["id"] = _new_id(fresh=True)
                logger = WandbLogger(mode="offline", **kwargs)
    return logger


def _next_step(record: Mapping[str, Any], mode: str) -> int:
    """The first history step this start may log: offline, one past what the run's earlier offline folders hold on
    disk (``tracking.wandb_offline.next_step``, read with W&B's reader); else, or without such folders here, the step
    run.json says an earlier start reached (a row it sent but W&B never wrote stays a gap, never a repeat)."""
    recorded = int(record.get("wandb_next_step") or 0)
    if mode != "offline" or not record.get("wandb_id") or recorded == 0:
        return recorded
    from tracking.wandb_offline import next_step

    try:
        on_disk = next_step(str(record["wandb_id"]))
    except (OSError, RuntimeError, ValueError) as err:
        log.warning(
            "could not read this run's offline W&B folders (%s); starting W&B history at step %d", err, recorded
        )
        return recorded
    return recorded if on_disk is None else on_disk


def wandb_settings():
    """``wandb.Settings`` with the bounded timeouts above, for the ones the environment does not set."""
    import wandb

    bounds = {
        "init_timeout": ("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S),
        "finish_timeout": ("WANDB_FINISH_TIMEOUT", FINISH_TIMEOUT_S),
    }
    return wandb.Settings(**{name: value for name, (env, value) in bounds.items() if not os.environ.get(env)})


def _new_id(fresh: bool = False) -> str:
    """A new run id; under `wandb agent` the agent's WANDB_RUN_ID (unless fresh), so the run joins its sweep."""
    if os.environ.get("WANDB_RUN_ID") and not fresh:
        return os.environ["WANDB_RUN_ID"]
    from wandb.sdk.lib.runid import generate_id

    return generate_id()


def sync_hint() -> str:
    return "sync offline runs later with: wandb sync wandb/offline-run-*"


def wandb_run_id(logger) -> str | None:
    return getattr(logger, "version", None) if logger is not None else None


def record_lineage(logger, lineage: Mapping[str, Any], cfg: DictConfig) -> None:
    """Put the run's lineage (``tracking.run_dir.lineage``) and its flat science keys into the W&B config: the
    tables compare runs by them, and a sweep's group choices (``model: vit_b16``) replace the nested sections of the
    config W&B keeps, so the resolved values are kept under ``science`` too."""
    if logger is None:
        return
    logger.experiment.config.update({"lineage": dict(lineage), "science": science(to_dict(cfg))}, allow_val_change=True)


def finish_run(
    logger, run_dir: RunDir, exit_code: int, final_step: int | None = None, summary: Mapping[str, Any] | None = None
) -> None:
    """End the W&B run of this training process (exit code 0: finished; else failed).

    ``final_step`` (the trainer's global step) closes the history with a row at that step, and ``summary`` (the run's
    final figures, metrics.json) is set after it, so W&B's summary and metrics.json agree (W&B sets the summary from
    the last row when it commits it, at finish). After a clean end every row is committed: a later start of the run
    begins one past the last.
    """
    if logger is None or getattr(logger, "_experiment", None) is None:
        return
    with contextlib.suppress(Exception):  # W&B never decides whether a run succeeded
        run = logger.experiment
        if final_step is not None and final_step >= max(logger.next_step, logger._sent):
            logger.log_metrics({}, step=final_step)
        if summary:
            run.summary.update({k: v for k, v in summary.items() if v is not None})
        run.finish(exit_code=exit_code)
    sent = getattr(logger, "_sent", -1)
    if sent >= 0:
        run_dir.update(wandb_next_step=sent + 1)


def log_artifacts(logger, run_dir: RunDir, manifests: Sequence[str], data_fp: str | None) -> None:
    """``logger.log_artifacts``: the final checkpoint (file, or FSDP's sharded folder) as a "model" artifact and the
    data manifests as a "dataset" artifact named by their fingerprint, so a table row leads back to the exact data
    and weights. In offline mode they are uploaded by `wandb sync`."""
    import wandb

    run = logger.experiment
    if data_fp and manifests:
        data = wandb.Artifact(f"data-{data_fp}", type="dataset", metadata={"manifests": list(manifests)})
        for manifest in manifests:
            data.add_file(str(manifest))
        run.log_artifact(data)
    last = run_dir.last_checkpoint
    if storage.exists(last):
        model = wandb.Artifact(f"model-{run.id}", type="model", metadata={"run_name": run_dir.name})
        if storage.is_remote(last):  # a bucket: W&B records a reference (URL + ETags), the bytes stay there
            model.add_reference(str(last), name=last.name)
        elif last.is_dir():
            model.add_dir(str(last), name=last.name)
        else:
            model.add_file(str(last))
        run.log_artifact(model)
