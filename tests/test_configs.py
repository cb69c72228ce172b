"""Config composition: order, the one override form, groups, typed values, and failures that name the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from configs.compose import ConfigError, compose, load_run_config, normalize_overrides, save_config
from configs.schema import GROUPS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private config tree whose values reveal which source won."""
    d = tmp_path / "configs"
    _write(d / "config.yaml", "defaults:\n  model: a\n  trainer: t\nseed: 1\ndata:\n  batch_size: 11\n")
    _write(d / "model/a.yaml", "name: model_a\ndrop_path_rate: 0.1\n")
    _write(d / "model/b.yaml", "name: model_b\n")
    _write(d / "trainer/t.yaml", "max_steps: 7\naccelerator: cpu\n")
    _write(d / "data/x.yaml", "batch_size: 99\nimg_size: 32\n")
    _write(d / "experiment/e.yaml", "defaults:\n  model: b\n  data: x\nseed: 3\ntrainer:\n  max_steps: 9\n")
    return d


def test_order_schema_groups_base_experiment_cli(config_dir):
    cfg = compose([], config_dir=config_dir)
    assert cfg.model.name == "model_a" and cfg.model.drop_path_rate == 0.1
    assert cfg.seed == 1 and cfg.data.batch_size == 11  # base keys
    assert cfg.data.num_workers == 4  # schema default untouched

    cfg = compose(["experiment=e"], config_dir=config_dir)
    assert cfg.experiment == "e"
    assert cfg.model.name == "model_b"  # experiment's defaults choose the group file
    assert cfg.data.img_size == 32  # from data/x.yaml
    assert cfg.data.batch_size == 11  # base keys win over group files
    assert cfg.seed == 3 and cfg.trainer.max_steps == 9  # experiment wins over base and groups

    cfg = compose(["experiment=e", "model=a", "seed=5", "trainer.max_steps=12"], config_dir=config_dir)
    assert cfg.model.name == "model_a"  # command-line group choice wins over the experiment's
    assert cfg.seed == 5 and cfg.trainer.max_steps == 12


def test_one_override_form_and_a_hyphen_says_what_to_write():
    a = compose(["data.batch_size=7", "model=vit_s16", "optim.lr=0.01"])
    assert a.data.batch_size == 7 and a.model.name == "vit_small_patch16_224" and a.optim.lr == 0.01
    assert normalize_overrides(["a=1", "b.c=[1,2]"]) == ["a=1", "b.c=[1,2]"]
    with pytest.raises(ConfigError, match=r"^override '--model=vit_s16': .* write model=vit_s16 .*args_no_hyphens"):
        compose(["data.batch_size=7", "--model=vit_s16"])
    with pytest.raises(ConfigError, match=r"override '--optim.lr': .* write optim.lr=VALUE"):
        normalize_overrides(["--optim.lr", "0.01"])
    with pytest.raises(ConfigError, match=r"override 'seed' is not of the form key=value"):
        normalize_overrides(["seed"])


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError, match=r"model\.nme.*Did you mean 'model\.name'"):
        compose(["model.nme=vit"])
    with pytest.raises(ConfigError, match=r"data\.batch_sise.*data\.batch_size"):
        compose(["data.batch_sise=3"])


def test_a_bare_key_suggests_the_keys_it_ends():
    # difflib alone over every dotted key suggested 'logger' for lr=.
    with pytest.raises(
        ConfigError, match=r"unknown config key 'lr' .*Did you mean 'optim\.lr' or 'eval\.linear_probe\.lr'\?$"
    ):
        compose(["lr=0.1"])
    with pytest.raises(ConfigError, match=r"Did you mean 'data\.batch_size' or 'eval\.linear_probe\.batch_size'\?$"):
        compose(["trainer.batch_size=8"])
    with pytest.raises(ConfigError, match=r"Did you mean 'trainer\.max_steps'\?$"):
        compose(["max_step=8"])


def test_unknown_key_in_a_file_names_the_file(config_dir):
    _write(config_dir / "experiment/bad.yaml", "trainer:\n  max_stesp: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.max_stesp.*bad\.yaml.*trainer\.max_steps"):
        compose(["experiment=bad"], config_dir=config_dir)


def test_wrong_type_and_bad_values_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        compose(["data.batch_size=many"])
    with pytest.raises(ConfigError, match=r"data\.weak_label\.scale.*outside"):
        compose(["data.weak_label.scale=0"])
    with pytest.raises(
        ConfigError, match=r"data\.weak_label\.label_space.*command line.*'clusterd'.*'raw', 'clustered'"
    ):
        compose(["data.weak_label.label_space=clusterd"])
    with pytest.raises(ConfigError, match=r"trainer\.strategy.*fsdp"):
        compose(["trainer.accelerator=cpu", "trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match=r"no 'vit_xxl' in config group 'model'"):
        compose(["model=vit_xxl"])
    with pytest.raises(ConfigError, match=r"tasks\.classifiers\.x\.dataset"):
        compose(["tasks.classifiers.x.dataset=nope"])


HARDWARE = ("accelerator", "devices", "num_nodes", "strategy", "precision")
REPO = CONFIG_DIR.parent


def _hardware(cfg) -> dict:
    return {k: cfg.trainer[k] for k in HARDWARE}


def _group_hardware(name: str) -> dict:
    """The hardware a trainer group file names, schema defaults for what it leaves out."""
    data = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "trainer" / f"{name}.yaml"))
    assert set(HARDWARE) <= set(data), f"trainer/{name}.yaml must name all of {HARDWARE}"
    return {k: data[k] for k in HARDWARE}


def _default_trainer(experiment: str | None) -> str:
    files = [CONFIG_DIR / "config.yaml"] + ([CONFIG_DIR / "experiment" / f"{experiment}.yaml"] if experiment else [])
    choice = None
    for f in files:
        choice = (OmegaConf.load(f).get("defaults") or {}).get("trainer", choice)
    return choice


def test_every_preset_and_group_file_composes():
    # GPU presets are planned on CPU machines too: the hardware check is tested on its own above.
    folders = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")} - {"config.yaml"}
    assert {f.rsplit("/", 1)[0] for f in folders} == {*GROUPS, "experiment", "labels"}  # no folder left out
    for group in (*GROUPS, "experiment"):
        for f in sorted((CONFIG_DIR / group).glob("*.yaml")):
            cfg = compose([f"{group}={f.stem}"], hardware=False)
            if group == "experiment":
                assert cfg.experiment == f.stem
                assert _hardware(cfg) == _group_hardware(_default_trainer(f.stem)), f.name
            if group == "trainer":
                assert _hardware(cfg) == _group_hardware(f.stem), f.name
            if group != "experiment":  # the group file's own values took effect, in the field the group fills
                own = OmegaConf.load(f)
                for key in (k for k in own if not OmegaConf.is_config(own[k])):
                    assert cfg[group.split("/")[0]][key] == own[key], f"{f}: {key}"


def test_typed_values_fail_naming_key_source_and_choices(config_dir):
    cases = {
        "stage=finetune": r"'stage' \(from command line\): Invalid value 'finetune', expected one of \['pretrain', 'multitask'\]",
        "data.mixing.mode=mixed": r"'data\.mixing\.mode'.*\['combined', 'interleave'\]",
        "tasks.weak_label.loss=ce": r"'tasks\.weak_label\.loss'.*\['softmax', 'bce'\]",
        "optim.scheduler=step": r"'optim\.scheduler'.*\['cosine', 'constant'\]",
        "optim.lr_base_scale=cubic": r"'optim\.lr_base_scale'.*\['sqrt', 'linear', 'none'\]",
        "trainer.nonfinite_loss=ignore": r"'trainer\.nonfinite_loss'.*\['raise', 'skip'\]",
        "eval.features=[backbone,pooled]": r"'eval\.features\[1\]'.*'pooled'.*\['embedding', 'backbone'\]",
        "eval.precision=fp16": r"'eval\.precision'.*\['fp32', 'bf16', 'auto'\]",
        "trainer.fsdp.state_dict_type=local": r"'trainer\.fsdp\.state_dict_type'.*\['sharded', 'full'\]",
    }
    for override, pattern in cases.items():
        with pytest.raises(ConfigError, match=r"^bad value for config key " + pattern):
            compose([override], hardware=False)
    assert compose(["optim.lr_base_scale=null"], hardware=False).optim.lr_base_scale is None  # None: by optimizer
    _write(config_dir / "experiment/typo.yaml", "optim:\n  scheduler: cosin\n")
    with pytest.raises(ConfigError, match=r"'optim\.scheduler' \(from .*typo\.yaml\): Invalid value 'cosin'"):
        compose(["experiment=typo"], config_dir=config_dir)


def test_data_size_group_sizes_any_source_for_a_cpu():
    # Before the data/size group, data=img2dataset brought 224 px, batch 256 and 10 workers whatever else was chosen.
    full = compose(["data=img2dataset"], hardware=False).data
    assert (full.img_size, full.batch_size, full.num_workers) == (224, 256, 10)
    cpu = compose(["data=img2dataset", "data/size=cpu"], hardware=False).data
    assert (cpu.img_size, cpu.batch_size, cpu.num_workers, cpu.shuffle_buffer) == (64, 32, 2, 500)
    assert cpu.weak_label.manifest == full.weak_label.manifest == "data/img2dataset/manifest.json"
    # A full-scale preset pins no sizing in its body, so the group choice reaches it from the command line.
    sized = compose(["experiment=scale_arch", "data/size=cpu", "trainer=cpu"], hardware=False)
    assert (sized.data.img_size, sized.data.batch_size, sized.trainer.accelerator) == (64, 32, "cpu")
    assert compose(["experiment=scale_arch_cpu"], hardware=False).data.img_size == 64


def test_cpu_presets_take_the_eval_and_size_groups_instead_of_repeating_them():
    groups = {g: OmegaConf.load(CONFIG_DIR / g / "cpu.yaml") for g in ("eval", "data/size")}
    for f in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        preset = OmegaConf.load(f)
        chosen = preset.get("defaults") or {}
        for group, values in groups.items():
            if chosen.get(group) != "cpu":
                continue
            body = preset.get(group.split("/")[0]) or {}
            repeated = [k for k in values if k in body and body[k] == values[k]]
            assert not repeated, f"{f.name} repeats {group}/cpu.yaml's {repeated}"
    cfg = compose(["experiment=study_cpu"], hardware=False).eval
    assert list(cfg.datasets) == ["fashion_mnist", "weak_label_val"] and cfg.gallery_limit == 2000  # body + group


def test_a_preset_extends_another_and_loops_fail(config_dir):
    base = OmegaConf.to_container(compose(["experiment=scale_arch_cpu"], hardware=False))
    child = OmegaConf.to_container(compose(["experiment=label_space_cpu"], hardware=False))
    assert child.pop("experiment") == "label_space_cpu" and base.pop("experiment") == "scale_arch_cpu"
    assert child == base  # the label-space twin differs in its name (its group and table) and its swept key
    _write(config_dir / "experiment/child.yaml", "defaults:\n  experiment: e\n  model: a\nseed: 8\n")
    cfg = compose(["experiment=child"], config_dir=config_dir)
    assert cfg.experiment == "child" and cfg.seed == 8  # its own keys on top of e's
    assert cfg.model.name == "model_a" and cfg.data.img_size == 32 and cfg.trainer.max_steps == 9  # e's
    _write(config_dir / "experiment/e.yaml", "defaults:\n  experiment: child\n")
    with pytest.raises(ConfigError, match=r"extend each other in a loop"):
        compose(["experiment=child"], config_dir=config_dir)
    _write(config_dir / "config.yaml", "defaults:\n  experiment: e\n")
    with pytest.raises(ConfigError, match=r"unknown config group\(s\) \['experiment'\] in .*config\.yaml"):
        compose([], config_dir=config_dir)


def test_science_presets_carry_no_hardware():
    # Hardware lives in configs/trainer/*.yaml and on the command line (REVIEW D3): a preset that set
    # trainer.devices would win over the command line's trainer=gpu (presets merge after group files).
    for f in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        trainer = OmegaConf.to_container(OmegaConf.load(f)).get("trainer") or {}
        assert not set(trainer) & set(HARDWARE), f"{f.name} sets trainer.{sorted(set(trainer) & set(HARDWARE))}"


def test_full_scale_presets_are_one_gpu_and_more_is_a_command_line_choice():
    # experiment=scale_arch used to mean 2 nodes x 8 GPUs silently (trainer=ddp_2x8 in the preset's defaults).
    one_gpu = {"accelerator": "gpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "bf16-mixed"}
    for preset in ("scale_arch", "label_space", "multitask", "embedding_form", "cost"):
        assert _hardware(compose([f"experiment={preset}"], hardware=False)) == one_gpu, preset
        assert _default_trainer(preset) == "gpu"
    two_by_eight = compose(["experiment=scale_arch", "trainer=ddp_2x8"], hardware=False)
    assert (two_by_eight.trainer.num_nodes, two_by_eight.trainer.devices) == (2, 8)


def _doc_commands(path: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Every ``train.py`` command in the fenced bash blocks of a Markdown file: (its overrides, the launcher's
    process layout {"nodes", "per_node"} from torchrun flags or the block's #SBATCH lines, when given)."""
    import re
    import shlex

    text = path.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        sbatch = dict(re.findall(r"#SBATCH --(nodes|ntasks-per-node)=(\d+)", block))
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if "train.py" not in line or line.lstrip().startswith("#"):
                continue
            tokens = shlex.split(line, comments=True)
            launcher = tokens[: tokens.index("train.py")]
            args = [t for t in tokens[tokens.index("train.py") + 1 :] if t != "..."]
            layout = {}
            for t in launcher:
                if t.startswith("--nnodes="):
                    layout["nodes"] = t.split("=", 1)[1]
                if t.startswith("--nproc-per-node="):
                    layout["per_node"] = t.split("=", 1)[1]
            if "srun" in launcher and sbatch:
                layout = {"nodes": sbatch["nodes"], "per_node": sbatch["ntasks-per-node"]}
                env = {"$SLURM_NNODES": sbatch["nodes"], "$SLURM_NTASKS_PER_NODE": sbatch["ntasks-per-node"]}
                for var, value in env.items():
                    args = [a.replace(var, value) for a in args]
            args = [a.replace("experiment=<preset>", "experiment=scale_arch") for a in args]
            out.append((args, layout))
    return out


# Known answers for the README's GPU lines (devices, num_nodes, strategy, precision).
README_GPU = {
    ("experiment=scale_arch", "model=vit_b16", "trainer=ddp"): ("auto", 1, "ddp", "bf16-mixed"),
    ("experiment=scale_arch", "model=vit_b16", "trainer=ddp_2x8"): (8, 2, "ddp", "bf16-mixed"),
    ("experiment=scale_arch", "model=vit_h14", "trainer=fsdp", "trainer.num_nodes=4"): (
        "auto",
        4,
        "fsdp",
        "bf16-mixed",
    ),
}


@pytest.mark.parametrize("doc", ["README.md", "docs/multinode.md"])
def test_every_documented_command_composes_to_the_hardware_it_names(doc):
    commands = _doc_commands(REPO / doc)
    assert len(commands) >= 2, f"no train.py commands found in {doc}"
    for args, layout in commands:
        cfg = compose(args, hardware=False)
        groups = [a.split("=", 1)[1] for a in args if a.startswith("trainer=")]
        experiment = next((a.split("=", 1)[1] for a in args if a.startswith("experiment=")), None)
        expected = _group_hardware(groups[-1] if groups else _default_trainer(experiment))
        for a in args:
            key, _, value = a.partition("=")
            if key.startswith("trainer.") and key.split(".", 1)[1] in HARDWARE:
                expected[key.split(".", 1)[1]] = cfg.trainer[key.split(".", 1)[1]]
                assert str(cfg.trainer[key.split(".", 1)[1]]) == value, a
        assert _hardware(cfg) == expected, args
        if layout:  # the launcher starts as many processes as the config expects
            assert str(cfg.trainer.num_nodes) == layout["nodes"], (args, layout)
            assert str(cfg.trainer.devices) == layout["per_node"], (args, layout)
        if doc == "README.md" and tuple(args) in README_GPU:
            t = cfg.trainer
            assert (t.devices, t.num_nodes, t.strategy, t.precision) == README_GPU[tuple(args)]
    if doc == "README.md":
        assert set(README_GPU) <= {tuple(a) for a, _ in commands}, "a README GPU line changed: update README_GPU"


def test_saved_config_round_trips(tmp_path):
    cfg = compose(["model=resnet50", "data.weak_label.scale=0.1"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml", ["eval.ks=[1,3]"])
    assert again.model.name == "resnet50" and again.data.weak_label.scale == 0.1
    assert list(again.eval.ks) == [1, 3]
    assert OmegaConf.is_readonly(again)


# ------------------------------------------------------------------ entry points as a user runs them

ROOT = CONFIG_DIR.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_lists_groups_choices_presets_and_override_forms(script):
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"python {script}" in out  # the module docstring's usage lines
    for group in ("model", "data", "tasks", "optim", "trainer", "logger"):
        assert f"  {group}:" in out
    assert "vit_ti16*" in out and "resnet_demo" in out and "ddp_cpu" in out  # choices, the default marked
    for preset in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        first = next(line for line in preset.read_text().split("\n") if line.startswith("#"))
        assert f"  {preset.stem}" in out and first.lstrip("# ").strip() in out
    assert "key=value" in out and "GROUP=NAME" in out and "--print-config" in out and "BSV_DEBUG=1" in out
    assert "--key=value" not in out and "data/size: cpu" in out and "eval:" in out
    if script == "train.py":
        assert _run(script, "-h").stdout == out
    else:  # the order the code uses (it said best.ckpt first)
        from evaluation.checkpoint import CHECKPOINT_NAMES

        assert CHECKPOINT_NAMES == ("last.ckpt", "best.ckpt") and "the run's last.ckpt, else best.ckpt" in out


def test_print_config_composes_overrides_and_exits_without_running(tmp_path):
    proc = _run("train.py", "experiment=demo_cpu", "model=resnet_demo", f"output_dir={tmp_path}", "--print-config")
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.experiment == "demo_cpu" and cfg.model.name == "resnet18" and cfg.output_dir == str(tmp_path)
    assert cfg == OmegaConf.create(
        OmegaConf.to_yaml(compose(["experiment=demo_cpu", "model=resnet_demo"] + [f"output_dir={tmp_path}"]))
    )
    assert not any(tmp_path.iterdir())  # nothing ran: no run directory
    gpu = _run("evaluate.py", "experiment=scale_arch", "--print-config")  # a GPU preset prints on this CPU
    assert gpu.returncode == 0 and OmegaConf.create(gpu.stdout).trainer.accelerator == "gpu"
    bad = _run("train.py", "model.nme=3", "--print-config")
    assert bad.returncode == 2 and "train.py: config error: unknown config key 'model.nme'" in bad.stderr
    hyphen = _run("evaluate.py", "--model=resnet_demo", "--print-config")
    assert hyphen.returncode == 2 and "Traceback" not in hyphen.stderr
    assert hyphen.stderr.strip().count("\n") == 0 and "write model=resnet_demo" in hyphen.stderr


def test_report_and_sweep_help_show_examples_and_the_sweep_files():
    report = _run("make_report.py", "--help")
    assert report.returncode == 0 and "--runs" in report.stdout and "records.csv" in report.stdout
    sweep = _run("run_sweep.py", "--help")
    assert sweep.returncode == 0 and "--dry-run" in sweep.stdout
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        assert f"  {path.stem}  " in sweep.stdout


# ------------------------------------------------------------------ expected errors: one line, traceback on demand


def test_expected_errors_are_one_line_and_the_rest_keep_their_traceback(monkeypatch, capsys):
    import wandb

    from configs.cli import run_main
    from datamodules.manifest import ManifestError
    from lit_modules.checkpoints import CheckpointError

    def failing(err):
        def main():
            raise err

        return main

    monkeypatch.delenv("BSV_DEBUG", raising=False)
    cases = [
        (ManifestError("data.weak_label.manifest: file not found: /x/manifest.json"), "data error: data.weak_label"),
        (CheckpointError("/r/last.ckpt: not a readable PyTorch checkpoint"), "checkpoint error: /r/last.ckpt"),
        (ConfigError("unknown config key 'lr'"), "config error: unknown config key 'lr'"),
        (wandb.errors.UsageError("No API key configured."), "W&B: No API key configured. (log in with `wandb login`"),
        (FileNotFoundError(2, "No such file or directory", "/no/file"), "file not found: [Errno 2] No such file or"),
    ]
    for err, start in cases:
        assert run_main(failing(err), "prog.py") == 2
        err_out = capsys.readouterr().err
        assert err_out.startswith(f"prog.py: {start}") and err_out.count("\n") == 1, err_out
        assert "BSV_DEBUG=1" in err_out and "Traceback" not in err_out
    assert run_main(failing(wandb.errors.UsageError("No API key configured.")), "p") == 2
    assert "or log without a server: logger.mode=offline)" in capsys.readouterr().err  # the way out
    # Re-raised from a DataLoader worker: the message is torch's report; its own line is the last one.
    wrapped = ManifestError(
        "Caught ManifestError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        "last):\n  File ...\nManifestError: shard s-000.tar holds 3 samples but the manifest lists 4"
    )
    assert run_main(failing(wrapped), "p") == 2
    assert capsys.readouterr().err.startswith("p: data error: shard s-000.tar holds 3 samples")
    with pytest.raises(RuntimeError, match="a bug"):  # not an expected error: the traceback stays
        run_main(failing(RuntimeError("a bug")), "p")
    monkeypatch.setenv("BSV_DEBUG", "1")
    with pytest.raises(ManifestError):
        run_main(failing(cases[0][0]), "p")
    assert run_main(lambda: {"metric": 1.0}, "p") == 0 and run_main(lambda: 3, "p") == 3


@pytest.mark.slow
def test_train_py_missing_manifest_is_one_line_and_bsv_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "nowhere" / "manifest.json"
    args = [
        "train.py",
        "experiment=demo_cpu",
        "logger=none",
        f"data.weak_label.manifest={missing}",
        f"output_dir={tmp_path / 'runs'}",
    ]
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    named = [line for line in proc.stderr.splitlines() if str(missing) in line]
    assert len(named) == 1 and named[0].startswith("train.py: data error: data.weak_label.manifest: file not found")
    assert "mine_labels.py" in named[0]  # the way out
    debug = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", BSV_DEBUG="1"),
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ManifestError" in debug.stderr
