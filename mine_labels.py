"""Mine weak labels from text signals and write webdataset shards + manifest + label report.

    python mine_labels.py --config configs/labels/openclipart.yaml [key=value ...]

Examples: ``vocab.min_df=5``, ``image.short_side=128``, ``sources.0.limit=500``, ``run.text_only=true``.

The run is a series of per-shard passes (map, reduce by key hash, count, write). Engines:
``run.engine=local`` (default: ``run.workers`` processes on this machine, one per CPU it may use) or
``run.engine=ray`` (``ray.init()`` here, or the cluster at ``$RAY_ADDRESS``); both write the same bytes.
Interrupted (Ctrl-C, kill -9, a lost node)? Rerun the same command: finished tasks are skipped (their
records live in <output>/_work until the run completes); the run's processes end with the driver and
one run at a time may write an output. A truncated input tar is skipped and listed in the manifest
(``run.on_bad_input=fail`` stops instead). Curation: ``curation.group_by=[author]
curation.max_per_group=400``; ``vocab.max_df_share=0.1``; ``text.boilerplate=[...]``.
See docs/labels_distributed.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from configs.cli import run_main
from configs.labels_schema import load_labels_config

DEFAULT_CONFIG = "configs/labels/openclipart.yaml"


def main(argv: list[str] | None = None) -> int:
    """Mine and write the dataset; returns 0, or 2 after a one-line message for a bad config or input
    (``configs.cli.run_main``)."""
    return run_main(lambda: _main(argv), "mine_labels.py")


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"pipeline YAML (default: {DEFAULT_CONFIG})")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from labels.pipeline import run
    from labels.report import suspects_warning

    result = run(load_labels_config(args.config, overrides))
    s = result.stats
    c = result.counts
    skipped = ", ".join(f"{k}={v}" for k, v in c["skipped"].items()) or "none"
    print(f"dataset: {result.manifest_path or result.output + ' (text only)'}")
    print(f"read {c['read']}  written {c['written']}  skipped {sum(c['skipped'].values())} ({skipped})")
    if c.get("bad_inputs"):
        names = ", ".join(b["input"] for b in c["bad_inputs"][:3]) + (" ..." if len(c["bad_inputs"]) > 3 else "")
        print(f"skipped input files: {len(c['bad_inputs'])} ({names}): see counts.bad_inputs in the manifest")
    print(
        f"splits: train {s['splits']['train']['num_samples']} in {s['num_shards']['train']} shards, "
        f"val {s['splits']['val']['num_samples']} in {s['num_shards']['val']} shards"
    )
    print(
        f"labels: raw {s['vocab']['raw']}  clustered {s['vocab']['clustered']}  "
        f"(embedder {s['clustering']['embedder']}), coverage {s['coverage']['labelled_share']:.1%}, "
        f"labels/image raw {s['labels_per_image']['raw']['mean']:.2f}"
    )
    print(f"time {s['timings']['total_s']:.1f} s  peak RSS {s['peak_rss_mb']:.0f} MB  report: {result.output}/report/")
    warning = suspects_warning(os.path.join(result.output, "report"))
    if warning:
        print(warning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
