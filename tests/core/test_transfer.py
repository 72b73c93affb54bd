"""Transfer quality on data nobody tuned for: aspect-aware resizing, the model's own preprocessing, MixUp on odd
batches, an LR finder that trains like the run, EMA on short runs, metric losses, retrieval metrics and fixed
costs (image cache, fewer checkpoints)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core import config, engine
from core.config import AugmentConfig
from core.errors import FtlError
from tests.conftest import MOBILENET, lfw_overrides, run_ftl

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def wide_image() -> Image.Image:
    """A 96x32 grey image with a red block at the left end and a blue block at the right end."""
    a = np.full((32, 96, 3), 128, dtype=np.uint8)
    a[:, :12] = (255, 0, 0)
    a[:, -12:] = (0, 0, 255)
    return Image.fromarray(a)


def ends(x: torch.Tensor) -> tuple[float, float]:
    """How red the left edge and how blue the right edge are, on the middle rows (normalised with MEAN/STD)."""
    h = x.shape[1]
    mid = slice(h // 2 - 2, h // 2 + 2)
    return (float(x[0, mid, 0].mean() - x[2, mid, 0].mean()), float(x[2, mid, -1].mean() - x[0, mid, -1].mean()))


# ---------------------------------------------------------------- data.resize and the model's own preprocessing


@pytest.mark.parametrize("mode", ["squash", "pad", "border"])
def test_eval_resize_keeps_the_ends_of_a_wide_image_that_crop_cuts(mode):
    from core.data.transforms import eval_transform

    crop = eval_transform(32, MEAN, STD, 1.0, "crop")(wide_image())
    kept = eval_transform(32, MEAN, STD, 1.0, mode)(wide_image())
    assert crop.shape == kept.shape == (3, 32, 32)
    assert max(ends(crop)) < 0.1  # the centre crop shows neither end
    left, right = ends(kept)
    assert left > 1.0 and right > 1.0, (mode, left, right)


def test_train_squash_crop_is_drawn_in_the_image_frame():
    from core.data.transforms import train_transform

    aug = AugmentConfig(scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0)
    torch.manual_seed(0)
    squash = train_transform(32, MEAN, STD, aug, "squash")(wide_image())
    crop = train_transform(32, MEAN, STD, aug, "crop")(wide_image())
    assert squash.shape == (3, 32, 32)
    assert min(ends(squash)) > 1.0  # the whole image, squashed
    assert min(ends(crop)) < 0.1  # a square crop of a 3:1 image misses at least one end


def test_resize_rules_are_one_line_config_errors(lfw):
    with pytest.raises(FtlError, match=r"data.resize='stretch' is not one of: auto, crop, squash, pad"):
        config.load("fine_tune", lfw_overrides(lfw, **{"data.resize": "stretch"}))
    with pytest.raises(FtlError, match="data.resize=squash runs only on the torch path"):
        config.load("fine_tune", lfw_overrides(lfw, **{"data.resize": "squash", "data.loader": "ffcv"}))
    for allowed in ("crop", "auto"):  # auto: squash on the torch path, crop where the loader crops itself
        config.load("fine_tune", lfw_overrides(lfw, **{"data.resize": allowed, "data.loader": "ffcv"}))


def test_mean_std_and_crop_pct_are_the_models_own_unless_set():
    import timm

    from core.models import data_config

    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert data_config(lite) == {"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875}
    mine = data_config(lite, [0.1, 0.2, 0.3], None, 1.0)
    assert mine["mean"] == [0.1, 0.2, 0.3] and mine["std"] == [0.5] * 3 and mine["crop_pct"] == 1.0
    assert config.load("fine_tune", ["data.train_dir=x"]).data.crop_pct is None  # not fixed at 0.875 any more


# ---------------------------------------------------------------- MixUp / CutMix on odd batches


def test_odd_batch_is_mixed_not_skipped():
    from core.data.transforms import batch_mixer

    mixer = batch_mixer(AugmentConfig(mixup=1.0, cutmix=0.0, label_smoothing=0.1), 4)
    images, targets = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    np.random.seed(0)
    mixed, soft = mixer(images.clone(), targets)
    assert mixed.shape == images.shape and soft.shape == (5, 4)
    assert not torch.allclose(mixed[:4], images[:4])  # the first four are mixed
    assert torch.equal(mixed[4], images[4])  # the fifth keeps its image and its (smoothed) label
    assert torch.allclose(soft[4], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    assert torch.allclose(soft.sum(1), torch.ones(5))
    one, one_soft = mixer(images[:1].clone(), targets[:1])
    assert one_soft.shape == (1, 4) and torch.equal(one, images[:1])


def test_train_step_mixes_an_odd_batch():
    from accelerate import Accelerator

    from core.data.transforms import batch_mixer
    from core.engine import release_accelerator, train_step

    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    acc = Accelerator(cpu=True)
    try:
        mixer = batch_mixer(AugmentConfig(mixup=0.4, cutmix=1.0), 3)
        loss = lambda logits, t: (seen.append(t.ndim), torch.nn.functional.cross_entropy(logits, t))[1]  # noqa: E731
        train_step(acc, model, (torch.rand(7, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])), loss, opt, schedule,
                   None, mixer=mixer)  # fmt: skip
    finally:
        release_accelerator()
    assert seen == [2]  # soft (mixed) targets, not the hard labels of a skipped mix


# ---------------------------------------------------------------- the LR finder


class CountingIterator:
    def __init__(self, n: int):
        self.n, self.taken = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.taken >= self.n:
            raise StopIteration
        self.taken += 1
        g = torch.Generator().manual_seed(self.taken)
        return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


def test_lr_finder_accumulates_like_training_and_never_restarts_the_stream():
    from accelerate import Accelerator

    from core.engine import release_accelerator
    from core.lr_finder import lr_range_test

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = {"n": 0}
    opt.register_step_post_hook(lambda *_: steps.__setitem__("n", steps["n"] + 1))
    acc = Accelerator(cpu=True)
    try:
        stream = CountingIterator(30)
        result = lr_range_test(acc, model, opt, stream, torch.nn.functional.cross_entropy, 1e-4, 1e-2, 10,
                               accum_steps=3, progress=False)  # fmt: skip
        assert stream.taken == 30 and steps["n"] == 10 and len(result.lrs) == 10  # 3 micro-batches per point
        with pytest.raises(ValueError, match="stream ended at step 5"):  # an iterator is never re-created
            lr_range_test(acc, model, opt, CountingIterator(10), torch.nn.functional.cross_entropy, 1e-4, 1e-2, 10,
                          accum_steps=2, progress=False)  # fmt: skip
    finally:
        release_accelerator()


def test_range_test_stream_is_one_loader_over_fresh_passes(lfw):
    from core.data.datasets import build_datasets, range_test_loader
    from core.data.transforms import train_transform

    aug = AugmentConfig(scale=[0.3, 1.0])
    splits = build_datasets(f"{lfw}/train", f"{lfw}/val", lambda s: train_transform(s, MEAN, STD, aug), None,
                            image_size=32)  # fmt: skip
    loader = range_test_loader(splits.train, 8, 12, seed=0, num_workers=0)  # 96 samples: 2.4 passes over 40
    batches = list(loader)
    assert len(batches) == 12 and all(len(x) == 8 for x, _ in batches)
    images = torch.cat([x for x, _ in batches])
    first, second = images[:40], images[40:80]  # pass 0 and pass 1: a new order and new augmentation draws
    assert not any(torch.equal(first[i], second[j]) for i in range(40) for j in range(40))
    again = torch.cat([x for x, _ in range_test_loader(splits.train, 8, 12, seed=0, num_workers=0)])
    assert torch.equal(images, again)  # seeded


def test_suggestions_come_only_from_before_divergence_and_the_plot_clips():
    from core.lr_finder import suggest, y_range

    lrs = [1e-6 * 10 ** (i / 10) for i in range(60)]
    losses = [2.0] * 10 + [2.0 - 0.05 * i for i in range(1, 21)] + [1.0 + 0.2 * i for i in range(1, 11)]
    losses += [2.0] + [2.2 + 0.5 * i for i in range(19)]  # a dip inside the divergent tail: the steepest fall
    lowest = losses.index(min(losses))
    found = suggest(lrs, losses)
    assert all(lr <= lrs[lowest] for lr in found.values()), (found, lrs[lowest])
    low, top = y_range(losses)
    assert low < 1.0 and 2.0 < top < 2.5 < max(losses)  # the divergent tail (up to 11.2) is clipped off


def test_a_curve_that_only_rises_gives_no_suggestion_and_a_later_phase_keeps_the_lr_before():
    """A later phase's range test on a model that already fits its data can see the loss rise from the first
    point: no suggestion; `choose` then keeps the fallback (the engine passes the phase before's LR) and without
    one (the first phase) it fails with a line naming the fix."""
    from core.errors import FtlError
    from core.lr_finder import LRFindResult, choose, suggest

    lrs, losses = [1e-7 * 14**i for i in range(6)], [0.45, 0.47, 0.5, 0.55, 0.62, 0.74]
    rising = LRFindResult(lrs, losses, diverged=True, suggestions=suggest(lrs, losses))
    assert rising.suggestions == {}
    assert choose(rising, "minimum", fallback=2e-3) == 2e-3
    with pytest.raises(FtlError, match="no 'minimum' suggestion; set optim.lr to a number"):
        choose(rising, "minimum")


@pytest.mark.slow
def test_lr_find_command_and_auto_agree(lfw, tmp_path):
    from core import lr_finder

    over = lfw_overrides(lfw, **{"optim.lr": "auto", "lr_find.num_steps": 30, "data.num_workers": 1,
                                 "train.epochs": 1, "finetune.freeze_epochs": 0, "train.grad_accum_steps": 2})  # fmt: skip
    cfg = config.load("fine_tune", over)
    found = engine.find_lr(cfg, tmp_path / "find")
    result = engine.fit(config.load("fine_tune", over), tmp_path / "run")
    chosen = json.loads((tmp_path / "run" / "lr_find.json").read_text())["chosen"]
    assert chosen == lr_finder.choose(found, cfg.lr_find.suggestion) and result["status"] == "completed"
    assert (tmp_path / "find" / "lr_find.png").is_file()


def test_auto_finds_each_phases_lr_as_it_starts_and_resumes_exactly(lfw, tmp_path):
    """optim.lr=auto with freeze-then-unfreeze: a head-only range test before the first phase and a whole-network
    one when the unfrozen phase starts (its own LR, JSON and plot), each phase's one-cycle peaking at its own LR;
    a run stopped in either phase, or between them, resumes to the same weights without re-running a test."""
    from safetensors.torch import load_file

    from tests.conftest import stop_after

    over = lfw_overrides(lfw, **{**MOBILENET, "optim.lr": "auto", "lr_find.num_steps": 12, "data.batch_size": 8, "train.epochs": 3,
                                 "lr_find.each_phase": "true", "data.image_size": 32, "train.deterministic": "true"})  # fmt: skip
    full = engine.fit(config.load("fine_tune", over), tmp_path / "full")
    one, two = (json.loads((tmp_path / "full" / f).read_text()) for f in ("lr_find.json", "lr_find_phase2.json"))
    assert (one["phase"], two["phase"]) == (1, 2) and (tmp_path / "full" / "lr_find_phase2.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]  # the head group's LR after each of the 5 + 10 updates
    assert len(lrs) == 15
    assert 0.5 * one["chosen"] <= max(lrs[:5]) <= one["chosen"] * 1.0001
    assert 0.9 * two["chosen"] <= max(lrs[5:]) <= two["chosen"] * 1.0001
    digest = load_file(str(tmp_path / "full" / "export" / "last.safetensors"))
    for stop, where in ((5, "at the phase boundary, before phase 2's test"), (8, "in phase 2, after its test")):
        part = tmp_path / f"part{stop}"
        assert engine.fit(config.load("fine_tune", over), part, should_stop=stop_after(stop))["status"] == "interrupted"
        found = sorted(p.name for p in part.glob("lr_find*.json"))
        assert found == (["lr_find.json"] if stop == 5 else ["lr_find.json", "lr_find_phase2.json"]), where
        before = {p.name: p.stat().st_mtime_ns for p in part.glob("lr_find*.json")}
        resumed = engine.fit(config.load("fine_tune", [*over, f"resume={part}"]))
        assert resumed["val_top1"] == full["val_top1"], where
        again = load_file(str(part / "export" / "last.safetensors"))
        assert all(torch.equal(digest[k], again[k]) for k in digest), where
        assert all(part.joinpath(n).stat().st_mtime_ns == t for n, t in before.items()), where  # not re-run
        assert json.loads((part / "lr_find_phase2.json").read_text())["chosen"] == two["chosen"], where


def test_auto_by_default_runs_one_short_test_and_scales_the_unfrozen_phase(lfw, tmp_path):
    """optim.lr=auto as it comes: a run this short (10 updates) gets the short range test (40 steps of at most 32
    images from 1e-5: here the run's 8), one test only, and the unfrozen phase peaks at 0.3x its LR."""
    over = lfw_overrides(lfw, **{**MOBILENET, "optim.lr": "auto", "data.batch_size": 8, "train.epochs": 2,
                                 "data.image_size": 32})  # fmt: skip
    engine.fit(config.load("fine_tune", over), tmp_path / "r")
    assert [p.name for p in tmp_path.joinpath("r").glob("lr_find*.json")] == ["lr_find.json"]
    found = json.loads((tmp_path / "r" / "lr_find.json").read_text())
    assert found["batch_size"] == 8 and found["lrs"][0] == pytest.approx(1e-5) and len(found["lrs"]) <= 40
    assert found["lrs"][1] / found["lrs"][0] == pytest.approx((10 / 1e-5) ** (1 / 39))  # 40 steps up to end_lr 10
    lrs = [json.loads(line).get("lr") for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lrs = [x for x in lrs if x]
    assert len(lrs) == 10
    assert 0.9 * found["chosen"] <= max(lrs[:5]) <= found["chosen"] * 1.0001
    assert 0.9 * 0.3 * found["chosen"] <= max(lrs[5:]) <= 0.3 * found["chosen"] * 1.0001


def test_lr_race_picks_the_unfrozen_phases_lr_by_training_and_resumes_exactly(lfw, tmp_path):
    """lr_find.race: as the unfrozen phase starts, each candidate trains race_epochs of it from the same state and
    the lowest val_loss wins; the phase then trains with the winner from its start. A run stopped inside the race
    or after it resumes to the same weights; after it, without racing again."""
    from safetensors.torch import load_file

    from tests.conftest import stop_after

    over = lfw_overrides(lfw, **{"optim.lr": 3e-3, "lr_find.race": "[1,0.1]", "lr_find.race_epochs": 1,
                                 "data.batch_size": 8, "train.epochs": 3, "data.image_size": 32,
                                 "train.deterministic": "true"})  # fmt: skip
    full = engine.fit(config.load("fine_tune", over), tmp_path / "full")
    race = json.loads((tmp_path / "full" / "lr_race_phase2.json").read_text())
    lrs = sorted(c["lr"] for c in race["candidates"])
    assert lrs == pytest.approx([3e-4, 3e-3]) and race["chosen"] in lrs and race["epochs"] == 1
    assert race["chosen"] == min(race["candidates"], key=lambda c: c["val_loss"])["lr"]
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "lr" in r]
    assert steps == list(range(1, 16))  # the race's 2 x 5 updates are not the run's: 5 + 10 updates logged
    phase2 = [r["lr"] for r in records if "lr" in r][5:]
    assert 0.5 * race["chosen"] <= max(phase2) <= race["chosen"] * 1.0001
    digest = load_file(str(tmp_path / "full" / "export" / "last.safetensors"))
    for stop, where in ((8, "inside the race"), (18, "in the unfrozen phase, after the race")):
        part = tmp_path / f"part{stop}"
        assert engine.fit(config.load("fine_tune", over), part, should_stop=stop_after(stop))["status"] == "interrupted"
        raced = part / "lr_race_phase2.json"
        assert raced.is_file() == (stop == 18), where
        before = raced.stat().st_mtime_ns if raced.is_file() else None
        resumed = engine.fit(config.load("fine_tune", [*over, f"resume={part}"]))
        assert resumed["val_top1"] == full["val_top1"], where
        again = load_file(str(part / "export" / "last.safetensors"))
        assert all(torch.equal(digest[k], again[k]) for k in digest), where
        assert json.loads(raced.read_text())["chosen"] == race["chosen"], where
        assert before is None or raced.stat().st_mtime_ns == before, where  # not raced again
    with pytest.raises(FtlError, match=r"lr_find.race=\[1\.0\] must be a list of at least two factors"):
        config.load("fine_tune", [*over, "lr_find.race=[1]"])
    with pytest.raises(FtlError, match=r"no phase is longer than lr_find.race_epochs=2 \(phases of \[1, 2\] epochs\)"):
        engine.fit(config.load("fine_tune", [*over, "lr_find.race_epochs=2"]), tmp_path / "short")
    assert not (tmp_path / "short").exists()


def test_unfrozen_lr_scale_lowers_the_later_phases_peak_only(lfw, tmp_path):
    """finetune.unfrozen_lr_scale (fastai's fine_tune halves its LR as it unfreezes): the head-only phase peaks
    at optim.lr, the unfrozen phase at lr x scale; a value <= 0 is one line naming the key."""
    over = lfw_overrides(lfw, **{"optim.lr": 2e-3, "finetune.unfrozen_lr_scale": 0.5, "data.batch_size": 8,
                                 "train.epochs": 2, "data.image_size": 32})  # fmt: skip
    engine.fit(config.load("fine_tune", over), tmp_path / "r")
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]  # the head group's LR after each of the 5 + 5 updates
    assert len(lrs) == 10
    assert 0.9 * 2e-3 <= max(lrs[:5]) <= 2e-3 * 1.0001 and 0.9 * 1e-3 <= max(lrs[5:]) <= 1e-3 * 1.0001
    with pytest.raises(FtlError, match="finetune.unfrozen_lr_scale"):
        config.load("fine_tune", [*over, "finetune.unfrozen_lr_scale=0"])
    # auto with a test per phase: a scale would be silently ignored, so it is refused (with one test it applies)
    with pytest.raises(FtlError, match=r"unfrozen_lr_scale=0.5 has no effect with optim.lr=auto"):
        config.load("fine_tune", [*over, "optim.lr=auto", "lr_find.each_phase=true"])
    assert config.load("fine_tune", [*over, "optim.lr=auto"])


# ---------------------------------------------------------------- EMA on a short run


@pytest.mark.slow
def test_ema_validates_close_to_the_live_weights_on_a_short_run(lfw, tmp_path):
    """16 updates at decay 0.998: without warm-up the EMA keeps 97% of the start (a random head: near chance)."""
    over = lfw_overrides(lfw, **{**MOBILENET, "train.ema": "true", "train.ema_decay": 0.998, "data.batch_size": 10,
                                 "data.image_size": 48, "optim.lr": 3e-3, "train.epochs": 4})  # fmt: skip
    result = engine.fit(config.load("base", over), tmp_path / "r")
    print(result["val_top1"], result["val_ema_top1"])
    assert result["val_top1"] >= 0.8
    assert result["val_ema_top1"] >= result["val_top1"] - 0.1


# ---------------------------------------------------------------- precise BatchNorm on a short run


def test_precise_bn_recomputes_training_layers_only_and_leaves_the_rng():
    """Running statistics become the plain average over the batches (what the weights give now), a layer a frozen
    stage holds in eval mode keeps its own, momentum comes back, and the global RNG is untouched."""
    from accelerate import Accelerator

    from core.models import recompute_bn_stats

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    model.train()
    model[2].eval()  # as set_frozen_bn_eval leaves a frozen stage's BN
    frozen = model[2].running_mean.clone()
    batches = [(torch.randn(8, 3, 5, 5) * (i + 1), torch.zeros(8)) for i in range(3)]
    state = torch.get_rng_state()
    n = recompute_bn_stats(Accelerator(cpu=True), model, batches, 2, lambda x, y: (x, y))
    assert n == 2 and torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:2]]
    expected = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert torch.equal(model[2].running_mean, frozen) and model[1].momentum == 0.1


def test_precise_bn_run_resumes_exactly(lfw, tmp_path):
    """BN statistics recomputed before each validation (from the epoch's own batches): a run stopped mid-epoch
    resumes to the same weights and buffers, and the statistics differ from the ones training left."""
    from safetensors.torch import load_file

    from tests.conftest import stop_after

    over = lfw_overrides(lfw, **{"train.precise_bn": 3, "data.batch_size": 8, "train.epochs": 2,
                                 "data.image_size": 32, "train.deterministic": "true"})  # fmt: skip
    full = engine.fit(config.load("fine_tune", over), tmp_path / "full")
    assert full["time_s"]["precise_bn"] > 0
    part = engine.fit(config.load("fine_tune", over), tmp_path / "part", should_stop=stop_after(7))
    assert part["status"] == "interrupted"
    resumed = engine.fit(config.load("fine_tune", [*over, f"resume={tmp_path / 'part'}"]))
    assert resumed["val_top1"] == full["val_top1"] and resumed["val_loss"] == full["val_loss"]
    a = load_file(str(tmp_path / "full" / "export" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "export" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = engine.fit(config.load("fine_tune", [*over, "train.precise_bn=0"]), tmp_path / "plain")
    c = load_file(str(tmp_path / "plain" / "export" / "last.safetensors"))
    assert not torch.equal(a["bn2.running_var"], c["bn2.running_var"]) and plain["status"] == "completed"


# ---------------------------------------------------------------- metric learning


def test_recall_at_k_and_class_balanced_batches():
    from core.data.datasets import ClassBalancedSampler
    from core.losses import recall_at_k

    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert recall_at_k(emb, labels, [1, 2]) == {1: 0.8, 2: 1.0}  # sample 4's nearest neighbour is of class 0
    labels = [i % 5 for i in range(50)]
    sampler = ClassBalancedSampler(labels, 8, 4, seed=3)
    order = list(sampler)
    assert len(order) == len(sampler) == 48
    for b in range(6):
        batch = [labels[i] for i in order[8 * b : 8 * b + 8]]
        assert sorted(batch.count(c) for c in set(batch)) == [4, 4]
    sampler.set_epoch(1)
    assert list(sampler) != order and list(ClassBalancedSampler(labels, 8, 4, seed=3)) == order


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"loss.name": "triplet"}, "loss.name=triplet trains an embedding: set model.embedding_dim"),
        ({"loss.name": "triplet", "model.embedding_dim": 16, "data.batch_size": 1}, "may hold no pair of one class"),
        ({"loss.name": "contrastive", "model.embedding_dim": 16, "data.num_classes": 2, "data.batch_size": 2},
         "may hold no pair of one class"),
        ({"loss.name": "triplet", "model.embedding_dim": 16, "data.samples_per_class": 3, "data.batch_size": 8},
         "data.samples_per_class=3 must be >= 2 and divide data.batch_size=8"),
        ({"loss.name": "arcface", "model.embedding_dim": 16, "augment.mixup": 0.2}, "needs whole labels"),
        ({"loss.miner": "batch_hard"}, "loss.miner=batch_hard needs a metric loss"),
        ({"data.resize": "letterbox"}, "data.resize='letterbox' is not one of"),
    ],
)
def test_bad_metric_learning_input_is_one_line_exit_2_before_anything_is_written(lfw, tmp_path, extra, message):
    run = tmp_path / "run"
    proc = run_ftl("train", "fine_tune", *lfw_overrides(lfw, **extra), "--run-dir", run)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not run.exists()


def test_a_batch_without_pairs_is_refused_once_the_data_is_open(lfw, tmp_path):
    """lfw has 2 classes: a triplet batch of 2 random images may hold no pair (the classes are known only now)."""
    cfg = config.load("fine_tune", lfw_overrides(lfw, **{"loss.name": "triplet", "model.embedding_dim": 16,
                                                         "data.batch_size": 2}))  # fmt: skip
    with pytest.raises(FtlError, match="data.batch_size=2 from 2 classes may hold no pair"):
        engine.fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "extra"), [("triplet", {"loss.miner": "semihard", "loss.ce_weight": 1.0,
                                                          "data.samples_per_class": 4}),
                                             ("arcface", {})])  # fmt: skip
def test_metric_loss_trains_the_embedding_and_reports_recall(lfw, tmp_path, loss, extra, capsys):
    pytest.importorskip("pytorch_metric_learning")
    over = lfw_overrides(lfw, **{"loss.name": loss, "model.embedding_dim": 32, "loss.recall_at": "[1,4]",
                                 "data.batch_size": 8, "train.ema": "true", **extra})  # fmt: skip
    result = engine.fit(config.load("fine_tune", over), tmp_path / "r")
    assert result["status"] == "completed"
    # a metric loss alone trains no classifier: the run says its top-1 means nothing (arcface alone: 0.09)
    assert ("trains no classifier: val_top1" in capsys.readouterr().out) == (loss == "arcface")
    assert {"val_recall@1", "val_recall@4", "val_ema_recall@1"} <= result.keys()
    assert result["val_recall@1"] >= 0.7, result
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "r" / "export" / "last.safetensors"))
    assert weights["classifier.embed.weight"].shape[0] == 32
    if loss == "arcface":  # the loss's class centres are trained and saved with the model
        assert weights["classifier.metric_loss.W"].shape == (32, 2)


@pytest.mark.slow
def test_cross_entropy_run_reports_recall_of_its_features(lfw, tmp_path):
    result = engine.fit(config.load("base", lfw_overrides(lfw, **{"loss.recall_at": "[1]"})), tmp_path / "r")
    assert 0.5 <= result["val_recall@1"] <= 1.0


# ---------------------------------------------------------------- fixed costs


def test_cached_images_give_the_same_samples(lfw):
    from core.data.datasets import build_datasets
    from core.data.transforms import train_transform

    make = lambda s: train_transform(s, MEAN, STD, AugmentConfig(color_jitter=0.3))  # noqa: E731
    a = build_datasets(f"{lfw}/train", f"{lfw}/val", make, None, image_size=32).train
    b = build_datasets(f"{lfw}/train", f"{lfw}/val", make, None, image_size=32).train
    assert b.cache_images() and len(b.cache) == len(a)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 7, 39))
    assert not build_datasets(f"{lfw}/train", None, make, None).train.cache_images(max_bytes=1000)


@pytest.mark.slow
def test_short_run_skips_mid_run_checkpoints_and_still_resumes_exactly(lfw, tmp_path):
    from safetensors.torch import load_file

    over = lfw_overrides(lfw, **{"train.checkpoint_min_interval_s": 3600, "data.batch_size": 8, "train.epochs": 3,
                                 "train.deterministic": "true", "data.image_size": 32})  # fmt: skip
    cfg = config.load("base", over)
    full = engine.fit(cfg, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*")] == ["step_00000015"]  # the last only
    spent = full["time_s"]  # where the run's time went, process start included
    parts = ("start", "build", "train", "validate", "export", "checkpoint")
    assert set(parts) | {"first_update", "total"} <= spent.keys() and all(v >= 0 for v in spent.values())
    assert spent["first_update"] <= spent["train"] and sum(spent[k] for k in parts) <= spent["total"] + 0.05
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 12  # in epoch 3, with no checkpoint written before

    part = engine.fit(cfg, tmp_path / "part", should_stop=stop)
    assert part["status"] == "interrupted"
    resumed = engine.fit(config.load("base", [*over, f"resume={tmp_path / 'part'}"]))
    assert resumed["val_top1"] == full["val_top1"]
    a = load_file(str(tmp_path / "full" / "export" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "export" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert math.isfinite(resumed["val_loss"])
