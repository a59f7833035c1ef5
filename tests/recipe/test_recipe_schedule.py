"""Schedule maths against hand-computed values, and the mask helpers."""

from __future__ import annotations

import math

import pytest
import torch

from recipe_helpers import RECIPES
from sparsepipe.modifiers import (
    GMPruningModifier,
    LearningRateFunctionModifier,
    LearningRateModifier,
    SetLearningRateModifier,
    global_magnitude_masks,
    lr_at,
    magnitude_mask,
)
from sparsepipe.recipe import load_recipe, schedule
from sparsepipe.recipe.schedule import MaskSchedule, mask_update_epochs


def gmp(**kw):
    base = dict(params=["__ALL__"], init_sparsity=0.05, final_sparsity=0.8, start_epoch=2,
                end_epoch=12)
    base.update(kw)
    return GMPruningModifier(**base)


@pytest.mark.parametrize(
    ("inter_func", "epoch", "expected"),
    [
        # x = (epoch - 2) / 10; sparsity = 0.05 + y * 0.75
        ("linear", 4.5, 0.05 + 0.25 * 0.75),
        ("cubic", 4.5, 0.05 + (1 - 0.75**3) * 0.75),            # 0.48359375
        ("inverse_cubic", 4.5, 0.05 + (1 - 0.75 ** (1 / 3)) * 0.75),
        ("cubic", 9.5, 0.78828125),
        ("linear", 7.0, 0.425),
        ("inverse_cubic", 11.0, 0.05 + (1 - 0.1 ** (1 / 3)) * 0.75),
        # snapping at both ends
        ("cubic", 0.0, 0.05),
        ("cubic", 2.0, 0.05),
        ("cubic", 12.0, 0.8),
        ("inverse_cubic", 30.0, 0.8),
    ],
)
def test_gmp_sparsity_hand_computed(inter_func, epoch, expected):
    assert gmp(inter_func=inter_func).sparsity_at(epoch) == pytest.approx(expected, abs=1e-12)


def test_cubic_exact_value():
    assert gmp().sparsity_at(4.5) == pytest.approx(0.48359375, abs=1e-12)
    assert gmp(inter_func="inverse_cubic").sparsity_at(4.5) == pytest.approx(0.1185797780, abs=1e-9)


def test_tiered_final_sparsity():
    mod = GMPruningModifier(final_sparsity={0.5: ["a"], 0.9: ["re:^b"]}, init_sparsity=0.1,
                            start_epoch=0, end_epoch=4, inter_func="linear")
    assert mod.selector_targets() == [("a", 0.5), ("re:^b", 0.9)]
    assert mod.sparsity_at(2, final=0.9) == pytest.approx(0.5)
    assert mod.sparsity_at(2, final=0.5) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kw", "spe", "expected"),
    [
        (dict(start_epoch=2, end_epoch=4, update_frequency=0.5), 4, [2.0, 2.5, 3.0, 3.5, 4.0]),
        (dict(start_epoch=2, end_epoch=4, update_frequency=0.7), 10, [2.0, 2.7, 3.4, 4.0]),
        (dict(start_epoch=1, end_epoch=2, update_frequency=-1), 2, [1.0, 1.5, 2.0]),
        # steps do not land on the epochs: first step at/after start, then +1, then at end
        (dict(start_epoch=1, end_epoch=2.5, update_frequency=1), 3, [1.0, 2.0, 8 / 3]),
        (dict(start_epoch=0, end_epoch=3, update_frequency=5), 2, [0.0, 3.0]),
    ],
)
def test_update_frequency(kw, spe, expected):
    epochs = mask_update_epochs(gmp(**kw), spe, until=kw["end_epoch"] + 2)
    assert epochs == pytest.approx(expected)


def test_mask_schedule_state_resumes():
    mod = gmp(start_epoch=0, end_epoch=2, update_frequency=0.5)
    full = MaskSchedule(mod)
    seen = [(s / 4, full.step(s / 4)) for s in range(13)]
    resumed = MaskSchedule(mod)
    for s in range(6):
        resumed.step(s / 4)
    restored = MaskSchedule(mod, **resumed.state_dict())
    assert [(s / 4, restored.step(s / 4)) for s in range(6, 13)] == seen[6:]
    assert full.applied() == pytest.approx(0.8)


def test_enforcement_after_end():
    assert gmp().enforced(50) and not gmp(leave_enabled=False).enforced(50)
    assert gmp(leave_enabled=False).enforced(11.9) and not gmp().enforced(1.0)


# -- learning rate ---------------------------------------------------------------------------------
def lrf(func, init, final, start=0.0, end=10.0, **kw):
    return LearningRateFunctionModifier(lr_func=func, init_lr=init, final_lr=final,
                                        start_epoch=start, end_epoch=end, **kw)


@pytest.mark.parametrize(
    ("mod", "epoch", "expected"),
    [
        (lrf("cosine", 0.1, 0.001), 0.0, 0.1),
        (lrf("cosine", 0.1, 0.001), 5.0, 0.0505),
        (lrf("cosine", 0.1, 0.001), 2.5, 0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2),
        (lrf("cosine", 0.1, 0.001), 10.0, 0.001),
        (lrf("cosine", 0.1, 0.001), 15.0, 0.001),  # the last value stays
        (lrf("cosine", 0.001, 0.1), 5.0, 0.0505),  # rising
        (lrf("cosine", 0.001, 0.1), 2.5, 0.1 + (0.001 - 0.1) * (1 + math.cos(math.pi / 4)) / 2),
        (lrf("linear", 0.01, 0.001), 3.0, 0.0073),
        (lrf("linear", 0.01, 0.001, start=2, end=4), 3.5, 0.00325),
        (lrf("cyclic_linear", 0.1, 0.0, cycle_epochs=2), 1.5, 0.025),
        (lrf("cyclic_linear", 0.1, 0.0, cycle_epochs=2), 3.0, 0.05),
        (lrf("cyclic_linear", 0.1, 0.0, cycle_epochs=2), 4.0, 0.1),
    ],
)
def test_lr_functions(mod, epoch, expected):
    assert lr_at([mod], epoch) == pytest.approx(expected, abs=1e-12)


def test_torch_scheduler_lr():
    step = LearningRateModifier(lr_class="StepLR", lr_kwargs={"step_size": 2, "gamma": 0.5},
                                init_lr=0.1, start_epoch=0)
    multi = LearningRateModifier(lr_class="MultiStepLR", lr_kwargs={"milestones": [3, 6]},
                                 init_lr=0.1, start_epoch=1)
    assert step.lr_at(5) == pytest.approx(0.025)
    assert multi.lr_at(2.9) == pytest.approx(0.1) and multi.lr_at(6) == pytest.approx(0.001)


def test_overlapping_lr_modifiers_later_end_wins():
    long = lrf("linear", 0.1, 0.0, start=0, end=10)
    short = lrf("linear", 0.3, 0.3, start=2, end=6)
    assert lr_at([short, long], 4.0) == pytest.approx(0.06)   # long ends later: it wins
    assert lr_at([long, short], 4.0) == pytest.approx(0.06)   # order in the recipe irrelevant
    assert lr_at([long, short], 12.0) == pytest.approx(0.0)
    early = lrf("linear", 0.1, 0.0, start=0, end=6)
    late = lrf("linear", 0.3, 0.3, start=2, end=10)
    assert lr_at([early, late], 4.0) == pytest.approx(0.3)
    assert lr_at([early, late], 1.0) == pytest.approx(0.1 * (1 - 1 / 6))
    setlr = SetLearningRateModifier(learning_rate=0.5, start_epoch=3)
    assert lr_at([long, setlr], 3.0) == pytest.approx(0.07)  # the function also writes at 3
    assert lr_at([early, setlr], 7.0) == pytest.approx(0.0)  # early wrote last (at 6)
    assert lr_at([setlr], 2.0, base_lr=0.01) == 0.01


def test_param_group_lr_and_warning():
    r = load_recipe(RECIPES / "yolov5su-pruned75-quant.md")
    assert schedule.lr_at(r, 0.0, group=0) == pytest.approx(0.05)
    assert schedule.lr_at(r, 0.0, group=1) == pytest.approx(0.000032)
    assert schedule.lr_at(r, 1.5, group=2) == pytest.approx((0.000032 + 0.0032) / 2)
    assert schedule.lr_at(r, 3.0, group=0) == pytest.approx(0.0032)
    assert schedule.controls_lr(r)
    assert any("param groups [0, 1, 2]" in w for w in r.warnings())


def test_qat_and_distillation_state():
    r = load_recipe(RECIPES / "yolov8n-quick-test.yaml")
    assert schedule.qat_state(r, 0.5) == {"active": False, "observers_frozen": False,
                                          "bn_frozen": False}
    assert schedule.qat_state(r, 1.2)["active"] and not schedule.qat_state(r, 1.2)["bn_frozen"]
    assert schedule.qat_state(r, 1.6) == {"active": True, "observers_frozen": True,
                                          "bn_frozen": True}
    assert schedule.training_epochs(r) == 2
    d = load_recipe(RECIPES / "yolov8n-distill.yaml")
    assert len(schedule.active_distillation(d, 30)) == 1


def test_timeline_quick_test():
    r = load_recipe(RECIPES / "yolov8n-quick-test.yaml")
    tl = schedule.timeline(r, steps_per_epoch=4)
    assert tl.epochs[0] == 0 and tl.epochs[-1] == 2
    (label,) = tl.sparsity
    assert tl.sparsity[label][tl.epochs.index(0.25)] == pytest.approx(0.05 + (1 - 0.75**3) * 0.45)
    assert tl.sparsity[label][-1] == pytest.approx(0.5)
    assert tl.lr[1][tl.epochs.index(1.0)] == pytest.approx(0.006)


# -- masks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_unstructured_mask_exact_count(s):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    keep = magnitude_mask(w, s)
    assert keep.shape == w.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == round(s * w.numel())
    if 0 < s < 1:
        assert w[keep].abs().min() >= w[~keep].abs().max()


def test_block4_mask():
    torch.manual_seed(1)
    w = torch.randn(8, 16, 3, 3)
    keep = magnitude_mask(w, 0.5, [1, 4])
    blocks = keep.permute(0, 2, 3, 1).reshape(-1, 4, 4)  # rows x blocks x 4 channels
    assert bool(((blocks.all(-1)) | (~blocks).all(-1)).all())  # whole blocks
    assert int((~keep).sum()) == round(0.5 * w.numel() / 4) * 4


@pytest.mark.parametrize("s", [0.25, 0.5])
def test_2_4_mask(s):
    torch.manual_seed(2)
    w = torch.randn(8, 16, 3, 3)
    keep = magnitude_mask(w, s, "2:4")
    assert int((~keep).sum()) == round(s * w.numel())
    groups = keep.permute(0, 2, 3, 1).reshape(-1, 4)
    assert int(groups.sum(-1).min()) >= 2
    if s == 0.5:
        assert bool((groups.sum(-1) == 2).all())


def test_global_masks_one_threshold():
    torch.manual_seed(3)
    tensors = {"a": torch.randn(10, 10), "b": torch.randn(30) * 3}
    masks = global_magnitude_masks(tensors, 0.4)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.4 * 130)
    kept = torch.cat([tensors[n][masks[n]].abs() for n in tensors])
    pruned = torch.cat([tensors[n][~masks[n]].abs() for n in tensors])
    assert kept.min() >= pruned.max()


def test_mask_errors():
    with pytest.raises(ValueError, match="input channels"):
        magnitude_mask(torch.randn(8), 0.5, "block4")
    with pytest.raises(ValueError):
        magnitude_mask(torch.randn(4, 4), 1.5)


def test_cyclic_after_end_keeps_last_value():
    assert lr_at([lrf("cyclic_linear", 0.1, 0.0, cycle_epochs=2)], 12.0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"step_size": 0}, {"step_size": "x"}, {"T_0": 1, "T_mult": 0.5}, {"milestones": 3},
     {"T_0": 0}],
)
def test_torch_scheduler_kwargs_validated(kwargs):
    from sparsepipe.errors import RecipeError
    from sparsepipe.recipe import build_modifier

    cls = {"step_size": "StepLR", "T_0": "CosineAnnealingWarmRestarts",
           "milestones": "MultiStepLR"}[next(iter(kwargs))]
    with pytest.raises(RecipeError, match="lr_kwargs"):
        build_modifier("LearningRateModifier",
                       {"lr_class": cls, "lr_kwargs": kwargs, "init_lr": 0.1}, "test")


def test_cosine_warm_restarts():
    mod = LearningRateModifier(lr_class="CosineAnnealingWarmRestarts",
                               lr_kwargs={"T_0": 2, "T_mult": 2}, init_lr=0.1, start_epoch=0)
    assert mod.lr_at(0) == pytest.approx(0.1)
    assert mod.lr_at(1) == pytest.approx(0.05)
    assert mod.lr_at(2) == pytest.approx(0.1)   # restart; next period is 4 epochs
    assert mod.lr_at(4) == pytest.approx(0.05)
