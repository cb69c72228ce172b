"""Tables (Markdown, CSV, LaTeX) and scaling plots from local run directories or the W&B API.

    python make_report.py --runs runs --group demo_cpu --out results/demo_cpu
    python make_report.py --wandb ENTITY/PROJECT --sweep SWEEP_ID --out results/scale_arch

See studies/report.py.
"""

import sys

from studies.report import main

if __name__ == "__main__":
    sys.exit(main())
