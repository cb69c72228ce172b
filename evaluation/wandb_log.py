"""Evaluation metrics into W&B: the checkpoint's own run (its summary) or a new eval run.

W&B never decides whether an evaluation succeeds: every failure here is a warning, and the JSON
files written by the runner stay the record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from configs.compose import to_dict

log = logging.getLogger(__name__)


def log_eval_metrics(
    cfg: DictConfig,
    metrics: Mapping[str, float],
    run_name: str,
    wandb_id: str | None = None,
    init: str = "trained",
    checkpoint: str | Path | None = None,
) -> str | None:
    """Write ``metrics`` to W&B; returns the run id, or None when logging is off or failed.

    Args:
        cfg: the evaluation config (logger.* says project, entity, mode; logger.wandb=false: no-op).
        metrics: flat {name: value}, set as the run's summary only: a history row would start a second step
            sequence in the training run (docs/sweeps.md, "One W&B run per training run").
        run_name: the run directory's name (the eval run's name when a new run is made).
        wandb_id: the checkpoint's W&B run (run.json "wandb_id"); resumed with resume="allow".
            None: a new run with job_type "eval".
        init: "trained" or "random" (recorded in the new run's config axes).
        checkpoint: recorded in the summary as eval/checkpoint.
    """
    if not cfg.logger.wandb:
        return None
    try:
        import wandb

        from tracking.run_dir import axes
        from tracking.wandb_logger import run_tags, wandb_mode

        os.environ.setdefault("WANDB_SILENT", "true")
        common = dict(project=cfg.logger.project, entity=cfg.logger.entity, dir=".", mode=wandb_mode(cfg))
        if wandb_id:
            run = wandb.init(id=wandb_id, resume="allow", **common)
        else:
            run = wandb.init(
                name=run_name,
                job_type="eval",
                group=cfg.logger.group or cfg.experiment,
                tags=[*run_tags(cfg), f"init:{init}"],
                config={**to_dict(cfg), "axes": axes(cfg, init=init)},
                **common,
            )
        clean = {k: v for k, v in metrics.items() if v == v}  # W&B summaries reject NaN in some backends
        run.summary.update({**clean, "eval/checkpoint": str(checkpoint) if checkpoint else "random-init"})
        run_id = run.id
        run.finish()
        return run_id
    except Exception as err:  # network, auth, a broken local wandb dir: never fail the evaluation
        log.warning(
            "W&B logging of the evaluation failed (%s: %s); the eval JSON files hold the results",
            type(err).__name__,
            err,
        )
        return None
