"""Run a W&B sweep file locally, no W&B server needed: grid or seeded random, N at a time, resumable.

    python run_sweep.py sweeps/demo_cpu.yaml
    python run_sweep.py sweeps/scale_arch_cpu.yaml --parallel 2 --dry-run
    python run_sweep.py sweeps/optim_cpu.yaml --count 4 --seed 0 -- trainer.max_steps=100

See studies/sweep.py and docs/sweeps.md (W&B agents, SLURM arrays, multi-node runs).
"""

import sys

from studies.sweep import main

if __name__ == "__main__":
    sys.exit(main())
