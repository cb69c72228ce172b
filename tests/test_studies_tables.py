"""Run collection and the paper's tables from generated run directories: exact cells, missing runs,
random-init rows, and the make_report command."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import pytest

from studies.collect import collect_local, collect_wandb, model_preset, read_run_dir, record_from_wandb_run
from studies.report import main as report_main
from studies.tables import (
    MISSING,
    arch_scale_table,
    build_tables,
    choose_metric,
    cost_table,
    embedding_form_table,
    label_space_table,
    multitask_table,
)
from tests.fixtures_studies import make_run_dir

BB = "eval/fashion_mnist/backbone/float/mAP@10"
BB_BIN = "eval/fashion_mnist/backbone/binary/mAP@10"
EMB = "eval/fashion_mnist/embedding/float/mAP@10"
EMB_BIN = "eval/fashion_mnist/embedding/binary/mAP@10"


@pytest.fixture
def demo_runs(tmp_path):
    """The demo's layout: two archs x two scales (one run missing, one cell with two seeds), random-init
    baselines, plus runs that must be left out (failed, another group, no run.json)."""
    root = tmp_path / "runs"
    make_run_dir(
        root,
        "demo_cpu-vit_demo-scale0.25",
        "vit_demo",
        0.25,
        metrics={"perf/images_per_sec": 300.0, "train/loss": 2.0},
        eval_metrics={BB: 0.40, BB_BIN: 0.30},
        sweep_params={"model": "vit_demo", "data.weak_label.scale": 0.25},
        group="demo_cpu",
    )
    make_run_dir(
        root,
        "demo_cpu-vit_demo-scale0.25-seed1",
        "vit_demo",
        0.25,
        seed=1,
        metrics={"perf/images_per_sec": 320.0},
        eval_metrics={BB: 0.44, BB_BIN: 0.32},
        group="demo_cpu",
    )
    make_run_dir(
        root,
        "demo_cpu-vit_demo-scale1.0",
        "vit_demo",
        1.0,
        metrics={"perf/images_per_sec": 310.0},
        eval_metrics={BB: 0.50, BB_BIN: 0.40},
        group="demo_cpu",
    )
    make_run_dir(
        root,
        "demo_cpu-resnet_demo-scale0.25",
        "resnet_demo",
        0.25,
        metrics={"perf/images_per_sec": 150.0},
        eval_metrics={BB: 0.30, BB_BIN: 0.27},
        group="demo_cpu",
    )
    make_run_dir(
        root,
        "demo_cpu-resnet_demo-scale1.0",
        "resnet_demo",
        1.0,
        status="failed",
        eval_metrics={BB: 0.99},
        group="demo_cpu",
    )
    make_run_dir(root, "demo_cpu-vit_demo-random-init", "vit_demo", 1.0, init="random", eval_metrics={BB: 0.10})
    make_run_dir(
        root,
        "demo_cpu-resnet_demo-random-init",
        "resnet_demo",
        1.0,
        init="random",
        eval_metrics={BB: 0.12, "eval/fashion_mnist/backbone/knn_acc": 0.5},
    )
    make_run_dir(root, "other-vit_demo", "vit_demo", 0.25, experiment="other", eval_metrics={BB: 0.9})
    (root / "not-a-run").mkdir()
    (root / "demo_cpu.sweep.json").write_text("{}")
    return root


def test_collect_reads_axes_metrics_eval_and_filters(demo_runs):
    records = collect_local(demo_runs, group="demo_cpu")
    names = [r["run_name"] for r in records]
    assert "demo_cpu-resnet_demo-scale1.0" not in names  # failed: left out
    assert "other-vit_demo" not in names  # another group
    assert len(records) == 6
    rec = next(r for r in records if r["run_name"] == "demo_cpu-vit_demo-scale0.25")
    assert rec["arch"] == "vit_demo" and rec["model"] == "vit_tiny_patch16_224" and rec["scale"] == 0.25
    assert rec[BB] == 0.40 and rec["perf/images_per_sec"] == 300.0 and rec["train/loss"] == 2.0
    assert rec["cost/wall_hours"] == pytest.approx(0.5) and rec["cost/accelerator_hours"] == pytest.approx(0.5)
    assert "data.weak_label.scale" not in rec  # a swept parameter covered by an axis is not repeated
    random_rec = next(r for r in records if r["run_name"] == "demo_cpu-resnet_demo-random-init")
    assert random_rec["init"] == "random" and random_rec["arch"] == "resnet_demo"  # preset from config.yaml
    everything = collect_local(demo_runs, include_unfinished=True)
    assert len(everything) == 8 and {r["status"] for r in everything} == {"finished", "failed"}


def test_model_preset_matches_the_resolved_config():
    assert model_preset({"name": "vit_tiny_patch16_224", "family": "vit", "kwargs": {"patch_size": 8, "depth": 6}}) == (
        "vit_demo"
    )
    assert model_preset({"name": "vit_tiny_patch16_224", "family": "vit", "kwargs": {}}) == "vit_ti16"
    assert (
        model_preset(
            {
                "name": "vit_large_patch16_224",
                "family": "vit",
                "grad_checkpointing": True,
                "drop_path_rate": 0.1,
                "kwargs": {},
            }
        )
        == "vit_l16"
    )
    assert model_preset({"name": "vit_large_patch16_224", "drop_path_rate": 0.3, "kwargs": {}}) is None
    assert model_preset(None) is None


def test_arch_scale_table_cells_missing_runs_and_random_init_rows(demo_runs):
    records = collect_local(demo_runs, group="demo_cpu")
    assert choose_metric(records) == BB  # no run has an embedding head: the backbone metric is chosen
    table = arch_scale_table(records)
    assert table.columns == ["0.25", "1"]
    assert [label for label, _ in table.rows] == [
        "resnet_demo",
        "resnet_demo (random init)",
        "vit_demo",
        "vit_demo (random init)",
    ]
    assert table.cell("resnet_demo", "1") is None  # its only run at scale 1.0 failed
    assert table.cell("vit_demo", "0.25").n == 2
    md = table.to_markdown()
    assert "| model \\ data scale | 0.25 | 1 |" in md
    assert "| resnet_demo | 0.3000 | — |" in md
    assert "| vit_demo | 0.4200 ± 0.0283 (n=2) | 0.5000 |" in md
    assert "| vit_demo (random init) | 0.1000 | 0.1000 |" in md
    assert "| resnet_demo (random init) | 0.1200 | 0.1200 |" in md
    assert "0.0000" not in md  # a missing run is never a zero
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0] == ["model \\ data scale", "0.25", "1"]
    assert rows[1] == ["resnet_demo", "0.3", ""]
    assert rows[3] == ["vit_demo", "0.42", "0.5"]
    assert rows[4] == ["vit_demo (random init)", "0.1", "0.1"]
    tex = table.to_latex()
    assert r"resnet\_demo & 0.3000 & -- \\" in tex and r"\toprule" in tex


def test_rows_split_when_runs_differ_in_more_than_seed(tmp_path):
    root = tmp_path / "runs"
    make_run_dir(root, "a", "vit_demo", 1.0, label_space="raw", eval_metrics={BB: 0.2})
    make_run_dir(root, "b", "vit_demo", 1.0, label_space="clustered", eval_metrics={BB: 0.4})
    make_run_dir(root, "c", "vit_demo", 0.1, label_space="clustered", eval_metrics={BB: 0.3})
    records = collect_local(root)
    table = arch_scale_table(records)
    assert [label for label, _ in table.rows] == ["vit_demo [clustered]", "vit_demo [raw]"]
    assert table.cell("vit_demo [raw]", "1").mean == 0.2 and table.cell("vit_demo [raw]", "0.1") is None
    ls = label_space_table(records)
    assert ls.columns == ["raw", "clustered", "Δ (clustered − raw)"]
    assert ls.cell("vit_demo · scale 1", "Δ (clustered − raw)").mean == pytest.approx(0.2)
    assert (
        ls.cell("vit_demo · scale 0.1", "raw") is None
        and ls.cell("vit_demo · scale 0.1", "Δ (clustered − raw)") is None
    )
    assert "| vit_demo · scale 0.1 | — | 0.3000 | — |" in ls.to_markdown()


def test_multitask_embedding_form_and_cost_tables(tmp_path):
    root = tmp_path / "runs"
    multi = "weak_label+embedding+clf:fashion"
    make_run_dir(
        root,
        "mt",
        "vit_demo",
        tasks=multi,
        stage="multitask",
        devices=8,
        num_nodes=2,
        started="2024-01-01T00:00:00+00:00",
        ended="2024-01-01T02:00:00+00:00",
        metrics={"val/clf/fashion/acc": 0.8, "perf/images_per_sec": 1000.0, "time/epoch_s": 12.0},
        eval_metrics={EMB: 0.6, EMB_BIN: 0.45, BB: 0.5, BB_BIN: 0.4},
    )
    make_run_dir(
        root,
        "wl",
        "vit_demo",
        tasks="weak_label",
        stage="multitask",
        devices=8,
        num_nodes=2,
        metrics={"perf/images_per_sec": 1200.0},
        eval_metrics={BB: 0.45, BB_BIN: 0.35},
    )
    make_run_dir(
        root,
        "st",
        "vit_demo",
        tasks="clf:fashion",
        stage="multitask",
        devices="auto",
        metrics={"val/clf/fashion/acc": 0.85},
        eval_metrics={BB: 0.4},
    )
    records = collect_local(root)
    assert choose_metric(records) == BB  # in every run; the embedding metric only in one
    mt = multitask_table(records)
    assert mt.columns == [EMB, BB, "val/clf/fashion/acc"]
    assert [label for label, _ in mt.rows] == [
        "vit_demo · clf:fashion",
        "vit_demo · weak_label",
        "vit_demo · weak_label+embedding+clf:fashion",
    ]
    assert (
        mt.cell("vit_demo · weak_label", EMB) is None
        and mt.cell("vit_demo · clf:fashion", "val/clf/fashion/acc").mean == 0.85
    )
    ef = embedding_form_table(records)
    assert ef.columns == [
        "embedding float",
        "embedding binary",
        "embedding binary/float",
        "backbone float",
        "backbone binary",
        "backbone binary/float",
    ]
    label = "vit_demo [weak_label+embedding+clf:fashion]"
    assert ef.cell(label, "embedding binary/float").mean == pytest.approx(0.75)
    assert ef.cell("vit_demo [clf:fashion]", "backbone binary") is None
    cost = cost_table(records)
    assert cost.columns == [
        "perf/images_per_sec",
        "cost/devices",
        "cost/wall_hours",
        "cost/accelerator_hours",
        "time/epoch_s",
        BB,
    ]
    assert cost.cell(label, "cost/accelerator_hours").mean == pytest.approx(32.0)  # 2 h x 8 devices x 2 nodes
    assert cost.cell("vit_demo [clf:fashion]", "cost/accelerator_hours") is None  # devices "auto": unknown
    tables, skipped = build_tables(records)
    assert [t.name for t in tables] == ["arch_scale", "multitask", "embedding_form", "cost"]
    assert "label_space" in skipped


def test_swept_parameters_become_row_axes(tmp_path):
    root = tmp_path / "runs"
    for dim, value in ((64, 0.3), (256, 0.5)):
        make_run_dir(
            root,
            f"ef-dim{dim}",
            "vit_demo",
            eval_metrics={EMB: value + 0.1, EMB_BIN: value},
            sweep_params={"model": "vit_demo", "tasks.embedding.dim": dim},
        )
    table = embedding_form_table(collect_local(root))
    assert [label for label, _ in table.rows] == ["vit_demo [dim=64]", "vit_demo [dim=256]"]
    assert table.cell("vit_demo [dim=64]", "embedding binary").mean == 0.3


def test_make_report_writes_tables_plot_and_prints_the_main_table(demo_runs, tmp_path, capsys):
    out = tmp_path / "results"
    assert report_main(["--runs", str(demo_runs), "--group", "demo_cpu", "--out", str(out), "--latex"]) == 0
    text = capsys.readouterr().out
    assert "6 runs from" in text and "| vit_demo | 0.4200 ± 0.0283 (n=2) | 0.5000 |" in text
    for name in (
        "arch_scale.md",
        "arch_scale.csv",
        "arch_scale.tex",
        "embedding_form.md",
        "cost.csv",
        "scaling.png",
        "scaling_fit.json",
        "report.md",
        "records.csv",
    ):
        assert (out / name).is_file(), name
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "label_space.md").exists()  # only clustered labels ran
    report = (out / "report.md").read_text()
    assert "label_space: needs runs with both raw and clustered labels" in report
    records = list(csv.DictReader((out / "records.csv").open()))
    assert len(records) == 6 and records[0][BB] != ""
    assert report_main(["--runs", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_wandb_runs_map_to_the_same_record_shape():
    run = SimpleNamespace(
        name="scale_arch-vit_b16-scale0.1",
        state="finished",
        group="scale_arch",
        config={
            "model": "vit_b16",  # a sweep parameter W&B kept as given
            "data.weak_label.scale": 0.1,
            "optim.lr": 0.001,
            "trainer": {"devices": 8, "num_nodes": 2},
            "axes": {
                "experiment": "scale_arch",
                "arch": "vit_base_patch16_224",
                "model": "vit_base_patch16_224",
                "family": "vit",
                "scale": 0.1,
                "label_space": "clustered",
                "tasks": "weak_label",
                "stage": "pretrain",
                "img_size": 224,
                "seed": 0,
                "init": "trained",
            },
        },
        summary={BB: 0.61, "_runtime": 7200, "_step": 10, "eval/text": "x", "perf/images_per_sec": float("nan")},
    )
    record = record_from_wandb_run(run)
    assert record["arch"] == "vit_b16" and record["scale"] == 0.1 and record["source"] == "wandb"
    assert record[BB] == 0.61 and "perf/images_per_sec" not in record and "eval/text" not in record
    assert record["cost/accelerator_hours"] == pytest.approx(32.0)
    assert record["optim.lr"] == 0.001 and "data.weak_label.scale" not in record

    calls = []

    class FakeApi:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return [run, SimpleNamespace(**{**vars(run), "name": "crashed", "state": "crashed"})]

    records = collect_wandb("me/proj", sweep="abc123", group="scale_arch", tags=["paper"], api=FakeApi())
    assert calls == [("me/proj", {"sweep": "abc123", "group": "scale_arch", "tags": {"$in": ["paper"]}})]
    assert [r["run_name"] for r in records] == ["scale_arch-vit_b16-scale0.1"]


def test_read_run_dir_ignores_folders_without_run_json(tmp_path):
    assert read_run_dir(tmp_path) is None
    assert MISSING == "—"


# A web host that serves a folder but answers 503 (a transient "try again") for one file of one run: a store failing
# mid-collection, a separate process on 127.0.0.1.
FLAKY_HOST = """
import http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/failing/" + sys.argv[2]):
            return self.send_error(503, "Service Unavailable")
        return super().do_GET()
    do_HEAD = do_GET
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.mark.parametrize("file", ["run.json", "metrics.json"])
def test_a_store_that_keeps_failing_while_runs_are_collected_is_an_error_not_a_run_left_out(
    tmp_path, monkeypatch, file
):
    """``make_report.py --runs s3://...``: a run whose run.json (or metrics.json) still failed at the retry deadline was
    logged as "unreadable" and left out of the tables (or kept without its metrics): a mean over fewer seeds, a cell
    shown as missing, with nothing but a warning. The store failing is not the run being unreadable: it stops."""
    import subprocess
    import sys

    import storage

    root = tmp_path / "site"
    for name in ("ok", "failing"):
        make_run_dir(root / "runs", name, metrics={"val/loss": 0.5})
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "1")
    proc = subprocess.Popen([sys.executable, "-c", FLAKY_HOST, str(root), file], stdout=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{proc.stdout.readline().strip()}/runs/"
        assert storage.read_text(f"{base}ok/{file}")  # the host serves the healthy run
        with pytest.raises(storage.StorageError, match=f"failing/{file}"):
            collect_local(base)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
