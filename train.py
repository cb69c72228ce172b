"""Train one run: compose the config, build DataModule, LightningModule and Trainer, fit, write results.

    python train.py experiment=demo_cpu model=resnet_demo data.weak_label.scale=0.25
    python train.py model=vit_b16 trainer=ddp data.batch_size=256              # what `wandb agent` passes
    python train.py experiment=scale_arch_cpu --print-config                  # the resolved config, no run

See configs/compose.py for the composition order and README.md for more.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from configs.cli import parse_cli, print_config, run_main
from configs.compose import compose, to_dict


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run training; returns the final metrics (also written to <run_dir>/metrics.json), or {} with --print-config."""
    overrides, show = parse_cli(sys.argv[1:] if argv is None else argv, "train.py", __doc__)
    cfg = compose(overrides, hardware=not show)
    if show:
        print_config(cfg)
        return {}

    # Heavy imports after the config is known to be valid: a typo fails in a second, not a minute.
    from lightning.pytorch.utilities import rank_zero_only

    from datamodules import build_datamodule
    from lit_modules import MultiTaskModule
    from lit_modules.callbacks import ThroughputMonitor
    from lit_modules.trainer import AbortAllRanksOnError, adapt_topology, build_trainer, resume_checkpoint, seed_run
    from tracking.run_dir import RunDir, lineage
    from tracking.wandb_logger import (
        build_wandb_logger,
        finish_run,
        log_artifacts,
        record_lineage,
        sync_hint,
        wandb_run_id,
    )

    seed_run(cfg)
    run_dir = RunDir.for_config(cfg)
    is_rank_zero = rank_zero_only.rank == 0
    if is_rank_zero:
        t = cfg.trainer  # the hardware is a trainer group's choice (configs/trainer/), never a preset's: say which
        print(
            f"hardware: {t.num_nodes} node(s) x {t.devices} device(s) ({t.accelerator}, strategy {t.strategy}, "
            f"precision {t.precision}); choose with trainer=<group> (train.py --help lists them)"
        )
        run_dir.start(cfg)  # refuses a directory of another config or of a live process; heartbeat until finish
    logger = build_wandb_logger(cfg, run_dir, rank_zero=is_rank_zero)
    abort = AbortAllRanksOnError(on_abort=(lambda msg: run_dir.finish("failed", error=msg)) if is_rank_zero else None)

    try:
        if is_rank_zero and logger is not None:
            run_dir.update(wandb_id=wandb_run_id(logger))
        datamodule = build_datamodule(cfg)
        module = MultiTaskModule(to_dict(cfg), datamodule.num_classes)  # init_from loads in its setup()
        callbacks = [ThroughputMonitor(), abort, *datamodule.callbacks()]
        trainer = build_trainer(cfg, run_dir, logger, callbacks=callbacks)
        ckpt_path = resume_checkpoint(cfg, run_dir)
        adapt_topology(trainer, cfg, ckpt_path)  # optim.on_world_size_change on another world size; before lineage
        manifests = datamodule.manifests()
        run_lineage = lineage(cfg, manifests, world_size=trainer.world_size, accumulate=trainer.accumulate_grad_batches)
        if is_rank_zero:
            run_dir.update(lineage=run_lineage)
            record_lineage(logger, run_lineage, cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as err:
        # A killed or failed run says so in run.json, naming the first rank that failed; the sweep runner re-runs it.
        if is_rank_zero:
            cause = abort.first_failure(err)
            for record in (lambda: run_dir.finish("failed", error=cause), lambda: finish_run(logger, run_dir, 1)):
                try:
                    record()
                except OSError as store_err:  # the run directory's store is what failed (storage.StorageError)
                    print(f"train.py: could not record the failure in {run_dir.path}: {store_err}", file=sys.stderr)
        raise

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics["trainer/global_step"] = trainer.global_step
    if cfg.evaluate_after_fit and is_rank_zero:
        from evaluation.runner import evaluate_run
        from lit_modules.checkpoints import is_checkpoint

        # The weights `evaluate.py eval.checkpoint=<run dir>` scores: last.ckpt (a file, or FSDP's sharded folder,
        # read whole on CPU), EMA weights when the run has an EMA. Without checkpoints: the in-memory weights.
        last = run_dir.last_checkpoint
        if is_checkpoint(last):
            eval_metrics = evaluate_run(cfg, run_dir=run_dir.path, checkpoint=last)
        elif str(cfg.trainer.strategy).startswith("fsdp"):
            eval_metrics = {}  # rank 0 holds only a shard of the weights
            print("evaluate_after_fit skipped: no last.ckpt under fsdp; run `python evaluate.py eval.checkpoint=...`")
        else:
            eval_metrics = evaluate_run(cfg, module=module, run_dir=run_dir.path)
        metrics.update(eval_metrics)
    if is_rank_zero:
        metrics["cost/wall_hours"] = run_dir.elapsed_hours()  # every start of the run, evaluation after fit included
        metrics = run_dir.write_metrics(metrics)
        if logger is not None and cfg.logger.log_artifacts:
            log_artifacts(logger, run_dir, manifests, run_lineage["data_fingerprint"])
        offline = logger is not None and logger.experiment.settings.mode != "online"
        # The run's final figures, the same in W&B's summary as in metrics.json.
        finish_run(logger, run_dir, exit_code=0, final_step=trainer.global_step, summary=metrics)
        run_dir.finish("finished")
        print(f"run directory: {run_dir.path}")
        if offline:
            print(sync_hint())
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main, "train.py"))
