"""W&B sweep files and hydra-submitit / submitit cluster configs read with their authors' meaning: every class of
mistake the issue found - silently wrong, refused though it maps, refused without a hint, a crash - has a case."""

import collections
import math
import os

import pytest
import yaml

from core.errors import FtlError
from launcher.clusters import load_cluster
from launcher.sweep import load_sweep, trial_id
from tests.conftest import ftl


def wandb_file(tmp_path, name="w.yaml", **spec):
    data = {"method": "random", "run_cap": 6, "metric": {"name": "val_top1", "goal": "maximize"},
            "parameters": {"learning_rate": {"values": [1e-3]}}, **spec}  # fmt: skip
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path, path, *extra, recipe="base"):
    return load_sweep(path, [f"data.train_dir={tmp_path}", *extra], recipe=recipe)


def samples(sweep, n=60) -> list[dict]:
    """What ftl's workers would ask (Optuna's random sampler over the space), typed as the trials get them."""
    from tests.compat.run import ftl_values

    return ftl_values(sweep, n)


def refused(tmp_path, path, pattern, *extra):
    with pytest.raises(FtlError, match=pattern) as e:
        load(tmp_path, path, *extra)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------- silently wrong, now right


def test_integer_min_and_max_sample_integers_and_dry_run_checks_real_values(tmp_path):
    path = wandb_file(tmp_path, parameters={"epochs": {"min": 2, "max": 10}, "lr": {"min": 1e-4, "max": 1e-2}})
    sweep = load(tmp_path, path)
    got = samples(sweep)
    assert all(isinstance(s["train.epochs"], int) and 2 <= s["train.epochs"] <= 10 for s in got)
    assert {s["train.epochs"] for s in got} >= {2, 10} and all(isinstance(s["optim.lr"], float) for s in got)
    dry = ftl("sweep", path, f"data.train_dir={tmp_path}", "--dry-run", "--recipe", "base")
    assert dry.returncode == 0 and "epochs -> train.epochs" in dry.stdout, dry.stderr
    assert "train.epochs: int [2, 10]" in dry.stdout and "checked on 50 draws" in dry.stdout


def test_q_distributions_keep_their_step_and_type(tmp_path):
    path = wandb_file(tmp_path, parameters={
        "batch_size": {"distribution": "q_log_uniform_values", "min": 8, "max": 256, "q": 8},
        "epochs": {"distribution": "q_uniform", "min": 2, "max": 20, "q": 2},
        "lr": {"distribution": "q_uniform", "min": 0.001, "max": 0.01, "q": 0.001}})  # fmt: skip
    got = samples(load(tmp_path, path))
    assert all(isinstance(s["data.batch_size"], int) and s["data.batch_size"] % 8 == 0 and 8 <= s["data.batch_size"] <= 256 for s in got)
    assert all(isinstance(s["train.epochs"], int) and s["train.epochs"] % 2 == 0 for s in got)
    assert all(abs(s["optim.lr"] / 0.001 - round(s["optim.lr"] / 0.001)) < 1e-9 for s in got)


def test_a_metric_without_goal_is_minimized_as_wandb_does(tmp_path):
    sweep = load(tmp_path, wandb_file(tmp_path, metric={"name": "val_loss"}))
    assert sweep.mode == "min" and any("minimized, as W&B does" in n for n in sweep.notes)


@pytest.mark.parametrize(("terminate", "first"), [({"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}, 3),
                                                   ({"type": "hyperband", "min_iter": 2, "eta": 2}, 2),
                                                   ({"type": "hyperband", "max_iter": 81, "s": 3}, 3)])  # fmt: skip
def test_hyperband_stops_first_at_wandbs_first_band(tmp_path, terminate, first):
    sweep = load(tmp_path, wandb_file(tmp_path, early_terminate=terminate))
    assert sweep.search["early_stop"]["min_epochs"] == first


def test_probabilities_weigh_the_draws(tmp_path):
    path = wandb_file(tmp_path, parameters={"optimizer": {"values": ["adamw", "sgd"], "probabilities": [0.9, 0.1]},
                                            "lr": {"min": 1e-4, "max": 1e-2}})  # fmt: skip
    counts = collections.Counter(s["optim.name"] for s in samples(load(tmp_path, path), 200))
    assert 0.8 < counts["adamw"] / 200 < 0.97, counts


def test_a_grids_run_cap_takes_the_first_combinations_and_says_so(tmp_path):
    path = wandb_file(tmp_path, method="grid", run_cap=4, parameters={"lr": {"values": [1e-3, 3e-3, 1e-2]},
                                                                       "wd": {"values": [0.0, 0.01, 0.1]}})  # fmt: skip
    sweep = load(tmp_path, path)
    assert len(sweep.trials) == 4 and any("run_cap 4 of 9" in n for n in sweep.notes)


def test_a_command_line_value_for_a_swept_key_replaces_the_axis_and_says_so(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "overrides": [f"data.train_dir={tmp_path}"],
                                    "grid": {"optim.lr": [1e-3, 3e-3], "train.seed": [0, 1]}}))  # fmt: skip
    sweep = load_sweep(path, ["optim.lr=5e-3"])
    assert len(sweep.trials) == 2 and "optim.lr=5e-3" in sweep.overrides
    assert not any(o.startswith("optim.lr") for t in sweep.trials for o in t.overrides)
    assert any("optim.lr=5e-3 on the command line replaces the grid's optim.lr" in n for n in sweep.notes)
    with pytest.raises(FtlError, match=r"optim.lr=-1"):
        load_sweep(path, ["optim.lr=-1"])  # checked, not dropped


# ---------------------------------------------------------------- refused though it maps


@pytest.mark.parametrize(("name", "key"), [("optimizer", "optim.name"), ("opt", "optim.name"), ("model", "model.name"),
                                           ("model_name", "model.name"), ("arch", "model.name"),
                                           ("scheduler", "schedule.name"), ("sched", "schedule.name"),
                                           ("init_lr", "optim.lr"), ("base_lr", "optim.lr"), ("wd", "optim.weight_decay"),
                                           ("bs", "data.batch_size"), ("num_epochs", "train.epochs"),
                                           ("max_epochs", "train.epochs"), ("dropout", "model.head_dropout"),
                                           ("drop_path", "model.drop_path_rate"), ("label_smoothing", "augment.label_smoothing"),
                                           ("mixup", "augment.mixup"), ("cutmix", "augment.cutmix"),
                                           ("warmup_epochs", "schedule.warmup_epochs"), ("momentum", "optim.momentum"),
                                           ("seed", "train.seed"), ("img_size", "data.image_size"),
                                           ("input_size", "data.image_size"), ("activation_function", "model.act_layer"),
                                           ("freeze_epochs", "finetune.freeze_epochs")])  # fmt: skip
def test_names_people_use_resolve_by_their_role(tmp_path, name, key):
    value = {"optim.name": "adamw", "model.name": "mobilenetv2_100", "schedule.name": "cosine",
             "model.act_layer": "relu", "train.seed": 3, "train.epochs": 3, "data.batch_size": 8,
             "data.image_size": 64, "finetune.freeze_epochs": 1, "schedule.warmup_epochs": 1}.get(key, 0.1)  # fmt: skip
    sweep = load(tmp_path, wandb_file(tmp_path, method="grid", parameters={name: {"values": [value]}}))
    assert f"{name} -> {key}" in sweep.notes
    assert any(o == f"{key}={value}" or o.startswith(f"{key}=") for t in sweep.trials for o in t.overrides)


def test_a_wandb_file_gets_its_recipe_from_the_command_line_or_the_default(tmp_path):
    path = wandb_file(tmp_path, method="grid", parameters={"lr": {"values": [1e-3, 3e-3]}})
    assert load_sweep(path, [f"data.train_dir={tmp_path}"]).recipe == "fine_tune"  # the documented default
    assert load_sweep(path, [f"data.train_dir={tmp_path}"], recipe="linear_probe").recipe == "linear_probe"
    assert load_sweep(path, [f"data.train_dir={tmp_path}", "recipe=linear_probe"]).recipe == "linear_probe"
    dry = ftl("sweep", path, f"data.train_dir={tmp_path}", "--recipe", "base", "--dry-run")
    assert dry.returncode == 0 and "of recipe base" in dry.stdout, dry.stderr


def test_entity_and_project_become_tracking_keys(tmp_path):
    sweep = load(tmp_path, wandb_file(tmp_path, entity="my-team", project="vision", program="train.py"))
    assert "tracking.entity=my-team" in sweep.overrides and "tracking.project=vision" in sweep.overrides
    assert any("program not run" in n for n in sweep.notes)


# ---------------------------------------------------------------- refused, with the fix


@pytest.mark.parametrize(("spec", "pattern"), [
    ({"parameters": {"lr": {"values": 0.001}}}, r"values=0.001 must be a non-empty list .* write values: \[0.001\]"),
    ({"parameters": {"optimizer": {"values": "adamw"}}}, r"values='adamw' must be a non-empty list"),
    ({"parameters": {"lr": {"value": 1e-3, "values": [1e-3]}}}, r"both value and values, which W&B rejects"),
    ({"parameters": {"lr": {"min": 0.1, "max": 0.01}}}, r"min 0.1 is not less than max 0.01"),
    ({"parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}}, r"normal has no bounds"),
    ({"parameters": {"fc1_units": {"values": [64]}}}, r"'fc1_units' names no ftl config key"),
    ({"metric": {"name": "val_top1", "goal": "maximum"}}, r"'maximum' is not one of .* write goal: maximize"),
    ({"count": 5}, r"count is `wandb agent --count`.* write run_cap: N"),
    ({"run_cap": None, "method": "bayes"}, r"no run_cap: W&B would run this bayes sweep until stopped"),
    ({"imputation": "best"}, r"'imputation' is not one W&B accepts"),
    ({"parameters": {"lr": {"min": "small", "max": 1.0}}}, r"min='small' is not a number"),
    ({"parameters": {"epochs": {"value": [10, 50]}}}, r"epochs.value=\[10, 50\].* to sweep these, write values: \[10, 50\]"),
    ({"metric": {"name": "eval/loss"}}, r"metric.name='eval/loss' names no metric ftl logs .* write metric: \{name: val_loss"),
    ({"parameters": {"optimizer": {"parameters": {"nadam": {"parameters": {"beta": {"values": [0.9]}}}}}}},
     r"'optim.nadam' names no ftl config key .* name it by its ftl key"),
])  # fmt: skip
def test_what_wandb_rejects_or_ftl_lacks_is_one_line_with_the_fix(tmp_path, spec, pattern):
    spec = {k: v for k, v in spec.items()}
    if spec.get("run_cap", 0) is None:
        spec.pop("run_cap")
        path = wandb_file(tmp_path, **spec)
        data = yaml.safe_load(path.read_text())
        data.pop("run_cap")
        path.write_text(yaml.safe_dump(data))
    else:
        path = wandb_file(tmp_path, **spec)
    refused(tmp_path, path, pattern)


def test_a_quoted_number_is_text_as_for_wandb_and_an_unquoted_one_the_number_meant(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("method: random\nrun_cap: 2\nparameters:\n  lr: {min: '1e-3', max: 1.0e-1}\n")
    refused(tmp_path, path, r"min='1e-3' is text: YAML 1.1 reads 1e-3 as a string")
    path.write_text("method: random\nrun_cap: 2\nparameters:\n  lr: {min: 1e-3, max: 1e-1}\n")  # YAML 1.2: numbers
    assert load(tmp_path, path).search["space"]["optim.lr"] == {"uniform": [0.001, 0.1]}


def test_trial_ids_do_not_collide_below_ten_million(tmp_path):
    ids = {trial_id([f"train.seed={i}", "optim.lr=0.001"]) for i in range(1_000_000)}
    assert len(ids) == 1_000_000  # 64-bit ids: at 10^7 trials a collision has probability ~3e-6


def test_a_bool_where_a_module_name_is_expected_fails_the_dry_run(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "overrides": [f"data.train_dir={tmp_path}"],
                                    "grid": {"model.freeze": [False, "backbone"]}}))  # fmt: skip
    with pytest.raises(FtlError, match=r"model.freeze='False': use none \(nothing frozen\), backbone, or a module name"):
        load_sweep(path)


# ---------------------------------------------------------------- cluster configs


def cluster_file(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_hydra_launcher_file_is_read_with_hydras_meaning(tmp_path, monkeypatch):
    monkeypatch.setenv("FTL_TEST_ACCOUNT", "proj-1")
    path = cluster_file(tmp_path, """# @package hydra.launcher
defaults:
  - submitit_slurm
_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher
submitit_folder: ${hydra.sweep.dir}/.submitit/%j
partition: gpu
account: ${oc.env:FTL_TEST_ACCOUNT}
cpus_per_task: ${oc.env:FTL_TEST_CPUS,6}
mem_per_gpu: 16G
gpus_per_task: 1
comment: null
timeout_min: 120
""")
    cluster = load_cluster(str(path))
    assert cluster.executor == "slurm" and cluster.partition == "gpu" and cluster.account == "proj-1"
    assert cluster.cpus_per_task == 6 and cluster.timeout_min == 120  # ${oc.env:..,6} into an int field
    assert cluster.slurm == {"mem_per_gpu": "16G", "gpus_per_task": 1} and cluster.mem_gb is None
    assert cluster.signal_delay_s == 120 and cluster.max_num_timeout == 0  # Hydra's defaults, not ftl's


@pytest.mark.parametrize("key", ["slurm_constraint", "slurm_exclude", "slurm_signal_delay_s", "slurm_max_num_timeout",
                                 "slurm_partition", "constraint", "comment", "mem_per_cpu", "cpus_per_gpu", "wckey"])  # fmt: skip
def test_submitits_names_with_and_without_the_prefix(tmp_path, key):
    value = {"slurm_signal_delay_s": 60, "slurm_max_num_timeout": 2}.get(key, "x[1-2]" if "exclude" in key else "v")
    cluster = load_cluster(str(cluster_file(tmp_path, yaml.safe_dump({"executor": "slurm", key: value}))))
    bare = key.removeprefix("slurm_")
    assert getattr(cluster, bare, None) == value or cluster.slurm.get(bare) == value


def test_slurm_keys_without_executor_mean_slurm_and_unknown_keys_get_the_closest(tmp_path):
    cluster = load_cluster(str(cluster_file(tmp_path, "partition: gpu\ntimeout_min: 30\nsetup: [module load cuda]\n")))
    assert cluster.executor == "slurm"
    with pytest.raises(FtlError, match=r"'mem_per_gpus' \(did you mean: mem_per_gpu"):
        load_cluster(str(cluster_file(tmp_path, "executor: slurm\nmem_per_gpus: 4G\n")))
    with pytest.raises(FtlError, match=r"partition is mandatory \(\?\?\?\) in the file"):
        load_cluster(str(cluster_file(tmp_path, "executor: slurm\npartition: ???\n")))
    with pytest.raises(FtlError, match=r"FTL_NOT_SET"):
        load_cluster(str(cluster_file(tmp_path, "executor: slurm\naccount: ${oc.env:FTL_NOT_SET}\n")))


def test_method_ax_is_wandbs_bayesian_search(tmp_path):
    sweep = load(tmp_path, wandb_file(tmp_path, method="ax"))
    assert sweep.search["method"] == "tpe" and any("method ax" in n for n in sweep.notes)


@pytest.mark.parametrize("text", [
    # a primary config: its defaults pick the launcher, its other keys are the application's
    "defaults:\n  - override hydra/launcher: submitit_slurm\ntask: 1\nhydra:\n  mode: MULTIRUN\n",
    # @package _global_ with an empty launcher block (Hydra's defaults only)
    "# @package _global_\ndefaults:\n- override /hydra/launcher: submitit_slurm\nhydra:\n  mode: MULTIRUN\n  launcher:\n",
    # a conf/hydra/NAME.yaml (package hydra): its launcher: block
    "defaults:\n  - default.yaml\nlauncher:\n  timeout_min: 60\n  gres: gpu:a100:4\n  account: cmse\n",
])  # fmt: skip
def test_where_hydra_users_put_the_launcher(tmp_path, text):
    notes: list[str] = []
    cluster = load_cluster(str(cluster_file(tmp_path, text)), notes)
    assert cluster.executor == "slurm" and cluster.timeout_min == 60, notes
    assert any(n.startswith("read ") for n in notes)
    if "task: 1" in text:
        assert any("not read: task" in n for n in notes)


def test_hydra_0_11_submitit_launcher_takes_its_queue(tmp_path):
    text = """cls: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SubmititLauncher
params:
  queue: {queue}
  folder: ${{hydra.sweep.dir}}/.${{hydra.launcher.params.queue}}
  queue_parameters:
    slurm: {{nodes: 1, gpus_per_node: 1, ntasks_per_node: 2, mem: "${{hydra.launcher.mem_limit}}GB", time: 90,
            partition: dev, job_name: x, max_num_timeout: 3}}
    local: {{gpus_per_node: 1, tasks_per_node: 1, timeout_min: 60}}
mem_limit: 24
"""
    local = load_cluster(str(cluster_file(tmp_path, text.format(queue="local"))))
    assert local.executor == "local" and local.timeout_min == 60
    slurm = load_cluster(str(cluster_file(tmp_path, text.format(queue="slurm"))))
    assert (slurm.executor, slurm.mem_gb, slurm.timeout_min, slurm.tasks_per_node, slurm.partition,
            slurm.max_num_timeout) == ("slurm", 24, 90, 2, "dev", 3)  # fmt: skip


def test_interpolations_of_the_application_config(tmp_path, monkeypatch):
    monkeypatch.delenv("FTL_TEST_ACCOUNT", raising=False)
    hydra = "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher\n"
    text = hydra + "comment: Running ${experiment_name}\ntimeout_min: ${hydra.launcher.t}\nt: 30\n"
    notes: list[str] = []
    with pytest.raises(FtlError, match=r"unknown key 't'"):  # siblings resolve as Hydra does; t itself is no key
        load_cluster(str(cluster_file(tmp_path, text)), notes)
    cluster = load_cluster(str(cluster_file(tmp_path, hydra + "comment: Running ${experiment_name}\n")), notes)
    assert "comment" not in cluster.slurm and any("comment not used" in n for n in notes)
    with pytest.raises(FtlError, match=r"partition: .*names the application's Hydra config.* write partition: VALUE"):
        load_cluster(str(cluster_file(tmp_path, hydra + "partition: ${cluster.partition}\n")))
    with pytest.raises(FtlError, match=r"partition: \$\{cluster.partition\} refers to another config's value.* write"):
        load_cluster(str(cluster_file(tmp_path, "executor: slurm\npartition: ${cluster.partition}\n")))
    with pytest.raises(FtlError, match=r"account: .*needs FTL_TEST_ACCOUNT in the environment: export FTL_TEST_ACCOUNT"):
        load_cluster(str(cluster_file(tmp_path, "executor: slurm\naccount: ${oc.env:FTL_TEST_ACCOUNT,???}\n")))
    monkeypatch.setenv("FTL_TEST_ACCOUNT", "p1")
    assert load_cluster(str(cluster_file(tmp_path, "executor: slurm\naccount: ${oc.env:FTL_TEST_ACCOUNT,???}\n"))).account == "p1"


def test_a_name_whose_values_mean_another_keys_values(tmp_path):
    sweep = load(tmp_path, wandb_file(tmp_path, method="grid", parameters={"freeze_backbone": {"values": [True, False]}}))
    assert sorted(t.overrides[-1] for t in sweep.trials) == ["model.freeze=backbone", "model.freeze=none"]
    refused(tmp_path, wandb_file(tmp_path, parameters={"freeze_backbone": {"values": ["yes"]}}),
            r"freeze_backbone takes true, false \(-> backbone, none\)")


@pytest.mark.parametrize(("name", "hint"), [("decay", "optim.weight_decay"), ("training.lr_head", "optim.lr_spread"),
                                            ("lr_backbone", "optim.lr_spread")])  # fmt: skip
def test_names_with_two_meanings_get_both(tmp_path, name, hint):
    refused(tmp_path, wandb_file(tmp_path, parameters={name: {"values": [1e-3]}}), f"names no ftl config key; use .*{hint}")


def test_a_grid_of_constants_is_one_trial(tmp_path):
    sweep = load(tmp_path, wandb_file(tmp_path, method="grid", parameters={"lr": {"value": 0.01}, "epochs": {"value": 2}}))
    assert len(sweep.trials) == 1 and {"optim.lr=0.01", "train.epochs=2"} <= set(sweep.overrides + sweep.trials[0].overrides)


def test_the_recipes_weights_follow_a_swept_model(tmp_path):
    """`arch: [resnet18, ...]` over a recipe whose weights are MobileNetV2's: each model gets its own weights (the
    offline zoo's, else timm's default tag), as the author of the sweep meant; an explicit choice is kept."""
    from core import config as config_lib
    from core.zoo import weights_for

    assert weights_for("resnet18", "mobilenetv2_100.tv_in1k") == "resnet18.a1_in1k"
    assert weights_for("tf_efficientnet_lite0", "mobilenetv2_100.tv_in1k") == "tf_efficientnet_lite0.in1k"
    assert weights_for("resnet18", "/w/model.pth") == "/w/model.pth" and weights_for("resnet18", None) is None
    path = wandb_file(tmp_path, method="grid", parameters={"arch": {"values": ["resnet18", "tf_efficientnet_lite0"]}})
    assert len(load(tmp_path, path).trials) == 2  # the dry run checks each trial with its own weights
    cfg = config_lib.load("base", [f"data.train_dir={tmp_path}", "model.name=resnet18"])
    assert cfg.model.pretrained == "resnet18.a1_in1k"
    kept = config_lib.load("base", [f"data.train_dir={tmp_path}", "model.name=resnet18", "model.pretrained=null"])
    assert kept.model.pretrained is None


def test_shell_syntax_in_an_ftl_file_is_the_shells(tmp_path, monkeypatch):
    """`${#VAR}`, `${VAR:-0}` and `${VAR}` in the setup lines of ftl's own (or submitit's) files are shell syntax,
    kept as written; only `${oc.env:...}` is resolved there."""
    monkeypatch.setenv("FTL_TEST_CPUS", "3")
    setup = ['echo "${#MY_TOKEN} ${SLURM_RESTART_COUNT:-0} ${HOME}"', "export N=${oc.env:FTL_TEST_CPUS}"]
    path = cluster_file(tmp_path, yaml.safe_dump({"executor": "slurm", "setup": setup,
                                                  "cpus_per_task": "${oc.env:FTL_TEST_CPUS,6}"}))  # fmt: skip
    cluster = load_cluster(str(path))
    assert cluster.setup == [setup[0], "export N=3"] and cluster.cpus_per_task == 3
