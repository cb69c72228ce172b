"""Config composition: order, override forms, and failures that name the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from configs.compose import ConfigError, compose, load_run_config, normalize_overrides, save_config

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

    cfg = compose(["experiment=e", "model=a", "seed=5", "--trainer.max_steps=12"], config_dir=config_dir)
    assert cfg.model.name == "model_a"  # command-line group choice wins over the experiment's
    assert cfg.seed == 5 and cfg.trainer.max_steps == 12


def test_both_override_forms_agree():
    a = compose(["data.batch_size=7", "model=vit_s16", "optim.lr=0.01"])
    b = compose(["--data.batch_size=7", "--model=vit_s16", "--optim.lr", "0.01"])
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)
    assert a.data.batch_size == 7 and a.model.name == "vit_small_patch16_224" and a.optim.lr == 0.01
    assert normalize_overrides(["--a=1", "b=2", "--c", "3"]) == ["a=1", "b=2", "c=3"]


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError, match=r"model\.nme.*Did you mean 'model\.name'"):
        compose(["model.nme=vit"])
    with pytest.raises(ConfigError, match=r"data\.batch_sise.*data\.batch_size"):
        compose(["--data.batch_sise=3"])


def test_unknown_key_in_a_file_names_the_file(config_dir):
    _write(config_dir / "experiment/bad.yaml", "trainer:\n  max_stesp: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.max_stesp.*bad\.yaml.*trainer\.max_steps"):
        compose(["experiment=bad"], config_dir=config_dir)


def test_wrong_type_and_bad_values_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        compose(["data.batch_size=many"])
    with pytest.raises(ConfigError, match=r"data\.weak_label\.scale.*outside"):
        compose(["data.weak_label.scale=0"])
    with pytest.raises(ConfigError, match=r"data\.weak_label\.label_space"):
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
    for group_dir in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("labels", "__pycache__")):
        for f in sorted(group_dir.glob("*.yaml")):
            override = f"experiment={f.stem}" if group_dir.name == "experiment" else f"{group_dir.name}={f.stem}"
            cfg = compose([override], hardware=False)
            if group_dir.name == "experiment":
                assert cfg.experiment == f.stem
                assert _hardware(cfg) == _group_hardware(_default_trainer(f.stem)), f.name
            if group_dir.name == "trainer":
                assert _hardware(cfg) == _group_hardware(f.stem), f.name
            if group_dir.name != "experiment":  # the group file's own values took effect
                own = OmegaConf.load(f)
                for key in (k for k in own if not OmegaConf.is_config(own[k])):
                    assert cfg[group_dir.name][key] == own[key], f"{f}: {key}"


def test_science_presets_carry_no_hardware():
    # Hardware lives in configs/trainer/*.yaml and on the command line (REVIEW D3): a preset that set
    # trainer.devices would win over the command line's trainer=gpu (presets merge after group files).
    for f in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        trainer = OmegaConf.to_container(OmegaConf.load(f)).get("trainer") or {}
        assert not set(trainer) & set(HARDWARE), f"{f.name} sets trainer.{sorted(set(trainer) & set(HARDWARE))}"


def test_a_command_line_trainer_group_replaces_the_presets_hardware():
    one_gpu = {"accelerator": "gpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "bf16-mixed"}
    for preset in ("scale_arch", "label_space", "multitask", "embedding_form", "cost"):
        assert _hardware(compose([f"experiment={preset}", "trainer=gpu"], hardware=False)) == one_gpu, preset
    assert _hardware(compose(["experiment=scale_arch"], hardware=False))["num_nodes"] == 2
    assert _hardware(compose(["experiment=multitask"], hardware=False))["devices"] == 8


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
    ("experiment=scale_arch", "model=vit_b16", "trainer=gpu"): (1, 1, "auto", "bf16-mixed"),
    ("experiment=scale_arch", "model=vit_l16", "trainer=ddp"): ("auto", 1, "ddp", "bf16-mixed"),
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
    assert "key=value" in out and "--key=value" in out and "GROUP=NAME" in out and "--print-config" in out
    if script == "train.py":
        assert _run(script, "-h").stdout == out


def test_print_config_composes_overrides_and_exits_without_running(tmp_path):
    proc = _run("train.py", "experiment=demo_cpu", "--model=resnet_demo", f"output_dir={tmp_path}", "--print-config")
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
    assert bad.returncode == 1 and "unknown config key 'model.nme'" in bad.stderr


def test_report_and_sweep_help_show_examples_and_the_sweep_files():
    report = _run("make_report.py", "--help")
    assert report.returncode == 0 and "--runs" in report.stdout and "records.csv" in report.stdout
    sweep = _run("run_sweep.py", "--help")
    assert sweep.returncode == 0 and "--dry-run" in sweep.stdout
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        assert f"  {path.stem}  " in sweep.stdout
