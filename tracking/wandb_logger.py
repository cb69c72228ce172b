"""W&B logging that never blocks training: offline by default, online when WANDB_MODE says so."""

from __future__ import annotations

import contextlib
import logging
import os

from omegaconf import DictConfig

from configs.compose import to_dict
from tracking.run_dir import RunDir, axes

log = logging.getLogger(__name__)

# wandb waits 90 s for an unreachable server at init and forever for uploads at the end by default. Bounded here so a
# dead server costs seconds, not minutes (WANDB_INIT_TIMEOUT / WANDB_FINISH_TIMEOUT override them); data that did
# not upload stays in ./wandb for `wandb sync`.
INIT_TIMEOUT_S = 20.0
FINISH_TIMEOUT_S = 120.0


def wandb_mode(cfg: DictConfig) -> str:
    """logger.mode, else the WANDB_MODE environment variable, else 'offline' (no server is reachable here)."""
    return cfg.logger.mode or os.environ.get("WANDB_MODE") or "offline"


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
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(cfg)
    run_id = run_dir.read_run().get("wandb_id") or _new_id()
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
