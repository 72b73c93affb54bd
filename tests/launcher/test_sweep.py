"""Sweep expansion and validation: grid, zip, random and seeds; stable ids; one-line errors for bad sweep files."""

import pytest
import yaml

from core import config
from core.errors import FtlError
from launcher.clusters import load_cluster
from launcher.sweep import load_sweep


def write(tmp_path, spec: dict, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"recipe": "base", "overrides": ["data.train_dir=/tmp"], **spec}, sort_keys=False))
    return path


def test_grid_zip_seeds_product_and_stable_ids(tmp_path):
    path = write(tmp_path, {"grid": {"optim.lr": [1e-3, 3e-3], "finetune.strategy": ["full", "gradual"]},
                            "zip": {"model.name": ["mobilenetv2_100", "tf_efficientnet_lite0"],
                                    "model.pretrained": ["mobilenetv2_100.tv_in1k", "tf_efficientnet_lite0.in1k"]},
                            "seeds": [0, 1, 2]})  # fmt: skip
    a, b = load_sweep(path), load_sweep(path)
    assert len(a.trials) == 2 * 2 * 2 * 3
    assert [t.id for t in a.trials] == [t.id for t in b.trials] and len({t.id for t in a.trials}) == 24
    first = a.trials[0].overrides
    assert first == ["optim.lr=0.001", "finetune.strategy=full", "model.name=mobilenetv2_100",
                     "model.pretrained=mobilenetv2_100.tv_in1k", "train.seed=0"]  # fmt: skip
    cfg = config.load(a.recipe, [*a.overrides, *a.trials[-1].overrides])
    assert cfg.model.name == "tf_efficientnet_lite0" and cfg.train.seed == 2 and cfg.optim.lr == 3e-3


def test_random_sampling_is_seeded_and_in_range(tmp_path):
    spec = {"random": {"n": 20, "seed": 3, "params": {"optim.lr": {"loguniform": [1e-4, 1e-2]},
                                                      "data.batch_size": {"choice": [16, 32]},
                                                      "train.epochs": {"int": [2, 5]}}}}  # fmt: skip
    a, b = load_sweep(write(tmp_path, spec)), load_sweep(write(tmp_path, spec, "t.yaml"))
    assert [t.overrides for t in a.trials] == [t.overrides for t in b.trials] and len(a.trials) == 20
    for t in a.trials:
        cfg = config.load(a.recipe, [*a.overrides, *t.overrides])
        assert 1e-4 <= cfg.optim.lr <= 1e-2 and cfg.data.batch_size in (16, 32)
        assert 2 <= cfg.train.epochs <= 5 and isinstance(cfg.train.epochs, int)
    assert len({t.overrides[0] for t in a.trials}) == 20


@pytest.mark.parametrize(("spec", "pattern"), [
    ({"grid": {"optim.lrr": [1, 2]}}, r"unknown key 'optim.lrr' \(did you mean: optim.lr"),
    ({"grid": {}}, r"expands to no trial"),
    ({"grid": {"optim.lr": []}}, r"grid.optim.lr must be a non-empty list"),
    ({"grid": {"train.epochs": ["many"]}}, r"train.epochs.*many"),
    ({"grid": {"train.precision": ["fp8"]}}, r"train.precision='fp8' is not one of"),
    ({"zip": {"optim.lr": [1, 2], "train.epochs": [1]}}, r"zip lists differ in length"),
    ({"gird": {"optim.lr": [1]}}, r"unknown sweep key 'gird' \(did you mean: grid"),
    ({"random": {"n": 3, "params": {"optim.lr": {"normal": [0, 1]}}}}, r"random.params.optim.lr"),
    ({"random": {"n": 3, "params": {"optim.lr": {"uniform": [1]}}}}, r"uniform needs \[low, high\]"),
    ({"seeds": "0,1"}, r"seeds must be a list of ints"),
])  # fmt: skip
def test_bad_sweep_files(tmp_path, spec, pattern):
    with pytest.raises(FtlError, match=pattern):
        load_sweep(write(tmp_path, spec))


def test_bad_value_syntax(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("recipe: base\ngrid:\n  optim.lr: [1e-3, [\n")
    with pytest.raises(FtlError, match=r"bad.yaml: not valid YAML"):
        load_sweep(path)


def test_cluster_configs(tmp_path):
    assert load_cluster(None).executor == "local"
    assert load_cluster("slurm_example").gpus_per_node == 4
    bad = tmp_path / "c.yaml"
    bad.write_text("executor: slurm\npartion: gpu\n")
    with pytest.raises(FtlError, match=r"unknown key 'partion' \(did you mean: partition"):
        load_cluster(str(bad))
    bad.write_text("executor: kubernetes\n")
    with pytest.raises(FtlError, match=r"executor='kubernetes' must be local or slurm"):
        load_cluster(str(bad))
    with pytest.raises(FtlError, match=r"unknown cluster 'slurm_exmple' \(did you mean: slurm_example"):
        load_cluster("slurm_exmple")


@pytest.mark.parametrize(("spec", "pattern"), [
    ({"grid": {"model.name": ["mobilenetv2_100", "resnet5O"], "model.pretrained": [None]}},
     r"1 of 2 trials cannot run: model.name='resnet5O' is not a timm model.*\[trial \w+ \(model.name=resnet5O "),
    ({"grid": {"train.seed": [0, -1]}}, r"1 of 2 trials cannot run: .*train.seed=-1 must be >= 0"),
    ({"grid": {"finetune.strategy": ["full", "freeze-then-unfreeze"], "finetune.freeze_epochs": [5]}},
     r"finetune.freeze_epochs=5 leaves no unfrozen epoch"),
    ({"grid": {"optim.name": ["adamw", "adamm"]}}, r"optim.name='adamm' is not a timm optimizer \(did you mean"),
    ({"grid": {"model.pretrained": ["resnet50.a1_in1k"]}}, r"model.pretrained=resnet50.a1_in1k is for resnet50"),
    ({"grid": {"model.pretrained": ["/no/such/weights.pth"]}}, r"no such weight file or ftl run/export"),
    ({"grid": {"optim.layer_decay": [0.7]}, "overrides": ["data.train_dir=/tmp", "optim.lr=[1e-4,1e-3]"]},
     r"optim.layer_decay and discriminative LRs"),
    ({"grid": {"data.train_dir": ["/tmp", "/no/such/dir"]}}, r"data.train_dir=/no/such/dir: no such directory"),
    ({"grid": {"optim.lr": [1e-3]}, "overrides": []}, r"data.train_dir is required"),
    ({"grid": {"optim.lr": [1e-3]}, "metric": "val_top10"}, r"metric 'val_top10' is not logged by this trial"),
    ({"grid": {"train.ema": [False, True]}, "metric": "val_ema_top1"}, r"1 of 2 trials cannot run.*val_ema_top1"),
    ({"grid": {"optim.lr": [1e-3]}, "early_stop": {"min_epoch": 1}},
     r"early_stop.min_epoch is not a key \(did you mean: min_epochs"),
    ({"grid": {"optim.lr": [1e-3]}, "early_stop": {"reduction_factor": 1}}, r"reduction_factor=1 must be .* >= 2"),
    ({"grid": {"data.image_size": [[[0, 32], [9, 64]]]}}, r"a size starts at epoch 9, after the last"),
])  # fmt: skip
def test_every_trial_is_checked_in_full_before_anything_runs(tmp_path, spec, pattern):
    """Not only each value: each trial's whole config - names, cross-key rules, required keys, paths, the metric."""
    with pytest.raises(FtlError, match=pattern):
        load_sweep(write(tmp_path, spec))


def test_dry_run_names_the_bad_trial_in_one_line(tmp_path):
    from tests.conftest import run_ftl

    path = write(tmp_path, {"grid": {"train.seed": [0, 1, -3]}})
    proc = run_ftl("sweep", path, "--dry-run")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "train.seed=-3 must be >= 0" in lines[0], proc.stderr
    good = run_ftl("sweep", write(tmp_path, {"grid": {"train.seed": [0, 1]}}, "g.yaml"), "--dry-run")
    assert good.returncode == 0 and "2 trials" in good.stdout


def test_slurm_time_strings(tmp_path):
    from launcher.clusters import slurm_minutes

    for given, minutes in ((90, 90), ("90", 90), ("90:30", 90.5), ("1:00:00", 60), ("2-00:00:00", 2880), ("2-12", 3600),
                           ("2-12:30", 3630), ("0-0:0:30", 0.5)):  # fmt: skip  # SLURM gets them rounded up
        assert slurm_minutes(given) == minutes, given
    path = tmp_path / "c.yaml"
    path.write_text("executor: slurm\ntimeout_min: 1:00:00\n")  # YAML 1.1 would read 3600 (minutes: 60 hours)
    assert load_cluster(str(path)).timeout_min == 60
    path.write_text("executor: slurm\ntime_min: 2-00:00:00\n")  # ftl's earlier name, an alias
    assert load_cluster(str(path)).timeout_min == 2880
    path.write_text("executor: slurm\ntimeout_min: 1h\n")
    with pytest.raises(FtlError, match=r"timeout_min='1h': use minutes or a SLURM time string"):
        load_cluster(str(path))


def test_cluster_configs_in_submitits_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("executor: slurm\nmax_num_timeout: 7\nadditional_parameters: {begin: now}\ntasks_per_node: 3\n"
                    "gres: gpu:a100:4\nexclude: n3\nsignal_delay_s: 120\n")
    c = load_cluster(str(path))
    assert (c.max_num_timeout, c.additional_parameters, c.tasks_per_node, c.gres, c.exclude, c.signal_delay_s) == (
        7, {"begin": "now"}, 3, "gpu:a100:4", "n3", 120)
    path.write_text("executor: slurm\nmax_requeues: 2\nsbatch: {hold: true}\n")  # ftl's earlier names
    c = load_cluster(str(path))
    assert c.max_num_timeout == 2 and c.additional_parameters == {"hold": True}
    path.write_text("executor: slurm\npartion: gpu\ntimeout_mn: 5\ngpus: 2\n")
    with pytest.raises(FtlError, match=r"unknown keys 'partion' \(did you mean: partition.*'timeout_mn' .*'gpus'"):
        load_cluster(str(path))
    path.write_text("executor: slurm\ntime_min: 5\ntimeout_min: 6\n")
    with pytest.raises(FtlError, match=r"time_min and timeout_min name the same setting"):
        load_cluster(str(path))
