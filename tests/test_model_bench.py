"""The model benchmarks run end to end with tiny settings on CPU. Their figures are printed, not asserted: the tests
check that every figure returned is the one printed and that the verdict printed follows from the figures."""

import pytest

from benchmarks import bench_lightning_overhead, bench_train_throughput


@pytest.mark.slow
def test_train_throughput_smoke_runs_on_cpu(capsys):
    results = bench_train_throughput.main(["--smoke"])
    assert [r["case"] for r in results] == ["vit_tiny", "resnet10t"]
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.split("\n") if line.split()[:1] in (["vit_tiny"], ["resnet10t"])}
    for r in results:
        assert r["images_per_sec"] > 0 and r["gflops_per_image_fwd"] > 0 and r["mfu"] is None  # no peak on CPU
        row = rows[r["case"]].split()
        assert row[1:5] == [
            str(r["batch_size"]),
            f"{r['images_per_sec']:.1f}",
            f"{1e3 * r['step_time_s']:.1f}",
            f"{r['gflops_per_image_fwd']:.2f}",
        ]
        assert row[5] == "-"  # MFU column


@pytest.mark.slow
def test_lightning_overhead_smoke_runs_on_cpu(capsys):
    result = bench_lightning_overhead.main(
        ["--rounds", "2", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--img-size", "16"]
    )
    out = capsys.readouterr().out
    for label in ("wall-clock", "process CPU"):
        r = result[label]
        assert len(r["rounds"]["plain"]) == len(r["rounds"]["lightning"]) == 2
        assert r["plain_step_s"] > 0 and r["lightning_step_s"] > 0
        assert f"ratio {r['ratio']:.3f}" in out
    paired = result["process CPU"]["paired_ratio"]
    verdict = "met" if paired <= 1.05 else "NOT met"
    assert f"ratio lightning/plain (process CPU, median of the 2 side-by-side rounds): {paired:.3f}" in out
    assert f"(target <= 1.05: {verdict})" in out
