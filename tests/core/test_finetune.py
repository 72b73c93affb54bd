"""Fine-tune phases, discriminative LRs, schedules across phases and the LR finder."""

import math

import pytest
import torch

from core.errors import FtlError
from core.finetune import Phase, apply_phase, phase_at, plan_phases, stage_groups
from core.models import build_model, count_params
from core.optim import PhasedSchedule, create_optimizer


@pytest.fixture(scope="module")
def model():
    return build_model("mobilenetv2_100", 4)[0]


def test_plans():
    assert plan_phases("full", 5, 9) == [Phase(0, 5, 0)]
    assert plan_phases("linear-probe", 5, 9) == [Phase(0, 5, 8)]
    assert plan_phases("freeze-then-unfreeze", 5, 9, freeze_epochs=2) == [Phase(0, 2, 8), Phase(2, 5, 0)]
    gradual = plan_phases("gradual", 6, 4, unfreeze_every=2)
    assert gradual == [Phase(0, 2, 3), Phase(2, 4, 2), Phase(4, 6, 1)]
    assert [gradual[phase_at(gradual, e)].first_trainable_stage for e in range(6)] == [3, 3, 2, 2, 1, 1]
    with pytest.raises(FtlError, match=r"finetune.freeze_epochs=5 leaves no unfrozen epoch in train.epochs=5"):
        plan_phases("freeze-then-unfreeze", 5, 9, freeze_epochs=5)


def test_phase_switch_changes_requires_grad_and_counts(model):
    stages = stage_groups(model)
    assert stages[-1] == ["classifier.weight", "classifier.bias"] and stages[0][0] == "conv_stem.weight"
    total = sum(p.numel() for p in model.parameters())
    plan = plan_phases("gradual", 9, len(stages))
    head_only = apply_and_count(model, stages, plan[0], train_bn=False)
    assert head_only.trainable == 1280 * 4 + 4 and head_only.frozen == total - head_only.trainable
    with_bn = apply_and_count(model, stages, plan[0], train_bn=True)
    assert with_bn.trainable > head_only.trainable and not model.conv_stem.weight.requires_grad
    counts = [apply_and_count(model, stages, p, train_bn=False).trainable for p in plan]
    assert counts == sorted(counts) and counts[-1] == total  # one more stage each phase, all at the end
    stage7 = {n for n in stages[7]}
    apply_phase(model, stages, plan[1], set(), train_bn=False)
    assert all(p.requires_grad == (n in stage7 or n.startswith("classifier")) for n, p in model.named_parameters())
    apply_phase(model, stages, plan[-1], always_frozen={"conv_stem.weight"}, train_bn=False)
    assert not model.conv_stem.weight.requires_grad and model.blocks[0][0].conv_dw.weight.requires_grad


def apply_and_count(model, stages, phase, train_bn):
    apply_phase(model, stages, phase, set(), train_bn)
    return count_params(model)


def test_discriminative_lrs_land_on_the_right_groups(model):
    for p in model.parameters():
        p.requires_grad_(True)
    stages = stage_groups(model)
    opt = create_optimizer(model, "adamw", 2e-3, 0.01, stages=stages, lr_spread=100)
    by_stage = {}
    for g in opt.param_groups:
        by_stage.setdefault(g["ftl_stage"], set()).add(round(g["lr"], 12))
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else 0.01)
    lrs = [by_stage[i].pop() for i in range(len(stages))]
    assert lrs[-1] == pytest.approx(2e-3) and lrs[0] == pytest.approx(2e-5)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(100 ** (1 / (len(stages) - 1))) for r in ratios)  # geometric
    head = next(g for g in opt.param_groups if g["ftl_stage"] == len(stages) - 1 and g["weight_decay"] > 0)
    assert {id(p) for p in head["params"]} == {id(model.classifier.weight)}


def test_layer_decay_groups(model):
    for p in model.parameters():
        p.requires_grad_(True)
    opt = create_optimizer(model, "sgd", 1e-2, 0.0, layer_decay=0.5)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert max(lrs) == pytest.approx(1e-2) and len(lrs) > 3 and min(lrs) < 1e-4


def test_phased_schedule_restarts_a_cycle_per_phase_and_replays_exactly():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=1.0)
    opt.param_groups[0]["ftl_lr_scale"] = 0.5
    sched = PhasedSchedule(opt, "onecycle", 1e-2, [20, 40], updates_per_epoch=20)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5e-2 / 25)  # one-cycle starts at peak / 25
    assert max(lrs[:20]) == pytest.approx(0.5e-2) and max(lrs[20:]) == pytest.approx(0.5e-2)
    assert lrs[20] == pytest.approx(0.5e-2 / 25)  # the second phase starts a new cycle
    assert lrs[19] < 1e-5 and lrs[59] < 1e-5  # each cycle anneals to ~peak / 25 / 1e5
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    opt2.param_groups[0]["ftl_lr_scale"] = 0.5
    replayed = PhasedSchedule(opt2, "onecycle", 1e-2, [20, 40], updates_per_epoch=20)
    replayed.load_state_dict({"updates": 27})
    assert opt2.param_groups[0]["lr"] == lrs[27] and replayed.phase == 1


def test_phased_schedule_skips_an_empty_phase_and_waits_for_a_found_peak():
    """finetune.freeze_epochs=0 plans an empty first phase: the first update is the one-cycle's warm-up start, not
    the peak. A phase whose peak is None (optim.lr=auto, found when it starts) takes it from set_peak."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    opt.param_groups[0]["ftl_lr_scale"] = 1.0
    sched = PhasedSchedule(opt, "onecycle", 1e-2, [0, 20], updates_per_epoch=20)
    assert sched.phase == 1 and opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 25)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[-1] < 1e-6 and max(lrs) == pytest.approx(1e-2, rel=0.05)
    later = PhasedSchedule(opt, "onecycle", [1e-2, None], [4, 8], updates_per_epoch=4)
    for _ in range(4):
        later.step()
    assert later.phase == 1 and later.scheduler is None
    with pytest.raises(RuntimeError, match="no peak LR"):
        later.step()
    later.set_peak(1, 3e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-3 / 25)


def test_lr_finder_on_a_known_problem_restores_weights():
    """Softmax regression on scikit-learn's digits with SGD: sane LRs lie around 1e-2..1."""
    from accelerate import Accelerator
    from sklearn.datasets import load_digits

    from core.engine import release_accelerator
    from core.lr_finder import lr_range_test

    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerator = Accelerator(cpu=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()["param_groups"][0]["lr"]
    result = lr_range_test(accelerator, model, opt, loader, torch.nn.functional.cross_entropy, 1e-5, 100, 100)
    release_accelerator()
    assert result.diverged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == opt_before
    assert 1e-2 <= result.suggestions["valley"] <= 3.0, result.suggestions
    assert 1e-3 <= result.suggestions["minimum"] <= 3.0, result.suggestions
    assert all(math.isfinite(v) for v in result.losses)


def test_range_test_shape_scales_with_the_run():
    """fastai's test (100 steps at the run's batch from 1e-7) for a run of 1000 updates or more; 40 steps of at
    most 32 images from 1e-5 for a shorter one; what lr_find sets always wins."""
    from core.lr_finder import range_test_shape

    assert range_test_shape(None, None, None, 1000, 64) == (100, 64, 1e-7)
    assert range_test_shape(None, None, None, 999, 64) == (40, 32, 1e-5)
    assert range_test_shape(None, None, None, 30, 20) == (40, 20, 1e-5)  # never more than the run's batch
    assert range_test_shape(12, 8, 1e-6, 30, 64) == (12, 8, 1e-6)
    assert range_test_shape(200, None, None, 10_000, 128) == (200, 128, 1e-7)


def test_parameter_group_table_shows_each_groups_peak():
    """One-cycle starts at peak / 25: the table's 'peak lr' column must show the peak, per group."""
    from core.optim import PhasedSchedule, param_group_table

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for name in ("onecycle", "cosine"):  # groups scaled 0.1x and 1x of the peak (discriminative LRs)
        opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-4, "ftl_lr_scale": 0.1},
                                 {"params": model[1].parameters(), "lr": 1e-3, "ftl_lr_scale": 1.0}])  # fmt: skip
        PhasedSchedule(opt, name, 1e-3, [20], 10)
        rows = param_group_table(opt, {}).splitlines()[1:]
        peaks = [float(r.split()[-3]) for r in rows]
        assert peaks == [1e-4, 1e-3], (name, rows)
