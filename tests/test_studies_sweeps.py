"""Sweep files: W&B schema validation, overrides that compose, grid/random expansion, command building,
and the experiment presets they point at."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from configs.compose import ConfigError, compose
from studies.sweep import (
    Sweep,
    SweepError,
    build_command,
    check_overrides,
    command_args,
    expand,
    load_sweep,
    parameter_kind,
    plan,
    run_name,
    validate_sweep,
)

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPERIMENTS = sorted((ROOT / "configs" / "experiment").glob("*.yaml"))
# W&B's published sweep-config schema, vendored unchanged from the MIT-licensed `sweeps` package (see the .LICENSE
# file), whose engine pins numpy<2 and so is not a dependency: the shipped sweep files are checked against it here,
# and `wandb sweep` checks a file against it on the server.
SCHEMA_PATH = ROOT / "tests" / "data" / "wandb_sweep_schema.json"
DEPRECATED = {
    "log_uniform": "log_uniform_values",
    "inv_log_uniform": "inv_log_uniform_values",
    "q_log_uniform": "q_log_uniform_values",
}


def schema_problems(config: dict) -> list[str]:
    """What W&B's sweep engine reports for a config: its JSON-schema violations (one per parameter that matches no
    parameter form), ``min`` not below ``max``, probabilities that do not sum to 1, deprecated distributions."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    formats = jsonschema.FormatChecker()
    # The custom formats the sweeps package registers on its validator (sweeps/config/schema.py).
    formats.checks("float")(lambda v: isinstance(v, float))
    formats.checks("integer")(lambda v: isinstance(v, int))
    whole = jsonschema.Draft7Validator(schema, format_checker=formats)
    one = jsonschema.Draft7Validator(
        {**schema["definitions"]["parameter"], "definitions": schema["definitions"]}, format_checker=formats
    )
    problems = []
    for err in whole.iter_errors(config):
        path = [str(p) for p in err.absolute_path]
        if path[:1] == ["parameters"] and len(path) > 1:
            continue  # reported per parameter below, with its name
        problems.append(f"{'.'.join(path) + ': ' if path else ''}{err.message}")
    for name, spec in (config.get("parameters") or {}).items():
        if not isinstance(spec, dict) or not one.is_valid(spec):
            problems.append(f"invalid hyperparameter configuration: {name} ({spec!r} matches no W&B parameter form)")
            continue
        low, high = spec.get("min"), spec.get("max")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low >= high:
            problems.append(f"{name}: min {low} is not less than max {high}")
        probs = spec.get("probabilities")
        if probs is not None and (len(probs) != len(spec.get("values", [])) or abs(sum(probs) - 1.0) > 1e-9):
            problems.append(f"Parameter {name}: probabilities {probs} must match values and sum to 1")
        if spec.get("distribution") in DEPRECATED:
            problems.append(
                f"{name}: distribution {spec['distribution']} is deprecated, use {DEPRECATED[spec['distribution']]}"
            )
    return problems


def _sweep(config: dict, name: str = "t") -> Sweep:
    validate_sweep(config)
    return Sweep(path=Path(f"{name}.yaml"), name=name, config=config)


# ------------------------------------------------------------------------------ the sweep files


def test_sweeps_are_checked_against_w_and_b_schema_without_its_numpy_capped_engine():
    assert not list((ROOT / "sweeps").rglob("*.py")), "sweeps/ holds YAML only"
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["title"] == "SweepConfig" and "param_loguniform_v2" in schema["definitions"]
    assert "MIT License" in SCHEMA_PATH.with_suffix(".LICENSE").read_text()
    assert "sweeps" not in (ROOT / "requirements.txt").read_text().split()  # it pins numpy<2
    assert "method: 'grd' is not one of ['bayes', 'random', 'grid', 'custom']" in schema_problems({"method": "grd"})


def test_required_sweeps_exist_with_the_brief_parameters():
    names = {p.stem for p in SWEEP_FILES}
    for study in ("scale_arch", "label_space", "multitask", "embedding_form", "cost"):
        assert study in names and f"{study}_cpu" in names
    assert "demo_cpu" in names
    scale_arch = load_sweep(ROOT / "sweeps/scale_arch.yaml").parameters
    assert scale_arch["model"]["values"] == ["resnet50", "resnext101_32x8d", "vit_s16", "vit_b16", "vit_l16"]
    assert scale_arch["data.weak_label.scale"]["values"] == [0.01, 0.1, 0.25, 1.0]
    demo = load_sweep(ROOT / "sweeps/demo_cpu.yaml").parameters
    assert demo["model"]["values"] == ["vit_demo", "resnet_demo"]
    assert demo["data.weak_label.scale"]["values"] == [0.25, 1.0]
    assert demo["experiment"]["value"] == "demo_cpu"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_validates_and_every_run_composes(path):
    sweep = load_sweep(path)  # the local checks
    config = sweep.config
    assert schema_problems(config) == []  # what `wandb sweep` would check on the server
    assert config["program"] in ("train.py", "evaluate.py")  # evaluate.py: random-init baselines
    assert config["command"][:4] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    for token in config["command"][4:]:  # the recipe's hardware, chosen in the sweep, never in the preset
        group, _, name = token.partition("=")
        assert group == "trainer" and (ROOT / "configs/trainer" / f"{name}.yaml").is_file(), token
    experiment = config["parameters"]["experiment"]["value"]
    assert (ROOT / "configs/experiment" / f"{experiment}.yaml").is_file()
    if config["program"] == "train.py" and config["metric"]["name"].startswith("eval/"):
        assert config["parameters"]["evaluate_after_fit"]["value"] is True  # metric logged in the same run
    runs = plan(sweep, count=3 if config["method"] == "random" else None)
    assert runs and len({r.name for r in runs}) == len(runs)
    assert check_overrides(runs) >= 1
    if path.stem.endswith("_cpu"):
        cfg = compose(runs[0].overrides, hardware=False)
        assert cfg.trainer.accelerator == "cpu" and cfg.model.name in ("vit_tiny_patch16_224", "resnet18")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"method": "grd"}, "'grd' is not one of"),
        ({"parameters": {"model": {"vales": ["a"]}}}, "invalid hyperparameter configuration: model"),
        ({"metric": {"name": "m", "goal": "maximise"}}, "'maximise' is not one of"),
        ({"parameters": {"model": {"values": []}}}, "invalid hyperparameter configuration: model"),
        ({"parameters": {"optim.lr": {"min": 0.1, "max": 0.01}}}, "optim.lr: min 0.1 is not less than max 0.01"),
        ({"parameters": {"optim.lr": {"distribution": "log_uniform", "min": -9, "max": -2}}}, "use log_uniform_values"),
        ({"parameters": {"m": {"values": [1, 2], "probabilities": [0.5, 0.6]}}}, "sum to 1"),
        ({"run_cap": 0}, "run_cap: 0 is less than or equal to the minimum"),
        ({"command": "python train.py"}, "is not of type 'array'"),
    ],
)
def test_w_and_b_schema_names_what_is_wrong(change, expected):
    config = yaml.safe_load((ROOT / "sweeps/demo_cpu.yaml").read_text())
    config.update(change)
    assert any(expected in problem for problem in schema_problems(config)), schema_problems(config)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"parameters": {"m": {"parameters": {"a": {"value": 1}}}}}, "nested parameters are not expanded locally"),
        ({"command": ["${interpreter}", "${program}"]}, "no ${args...} macro"),
        ({"parameters": {"init_from": {"values": [None, "a.ckpt"]}}}, "parameters.init_from: null"),
        ({"parameters": {"run_name": {"value": "x"}}}, "parameters.run_name: set by the runner"),
        ({"parameters": {}}, "parameters: a mapping of at least one parameter"),
    ],
)
def test_broken_sweep_fails_local_validation_naming_the_problem(tmp_path, change, expected):
    config = yaml.safe_load((ROOT / "sweeps/demo_cpu.yaml").read_text())
    config.update(change)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert expected in str(err.value) and "broken.yaml" in str(err.value)


def test_unparsable_or_missing_sweep_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SweepError, match="bad.yaml: cannot parse YAML"):
        load_sweep(bad)
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")


def test_override_typo_fails_before_any_run_naming_the_key():
    sweep = load_sweep(ROOT / "sweeps/demo_cpu.yaml")
    with pytest.raises(SweepError, match=r"run demo_cpu-vit_demo-scale0.25: unknown config key 'model\.nme'"):
        check_overrides(plan(sweep, extra=["model.nme=3"]))
    broken = dict(sweep.config, parameters={**sweep.parameters, "data.weak_label.scale": {"values": [1.5]}})
    with pytest.raises(SweepError, match=r"data\.weak_label\.scale.*outside"):
        check_overrides(plan(_sweep(broken)))


def test_extra_overrides_cannot_take_over_the_runner_keys():
    sweep = load_sweep(ROOT / "sweeps/demo_cpu.yaml")
    with pytest.raises(SweepError, match="output_dir is set by the runner"):
        plan(sweep, extra=["output_dir=elsewhere"])


# --------------------------------------------------------------------------------- expansion


def test_grid_expansion_gives_every_combination():
    sweep = load_sweep(ROOT / "sweeps/demo_cpu.yaml")
    runs = plan(sweep, output_dir="out")
    assert len(runs) == 4
    got = {(r.params["model"], r.params["data.weak_label.scale"]) for r in runs}
    assert got == {("vit_demo", 0.25), ("vit_demo", 1.0), ("resnet_demo", 0.25), ("resnet_demo", 1.0)}
    for r in runs:  # constants reach every run; keys keep the file's order
        assert list(r.params) == ["experiment", "evaluate_after_fit", "model", "data.weak_label.scale"]
        assert r.params["experiment"] == "demo_cpu" and r.params["evaluate_after_fit"] is True
    assert {r.name for r in runs} == {
        "demo_cpu-vit_demo-scale0.25",
        "demo_cpu-resnet_demo-scale0.25",
        "demo_cpu-vit_demo-scale1.0",
        "demo_cpu-resnet_demo-scale1.0",
    }
    assert all(r.run_dir == Path("out") / r.name for r in runs)
    assert [r.name for r in plan(sweep, count=2)] == [r.name for r in runs[:2]]  # --count N: the first N


def test_grid_expansion_matches_the_cartesian_product_in_w_and_b_order():
    sweep = load_sweep(ROOT / "sweeps/scale_arch.yaml")
    params = expand(sweep.config)
    p = sweep.parameters
    want = set(itertools.product(p["model"]["values"], p["data.weak_label.scale"]["values"]))
    assert len(params) == len(want) == 20
    assert {(x["model"], x["data.weak_label.scale"]) for x in params} == want
    # The order W&B's engine (sweeps 0.3.0 grid_search_next_runs) gave for these: names sorted, last fastest.
    demo = [(r["model"], r["data.weak_label.scale"]) for r in expand(load_sweep(ROOT / "sweeps/demo_cpu.yaml").config)]
    assert demo == [("vit_demo", 0.25), ("resnet_demo", 0.25), ("vit_demo", 1.0), ("resnet_demo", 1.0)]
    mixed = {
        "method": "grid",
        "parameters": {"b": {"values": [1, 2]}, "a": {"values": ["x", "y"]}, "c": {"min": 1, "max": 3}},
    }
    got = expand(mixed)
    assert [list(r) for r in got] == [["b", "a", "c"]] * 12  # keys in the file's order
    assert [(r["a"], r["b"], r["c"]) for r in got] == list(itertools.product("xy", [1, 2], [1, 2, 3]))
    q = expand({"method": "grid", "parameters": {"w": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25}}})
    assert [r["w"] for r in q] == [0.0, 0.25, 0.5, 0.75]  # numpy.arange, as W&B's engine expands q_uniform
    big = {"method": "grid", "parameters": {"a": {"values": list(range(30))}, "b": {"values": list(range(20))}}}
    assert len(expand(big)) == 600
    with pytest.raises(SweepError, match="parameters.lr: grid search takes"):
        expand({"method": "grid", "parameters": {"lr": {"min": 0.1, "max": 1.0}}})


def test_random_draws_follow_each_distribution_the_sweeps_use():
    spec = {
        "c": {"value": "k"},
        "cat": {"values": ["a", "b", "c"]},
        "i": {"min": 2, "max": 4},
        "u": {"min": 0.5, "max": 1.5},
        "lu": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    }
    runs = expand({"method": "random", "parameters": spec}, count=200, seed=3)
    assert len(runs) == 200 and all(list(r) == list(spec) for r in runs)
    col = {k: [r[k] for r in runs] for k in spec}
    assert set(col["c"]) == {"k"} and set(col["cat"]) == {"a", "b", "c"}
    assert set(col["i"]) == {2, 3, 4} and all(type(v) is int for v in col["i"])
    assert all(0.5 <= v <= 1.5 for v in col["u"]) and all(1e-4 <= v <= 1e-2 for v in col["lu"])
    below = sum(v < 1e-3 for v in col["lu"])  # log-uniform: half the draws below the geometric midpoint
    assert 70 < below < 130
    used = {parameter_kind(p) for f in SWEEP_FILES for p in load_sweep(f).parameters.values()}
    assert used <= {"constant", "categorical", "int_uniform", "uniform", "log_uniform_values"}, used
    with pytest.raises(SweepError, match="'normal' is not drawn locally.*wandb agent"):
        expand({"method": "random", "parameters": {"n": {"distribution": "normal", "mu": 0.0, "sigma": 1.0}}}, 2)


def test_random_expansion_is_seeded_and_reproducible():
    sweep = load_sweep(ROOT / "sweeps/optim_cpu.yaml")
    first = plan(sweep, count=5, seed=1)
    again = plan(sweep, count=5, seed=1)
    other = plan(sweep, count=5, seed=2)
    assert [r.params for r in first] == [r.params for r in again]
    assert [r.name for r in first] == [r.name for r in again]
    assert [r.params for r in first] != [r.params for r in other]
    assert len({r.name for r in first}) == 5
    for r in first:
        assert 1e-4 <= r.params["optim.lr"] <= 3e-3 and type(r.params["optim.lr"]) is float
        assert r.params["optim.weight_decay"] in (0.0, 0.05, 0.1)
        assert r.params["model"] == "vit_demo"
        assert r.name.startswith("optim_cpu-lr") and len(r.name.rsplit("-", 1)[1]) == 8  # hashed suffix
    assert len(plan(sweep, seed=0)) == sweep.config["run_cap"]  # run_cap when no --count
    with pytest.raises(SweepError, match="--count"):
        expand({"method": "random", "parameters": {"a": {"values": [1, 2]}}})


def test_bayes_is_refused_locally_with_the_way_out():
    config = {"method": "bayes", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"a": {"values": [1]}}}
    with pytest.raises(SweepError, match="wandb agent"):
        expand(config)


def test_run_names_are_deterministic_and_filesystem_safe():
    params = {"model": "vit_s16", "data.weak_label.scale": 0.1, "model.compile": False, "init_from": "a/b.ckpt"}
    varying = list(params)
    assert run_name("s", params, varying) == "s-vit_s16-scale0.1-no_compile-a_b.ckpt"
    assert run_name("s", {"model.compile": True, "x.dim": 64}, ["model.compile", "x.dim"]) == "s-compile-dim64"
    hashed = run_name("s", params, varying, hashed=True)
    assert hashed.startswith("s-vit_s16") and hashed == run_name("s", dict(reversed(params.items())), varying, True)
    assert len(run_name("s", {"k": "x" * 300}, ["k"])) <= 120


# ---------------------------------------------------------------------------------- commands


def test_command_args_are_wandb_agent_formatting_pinned():
    """command_args is wandb's create_sweep_command_args (semi-private in wandb 0.31): pin what it returns, so a
    wandb upgrade that changes how the agent formats arguments fails here, not in a sweep."""
    params = {"model": "vit_s16", "data.weak_label.scale": 0.1, "evaluate_after_fit": True, "x": False, "n": 3}
    got = command_args(params)
    assert got["args_no_hyphens"] == [
        "model=vit_s16",
        "data.weak_label.scale=0.1",
        "evaluate_after_fit=True",
        "x=False",
        "n=3",
    ]
    assert got["args"] == ["--" + a for a in got["args_no_hyphens"]]
    assert got["args_no_boolean_flags"] == [
        "--model=vit_s16",
        "--data.weak_label.scale=0.1",
        "--evaluate_after_fit",
        "--n=3",
    ]
    assert got["args_no_equals"][:4] == ["--model", "vit_s16", "--data.weak_label.scale", "0.1"]
    assert got["args_append_hydra"][0] == "+model=vit_s16" and got["args_override_hydra"][0] == "++model=vit_s16"
    assert json.loads(got["args_json"][0]) == params


def test_build_command_expands_envvar_and_every_macro_like_the_agent(monkeypatch):
    monkeypatch.setenv("H11_DATA", "/data")
    config = {
        "program": "p.py",
        "command": [
            "${env}",
            "${interpreter}",
            "${program}",
            "--root=${envvar:H11_DATA}",
            "${args_no_boolean_flags}",
            "${args_json}",
        ],
    }
    template = list(config["command"])
    cmd = build_command(config, {"flag": True, "off": False, "lr": 0.5}, python="py")
    assert cmd == ["py", "p.py", "--root=/data", "--flag", "--lr=0.5", '{"flag": true, "off": false, "lr": 0.5}']
    assert config["command"] == template  # wandb's create_sweep_command edits its list in place: not ours


def test_build_command_expands_macros_and_adds_runner_items_in_the_same_style():
    config = {"program": "train.py", "command": ["${env}", "${interpreter}", "${program}", "--x=1", "${args}"]}
    items = [("logger.group", "g"), ("run_name", "r")]
    cmd = build_command(config, {"model": "vit_s16"}, python="py", runner_items=items, extra=["seed=3"])
    assert cmd == ["py", "train.py", "--x=1", "--model=vit_s16", "--logger.group=g", "--run_name=r", "seed=3"]
    cmd = build_command({"program": "train.py"}, {"a.b": 1}, python="py")  # no command: W&B's default
    assert cmd == ["py", "train.py", "--a.b=1"]


def test_a_hyphen_form_sweep_fails_before_any_run_saying_what_to_write():
    # train.py takes key=value only: a sweep passing ${args} (--key=value) is refused when its runs are composed.
    sweep = load_sweep(ROOT / "sweeps/demo_cpu.yaml")
    hyphen = _sweep(dict(sweep.config, command=["${env}", "${interpreter}", "${program}", "${args}"]), "demo_cpu")
    assert plan(hyphen)[0].overrides[0] == "--experiment=demo_cpu"
    with pytest.raises(SweepError, match=r"run demo_cpu-.*write experiment=demo_cpu .*args_no_hyphens"):
        check_overrides(plan(hyphen))
    with pytest.raises(SweepError, match=r"extra overrides: override '--seed=3': .* write seed=3"):
        plan(sweep, extra=["--seed=3"])


# ------------------------------------------------------------------------- experiment presets


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_preset_composes_and_says_what_it_costs(path):
    text = path.read_text()
    assert text.startswith("#") and "Compute" in text, "header comment with the compute it needs"
    cfg = compose([f"experiment={path.stem}"], hardware=False)
    assert cfg.experiment == path.stem
    if "_cpu" in path.stem:  # CPU presets: the twins of full-scale ones, the CPU study, the Fashion-MNIST check
        assert cfg.trainer.accelerator == "cpu" and cfg.data.img_size <= 64
        if path.stem.endswith("_cpu") and (path.parent / f"{path.stem[: -len('_cpu')]}.yaml").is_file():
            assert cfg.trainer.max_steps <= 500  # a full-scale preset's CPU twin runs in minutes
    else:
        assert (path.parent / f"{path.stem}_cpu.yaml").is_file(), "every full-scale preset has a CPU twin"
        assert cfg.data.img_size == 224 and cfg.trainer.accelerator == "gpu"
    if cfg.stage == "multitask" and "from scratch" not in text.split("\ndefaults:")[0]:
        assert cfg.init_from and cfg.optim.layer_decay is not None  # stage two starts from a pretraining run


def test_presets_fail_on_this_cpu_machine_only_for_hardware():
    # Composed normally, a GPU preset names the hardware it needs instead of a config mistake.
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from configs.compose import compose

    with pytest.raises(ConfigError, match="trainer.accelerator"):
        compose(["experiment=scale_arch"])
