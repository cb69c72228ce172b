"""Test-wide settings: offline everything, small thread pools, the repo root importable."""

import os
import sys
from pathlib import Path

import pytest

# Fixtures every test module may request: s3_server / s3_bucket (a real moto_server over HTTP).
pytest_plugins = ["tests.fixtures_s3"]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Hypothesis: "ci" (the default, so `make test` and CI runs are reproducible) draws the same examples every run,
# never waits on a deadline and skips the shrink phase (it once ran 5 minutes); the failure blob it prints
# replays the example (`@reproduce_failure`). HYPOTHESIS_PROFILE=dev draws fresh random examples and shrinks them:
# add what it finds as an explicit @example.
from hypothesis import Phase, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    print_blob=True,
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A run with trainer.cpu_threads sets torch's thread count for the whole process: give the next test its own."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    yield
    if torch and threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
