"""The README's "Train on your own corpus" commands, run exactly as written on a generated img2dataset corpus."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures_labels import write_tar

REPO = Path(__file__).resolve().parent.parent
README_PATH = "/data/my_corpus"  # the one thing the test substitutes: the corpus path
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# 40 tags, two per caption: each is in 5% of the captions, under the img2dataset config's max_df_share of 10%.
TAGS = (
    "apple boat bridge castle cloud desert dog eagle flower forest guitar harbor horse island lake lamp lighthouse "
    "mountain owl piano pumpkin rabbit river robot rose sailboat snow spider statue sunset tiger tower train tree "
    "tulip umbrella violin volcano whale zebra"
).split()


def readme_commands() -> list[list[str]]:
    """The bash block of the README section "Train on your own corpus", one argv per command."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Train on your own corpus", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def write_corpus(folder: Path, n: int = 800, tars: int = 4) -> None:
    """``n`` img2dataset samples in ``tars`` tars: a distinct noise JPEG, a caption naming two tags, json metadata."""
    samples = []
    for i in range(n):
        a, b = TAGS[i % len(TAGS)], TAGS[(7 * i + 3) % len(TAGS)]
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        jpg = io.BytesIO()
        Image.fromarray(pixels).save(jpg, format="JPEG", quality=90)
        samples.append(
            {
                "__key__": f"{i:09d}",
                "jpg": jpg.getvalue(),
                "txt": f"a photo of a {a} near a {b}",
                "json": {"tags": [a, b], "title": f"The {a}", "key": f"{i:09d}", "status": "success"},
            }
        )
    for t in range(tars):
        write_tar(folder / f"{t:05d}.tar", samples[t::tars])


def test_readme_lists_mine_train_evaluate_on_one_corpus_path():
    commands = readme_commands()
    assert [c[1] for c in commands] == ["mine_labels.py", "train.py", "evaluate.py"]
    assert all(c[0] == "python" for c in commands)
    assert sum(README_PATH in arg for c in commands for arg in c) == 1  # the mining line names the corpus


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="the evaluation line scores Fashion-MNIST too")
def test_readme_own_corpus_commands_run_as_written(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    work = tmp_path / "work"  # the commands' relative paths (configs/, data/, runs/) resolve here, not in the repo
    work.mkdir()
    for name in ("configs", "mine_labels.py", "train.py", "evaluate.py"):
        (work / name).symlink_to(REPO / name)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    outputs = []
    for argv in readme_commands():
        argv = [sys.executable, *(a.replace(README_PATH, str(corpus)) for a in argv[1:])]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)

    # Mining: every sample written, labels from the tags, both splits, a manifest train.py reads.
    assert "read 800  written 800  skipped 0" in outputs[0]
    manifest = json.loads((work / "data/img2dataset/manifest.json").read_text())
    counts = {split: manifest["splits"][split]["num_samples"] for split in ("train", "val")}
    assert counts["train"] + counts["val"] == 800 and counts["val"] > 0
    # Training: the run directory with its checkpoint, at the step asked for, on the CPU sizing.
    run = work / "runs/my-corpus"
    config = (run / "config.yaml").read_text()
    assert "manifest: data/img2dataset/manifest.json" in config and "img_size: 64" in config
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 20
    assert (run / "checkpoints/last.ckpt").is_file()
    # Evaluation: both datasets scored, JSON per dataset.
    for dataset in ("weak_label_val", "fashion_mnist"):
        scored = json.loads((run / "eval" / f"{dataset}.json").read_text())
        assert 0.0 <= scored["metrics"][f"eval/{dataset}/backbone/float/mAP@10"] <= 1.0, scored["metrics"]
    assert "eval/fashion_mnist/backbone/linear_probe_acc" in outputs[2]
