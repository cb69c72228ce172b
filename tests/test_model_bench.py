"""The model benchmarks run end to end with tiny settings on CPU (their figures are printed, not asserted)."""

import pytest

from benchmarks import bench_lightning_overhead, bench_train_throughput


@pytest.mark.slow
def test_train_throughput_smoke_runs_on_cpu(capsys):
    results = bench_train_throughput.main(["--smoke"])
    assert [r["case"] for r in results] == ["vit_tiny", "resnet10t"]
    for r in results:
        assert r["images_per_sec"] > 0 and r["gflops_per_image_fwd"] > 0 and r["mfu"] is None
        assert r["images_per_sec"] == pytest.approx(r["batch_size"] / r["step_time_s"])
    assert "vit_tiny" in capsys.readouterr().out


@pytest.mark.slow
def test_lightning_overhead_smoke_runs_on_cpu(capsys):
    result = bench_lightning_overhead.main(
        ["--rounds", "1", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--img-size", "16"]
    )
    for label in ("wall-clock", "process CPU"):
        r = result[label]
        assert r["plain_step_s"] > 0 and r["lightning_step_s"] > 0
        assert r["ratio"] == pytest.approx(r["lightning_step_s"] / r["plain_step_s"])
    assert "ratio lightning/plain" in capsys.readouterr().out
