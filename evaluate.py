"""Evaluate a checkpoint (or a random-init baseline): retrieval, k-NN and linear probe, float and binarized.

    python evaluate.py eval.checkpoint=runs/<name>/checkpoints/last.ckpt [key=value ...]
    python evaluate.py eval.checkpoint=runs/<name>            # the run's last.ckpt, else best.ckpt
    python evaluate.py eval.checkpoint=/models/vit.ckpt       # a lone checkpoint: its stored config
    python evaluate.py experiment=demo_cpu model=vit_demo run_name=demo_cpu-vit_demo-random-init
    python evaluate.py eval.checkpoint=runs/<name> --print-config     # the resolved config, no evaluation

With a checkpoint, the run's resolved config.yaml (in the run directory or next to the checkpoint) is
loaded, or for a lone .ckpt the config stored in its hyper_parameters, and the overrides are applied to
it; without one, the config is composed as train.py does and a random-init module is evaluated (its run
directory gets config.yaml, run.json with axes.init="random", metrics.json and eval/). Results: one JSON
per dataset (eval.output, else <run_dir>/eval/<dataset>.json, the checkpoint's folder for a lone .ckpt)
and the metrics in W&B, in the checkpoint's run when run.json names one, else in a new run with job_type
"eval". See evaluation/runner.py for what is computed and how metrics are named.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from configs.cli import parse_cli, print_config, run_main
from configs.compose import compose, normalize_overrides


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the evaluation; returns the flat metrics (also written as JSON and logged to W&B), {} with --print-config."""
    overrides, show = parse_cli(sys.argv[1:] if argv is None else argv, "evaluate.py", __doc__)
    items = normalize_overrides(overrides)
    checkpoint = next((i.split("=", 1)[1] for i in reversed(items) if i.startswith("eval.checkpoint=")), None)

    from evaluation.checkpoint import checkpoint_config, resolve_checkpoint

    ckpt = None
    if checkpoint and checkpoint.lower() not in ("null", "none"):
        ckpt, run_path = resolve_checkpoint(checkpoint)
        rest = [i for i in items if not i.startswith("eval.checkpoint=")]
        cfg = checkpoint_config(ckpt, run_path, [*rest, f"eval.checkpoint={ckpt}"])
    else:
        cfg = compose(items, hardware=not show)
    if show:
        print_config(cfg)
        return {}

    # Heavy imports after the config is known to be valid.
    from evaluation.checkpoint import build_random_module, load_checkpoint_module
    from evaluation.runner import evaluate_run
    from evaluation.wandb_log import log_eval_metrics
    from lit_modules.trainer import seed_run
    from tracking.run_dir import RunDir

    seed_run(cfg)
    if ckpt is not None:
        run_dir = RunDir(run_path)
        module = load_checkpoint_module(cfg, ckpt)
        init = "trained"
    else:
        run_dir = RunDir.for_config(cfg)
        module = build_random_module(cfg)
        init = "random"
        run_dir.start(cfg, init=init)

    try:
        metrics = evaluate_run(cfg, module=module, run_dir=run_dir.path, checkpoint=ckpt)
    except BaseException as err:
        if init == "random":
            run_dir.finish("failed", error=f"{type(err).__name__}: {err}")
        raise
    wandb_id = log_eval_metrics(cfg, metrics, run_dir.name, run_dir.read_run().get("wandb_id"), init, ckpt)
    if init == "random":
        run_dir.write_metrics(metrics)
        run_dir.finish("finished", **({"wandb_id": wandb_id} if wandb_id else {}))

    width = max((len(k) for k in metrics), default=0)
    for name, value in sorted(metrics.items()):
        print(f"{name:<{width}}  {value:.4f}")
    print(f"eval JSON: {cfg.eval.output if cfg.eval.output else run_dir.path / 'eval'}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main, "evaluate.py"))
