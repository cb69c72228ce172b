"""Rules that only bite on real multi-GPU hardware, enforced on CPU.

* NCCL takes collective tensors only on the rank's own GPU: ``NcclRulesStrategy`` has a root device that is not
  the CPU (``meta``) and refuses any collective tensor elsewhere, then answers with a known CPU result. The data
  position gather (the training loader's ``state_dict`` with world 2, the checkpoint path), the skip-counter reduce
  and the non-finite-loss decision all go through it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.fixtures_data import compose_cfg, make_dataset


class NcclRulesStrategy:
    """A stand-in for a DDP/FSDP strategy on an NCCL process group, for CPU tests.

    ``root_device`` is ``meta`` (not the CPU, as a GPU rank's is not): a collective given a tensor on another
    device raises NCCL's error, so a call site that forgets the move fails here as it would on GPUs. Tensors on
    ``meta`` carry no values, so each collective answers with ``answers[op]`` (a CPU tensor the test chose), and
    records ``(op, device, shape, dtype)`` of what it was given in ``seen``.
    """

    root_device = torch.device("meta")

    def __init__(self, world_size: int, answers: dict[str, torch.Tensor]):
        self.world_size = world_size
        self.answers = answers
        self.seen: list[tuple[str, torch.device, tuple[int, ...], torch.dtype]] = []

    def _check(self, op: str, tensor: torch.Tensor) -> torch.Tensor:
        self.seen.append((op, tensor.device, tuple(tensor.shape), tensor.dtype))
        if tensor.device != self.root_device:
            raise RuntimeError(f"{op}: No backend type associated with device type {tensor.device.type}")
        return self.answers[op]

    def all_gather(self, tensor: torch.Tensor, group=None, sync_grads: bool = False) -> torch.Tensor:
        return self._check("all_gather", tensor)

    def reduce(self, tensor: torch.Tensor, group=None, reduce_op="mean") -> torch.Tensor:
        return self._check("reduce", tensor)

    def broadcast(self, obj, src: int = 0):
        return self._check("broadcast", obj) if isinstance(obj, torch.Tensor) else obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        # Lightning builds this tensor on root_device itself; count it as a collective all the same.
        self._check("reduce", torch.tensor(int(decision), device=self.root_device))
        return bool(self.answers["reduce"].item())


def _fake_trainer(strategy: NcclRulesStrategy, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=rank,
        world_size=strategy.world_size,
        strategy=strategy,
        state=SimpleNamespace(fn="fit"),
        current_epoch=0,
        sanity_checking=False,
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("nccl") / "wl", n_train=16, n_val=4, shard_size=4)


def test_checkpoint_data_position_gather_obeys_nccl_device_rule(shards):
    """``state_dict()`` at a checkpoint with 2 ranks after one step: the slots' progress tensor reaches the collective
    on the root device, and the gathered rows (known answer) are merged into the checkpoint as plain lists."""
    from datamodules import build_datamodule

    dm = build_datamodule(compose_cfg(shards["manifest"], "data.num_workers=2"))
    # 16 samples, batch 4, 2 ranks x 2 workers: one slot cut into 4 pieces of one batch (raw 0, 4, 8, 12)
    rank1 = [[0, 0], [0, 4], [1, 12], [0, 12]]  # rank 1 consumed its first batch (piece 2)
    strategy = NcclRulesStrategy(world_size=2, answers={"all_gather": torch.tensor([[0] * 8, sum(rank1, [])])})
    dm.trainer = _fake_trainer(strategy)
    loader = dm.train_dataloader()
    next(iter(loader))  # rank 0's first step: piece 0
    state = loader.state_dict()  # what Lightning's fit loop saves on every rank
    assert strategy.seen == [("all_gather", torch.device("meta"), (8,), torch.long)]
    assert state["world_size"] == 2
    assert state["loaders"]["weak_label"]["progress"] == [[0, 0], [0, 4], [1, 12], [0, 12]]


def test_skip_counter_reduce_obeys_nccl_device_rule(shards):
    from datamodules import build_datamodule
    from datamodules.datamodule import COUNT_REASONS, DataCountsLogger

    dm = build_datamodule(compose_cfg(shards["manifest"]))
    total = torch.zeros(1, len(COUNT_REASONS), dtype=torch.float64)
    total[0, 0] = 7.0
    strategy = NcclRulesStrategy(world_size=2, answers={"reduce": total})
    trainer = _fake_trainer(strategy)
    trainer.datamodule = dm
    logged = {}
    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: logged.update(m))
    DataCountsLogger().on_train_epoch_end(trainer, module)
    assert [(op, dev) for op, dev, *_ in strategy.seen] == [("reduce", torch.device("meta"))]
    assert logged == {f"data/weak_label/train/{COUNT_REASONS[0]}": 7.0}


def test_nonfinite_decision_obeys_nccl_device_rule():
    from lit_modules import MultiTaskModule
    from tests.fixtures_model import NUM_CLASSES, make_batch, tiny_config

    module = MultiTaskModule(tiny_config(), NUM_CLASSES)
    strategy = NcclRulesStrategy(world_size=2, answers={"reduce": torch.tensor(1)})  # another rank saw a NaN
    module._trainer = _fake_trainer(strategy, rank=0)
    module._trainer.global_step = 0
    losses = {"weak_label": torch.tensor(1.0)}
    with pytest.raises(Exception, match="on another rank"):
        module._losses_finite(losses, make_batch(), 0)
    assert [(op, dev) for op, dev, *_ in strategy.seen] == [("reduce", torch.device("meta"))]


def test_collective_helpers_return_cpu_results_in_one_process():
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from lit_modules.strategy import all_gather_cpu, any_rank, reduce_cpu

    single = SingleDeviceStrategy(device=torch.device("cpu"))
    x = torch.tensor([1, 2, 3])
    assert all_gather_cpu(single, x).tolist() == [[1, 2, 3]]
    assert reduce_cpu(single, x.double()).tolist() == [1.0, 2.0, 3.0]
    assert any_rank(single, True) and not any_rank(single, False)


# ------------------------------------------------------------------------------- per-rank model RNG (R1)


def _rank_forward(rank: int) -> tuple[dict, torch.Tensor]:
    """Build the module under the run seed (as train.py does), start a fit as rank ``rank``, run one training
    forward with drop-path 0.5: (initial weights, pooled feature)."""
    from lightning.pytorch import seed_everything

    from lit_modules import MultiTaskModule
    from tests.fixtures_model import NUM_CLASSES, make_batch, tiny_config

    seed_everything(3)
    module = MultiTaskModule(tiny_config("model.drop_path_rate=0.5", "seed=3"), NUM_CLASSES)
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    module._trainer = SimpleNamespace(global_rank=rank, world_size=2)
    module.on_fit_start()
    module.train()
    with torch.no_grad():
        feature = module(make_batch()["weak_label"]["image"])
    return weights, feature


def test_ranks_start_from_the_same_weights_but_draw_different_drop_path_masks():
    w0, f0 = _rank_forward(0)
    w1, f1 = _rank_forward(1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.allclose(f0, f1)  # other stochastic-depth masks on rank 1
    w0_again, f0_again = _rank_forward(0)
    assert torch.equal(f0, f0_again)  # and reproducible per rank


# ------------------------------------------------------------------ compile after wrapping (R4), real run


def test_compiled_backbone_trains_and_checkpoints_plain_keys(tmp_path, monkeypatch):
    """A real Dynamo-compiled forward + backward (graph capture and AOTAutograd; the ``aot_eager`` backend skips
    inductor's C++ code generation, 2.5 min on this CPU, which benchmarks/gpu_check.py exercises on a GPU)."""
    from lit_modules import MultiTaskModule, load_module
    from tests.fixtures_model import NUM_CLASSES, combined_loader, cpu_trainer, tiny_config

    compile_in_place = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_in_place(self, backend="aot_eager"))

    module = MultiTaskModule(tiny_config("model.compile=true"), NUM_CLASSES)
    assert module.backbone._compiled_call_impl is None  # not compiled before the strategy has wrapped it
    trainer = cpu_trainer(2)
    trainer.fit(module, train_dataloaders=combined_loader(n=4))
    assert module.backbone._compiled_call_impl is not None and trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    keys = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert keys and not any("_orig_mod" in k for k in keys)
    assert set(load_module(tmp_path / "last.ckpt").state_dict()) == set(keys)


# --------------------------------------------- grad checkpointing under DDP with find_unused_parameters (R5)


def _two_process(job: str, port: int, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    import os

    script = Path(__file__).resolve().parent / "fixtures_multigpu.py"
    return subprocess.run(
        [sys.executable, str(script), job, str(port)],
        cwd=script.parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.slow
def test_grad_checkpointing_under_ddp_with_unused_head_trains():
    # TIMM_REENTRANT_CKPT=1 makes timm use reentrant checkpoints, which fail here ("Expected to mark a variable
    # ready only once"); create_backbone must pin non-reentrant ones whatever the environment says.
    proc = _two_process("gradckpt", 29611, env={"TIMM_REENTRANT_CKPT": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 0" in proc.stdout and "OK 1" in proc.stdout


# ------------------------------------------------------------------ one rank's failure ends every rank (R3)


@pytest.mark.slow
def test_one_ranks_data_error_ends_both_ranks_fast_naming_the_cause(tmp_path):
    """Two processes started from outside (as srun / torchrun do: no Lightning launcher to kill the other one);
    rank 1's data raises at its third sample. Both must exit non-zero well under the 30-min collective timeout,
    and rank 0's error must name rank 1's cause (gloo alone says only "Connection closed by peer"; NCCL hangs)."""
    import os
    import time

    script = Path(__file__).resolve().parent / "fixtures_multigpu.py"
    procs = []
    start = time.monotonic()
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29633",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), "failfast", "0", str(tmp_path)],
                cwd=script.parent.parent,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs, ended = [], []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150))  # start-up (imports, model, process group) dominates
            ended.append(time.time())
    finally:
        for p in procs:
            p.kill()
    elapsed = time.monotonic() - start
    (out0, err0), (out1, err1) = outputs
    failed_at = float(err1.split("FAIL_AT ", 1)[1].split()[0])
    assert ended[0] - failed_at < 20, f"rank 0 ended {ended[0] - failed_at:.1f} s after rank 1 failed"
    assert procs[1].returncode != 0 and "CorruptSampleError: corrupt sample" in err1
    assert procs[0].returncode != 0, out0
    assert "rank 0 stops because rank 1 failed: CorruptSampleError: corrupt sample" in err0, err0[-3000:]
    assert "finished" not in out0 + out1
    assert elapsed < 150


# --------------------------------------------------- evaluate_after_fit and evaluate.py score the same weights


def test_evaluate_after_fit_and_evaluate_py_agree_on_ema_weights(tmp_path):
    """One rule (REVIEW R6): both score last.ckpt, with the EMA weights when the run trained an EMA."""
    import evaluate
    import train
    from tests.fixtures_reliability import train_args

    shards = make_dataset(tmp_path / "wl", n_train=32, n_val=16, shard_size=8, scales=(1.0,), img_size=16)
    eval_keys = ["eval.datasets=[weak_label_val]", "eval.features=[backbone]", "eval.ks=[1,5]", "eval.knn_k=5"]
    args = train_args(
        shards["manifest"],
        tmp_path / "runs",
        "ema",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.checkpoint_every_n_steps=3",
        "optim.ema_decay=0.5",
        "evaluate_after_fit=true",
        *eval_keys,
    )
    after_fit = train.main(args)
    again = evaluate.main([f"eval.checkpoint={tmp_path / 'runs' / 'ema'}"])
    scored = {k: v for k, v in after_fit.items() if k.startswith("eval/")}
    assert scored and scored == {k: again[k] for k in scored}
    assert (tmp_path / "runs" / "ema" / "checkpoints" / "best.ckpt").is_file()  # present, and not what is scored

    # ... and those are the EMA weights of last.ckpt, not the live ones (which score differently).
    from configs.compose import load_run_config
    from evaluation.runner import evaluate_run
    from lit_modules import load_module

    run = tmp_path / "runs" / "ema"
    cfg = load_run_config(run / "config.yaml", [])
    last = run / "checkpoints" / "last.ckpt"
    ema = evaluate_run(cfg, module=load_module(last, use_ema=True), run_dir=tmp_path / "x", progress=False)
    live = evaluate_run(cfg, module=load_module(last), run_dir=tmp_path / "y", progress=False)
    assert scored == {k: ema[k] for k in scored}
    assert scored != {k: live[k] for k in scored}


def test_evaluation_is_fp32_by_default_on_every_device(monkeypatch):
    import inspect

    from configs.compose import compose
    from evaluation.embeddings import autocast_context, extract_outputs

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as on an H100
    assert type(autocast_context(torch.device("cuda"))).__name__ == "nullcontext"
    assert type(autocast_context(torch.device("cpu"))).__name__ == "nullcontext"
    assert inspect.signature(extract_outputs).parameters["precision"].default == "fp32"
    assert compose([]).eval.precision == "fp32"
    assert isinstance(autocast_context(torch.device("cpu"), "bf16"), torch.autocast)  # the opt-in


# ------------------------------------------------ stage two finds stage one whatever runner named it (R8)


def _finished_run(output_dir: Path, cfg, name: str) -> Path:
    from tracking.run_dir import RunDir

    run = RunDir(output_dir / name)
    run.start(cfg)
    run.checkpoints.mkdir(parents=True)
    torch.save({"state_dict": {}}, run.last_checkpoint)
    run.finish("finished")
    return run.last_checkpoint


@pytest.mark.parametrize("runner", ["local_runner", "wandb_agent"])
def test_stage_two_init_from_finds_stage_one_under_either_runner(tmp_path, runner):
    from configs.compose import compose
    from studies.sweep import run_name
    from tracking.run_dir import default_run_name, resolve_init_from

    pretrain = compose(["experiment=scale_arch", "model=vit_b16", f"output_dir={tmp_path}"], hardware=False)
    if runner == "local_runner":
        name = run_name(
            "scale_arch", {"model": "vit_b16", "data.weak_label.scale": 1.0}, ["model", "data.weak_label.scale"]
        )
    else:  # wandb agent: no run_name override, the default name from the axes
        name = default_run_name(pretrain)
    ckpt = _finished_run(tmp_path, pretrain, name)
    _finished_run(tmp_path, compose(["experiment=scale_arch", "model=vit_s16"], hardware=False), "other-arch")
    stage_two = compose(["experiment=multitask", f"output_dir={tmp_path}"], hardware=False)
    assert resolve_init_from(stage_two.init_from, stage_two.output_dir, stage_two.seed) == str(ckpt)
    assert resolve_init_from(str(ckpt.parent.parent), tmp_path) == str(ckpt)  # a run directory names its last.ckpt


def test_init_from_spec_prefers_the_same_seed_and_names_ambiguity(tmp_path):
    from configs.compose import compose
    from tracking.run_dir import resolve_init_from

    for seed in (0, 1):
        cfg = compose(["experiment=scale_arch", f"seed={seed}"], hardware=False)
        _finished_run(tmp_path, cfg, f"pre-seed{seed}")
    spec = "run:experiment=scale_arch,stage=pretrain"
    assert resolve_init_from(spec, tmp_path, seed=1).endswith("pre-seed1/checkpoints/last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"2 finished run\(s\).*pre-seed0.*pre-seed1.*add an axis"):
        resolve_init_from(spec, tmp_path, seed=7)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        resolve_init_from("run:experiment=nope", tmp_path)


# ------------------------------------------------------------------- benchmarks/gpu_check.py cannot rot


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    import json
    import os

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
    assert [r["case"] for r in report["train"]] == ["vit_demo", "vit_demo_compile", "resnet10t", "vit_demo_act_ckpt"]
    assert all(r["images_per_sec"] > 0 and r["train_gflops_per_image"] > 0 for r in report["train"])
    fsdp, ddp = report["checkpoints"]
    assert fsdp["sharded_folder"] and fsdp["layout"] == [".metadata", "__0_0.distcp", "meta.pt"]
    assert fsdp["ok"] and ddp["ok"] and ddp["fit_to_6"]["resumed_from"].endswith("last.ckpt")
    assert report["eval"]["metrics"] > 0 and report["eval"]["max_abs_diff"] == 0.0
