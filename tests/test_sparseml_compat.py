"""SparseML recipe features that published recipes use (issue 17), one test per feature.

    .venv/bin/python -m pytest tests/test_sparseml_compat.py

Every recipe here is written for these tests (none is copied from SparseML). Each feature
loads, validates against yolov8n, and, where it changes training, runs in a tiny sparsify
(64 px, 2 batches per epoch) whose per-batch LRs and saved sparsities are checked.
"""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

import pytest
import torch

from sparsepipe.modifiers import ACDCPruningModifier
from sparsepipe.recipe import load_recipe_string, schedule, validate_recipe
from sparsepipe.recipe.errors import RecipeError, RecipeSyntaxError

CONFIG = dict(imgsz=64, batch=8, workers=0, plots=False)
BACKBONE = r"re:^model\.([1-9]|1[0-9]|2[01])\..*\.conv\.weight$"


@functools.lru_cache(maxsize=None)
def yolov8n():
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", verbose=False)


def load(text: str):
    return load_recipe_string(textwrap.dedent(text))


def sparsify_run(trained, tmp_path: Path, text: str, name: str):
    """Run ``text`` as a recipe on the tiny trained model; record every group's LR per batch."""
    from sparsepipe.sparsify import SparsifyConfig, sparsify

    lrs: list[list[float]] = []

    def record(trainer):
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])

    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    result = sparsify(str(trained.train_dir), str(trained.data_dir), str(path), tmp_path / name,
                      SparsifyConfig(**CONFIG), callbacks={"on_train_batch_end": [record]})
    return result, lrs


def saved_weights(result) -> dict[str, torch.Tensor]:
    model = torch.load(str(result.path("weights")), map_location="cpu", weights_only=False)["model"]
    return {name: p.detach().float() for name, p in model.named_parameters()}


def assert_exact_sparsity(result, sparsity: float) -> None:
    """Every pruned tensor of the saved checkpoint holds exactly ``sparsity`` zeros (+-1 weight)."""
    weights = saved_weights(result)
    targets = result.extra["targets"]
    assert len(targets) > 30 and set(targets.values()) == {sparsity}
    for name in targets:
        t = weights[name]
        assert abs(int((t == 0).sum()) - round(sparsity * t.numel())) <= 1, name


# ------------------------------------------------------------------------------------------------
# 1. parsing gaps, each loaded and validated against the model
# ------------------------------------------------------------------------------------------------
def test_lr_function_warm_up_from_zero_loads():
    recipe = load("""
        warmup_lr: 0
        training_modifiers:
          - !LearningRateFunctionModifier
            lr_func: linear
            init_lr: eval(warmup_lr)
            final_lr: 0.01
            start_epoch: 0
            end_epoch: 2
    """)
    validate_recipe(recipe, yolov8n())
    assert schedule.lr_at(recipe, 0.0, 0, None) == 0.0
    assert schedule.lr_at(recipe, 1.0, 0, None) == pytest.approx(0.005)
    with pytest.raises(RecipeError, match="init_lr"):
        load("""
            m_modifiers:
              - !LearningRateFunctionModifier {init_lr: -0.1, final_lr: 0.01, end_epoch: 2}
        """)


def test_mask_type_list_one_by_one_is_unstructured():
    recipe = load(f"""
        pruning_modifiers:
          - !GMPruningModifier
            params: ['{BACKBONE}']
            final_sparsity: 0.6
            start_epoch: 0
            end_epoch: 1
            update_frequency: 0.5
            mask_type: [1, 1]
    """)
    (mod,) = recipe.modifiers
    assert mod.mask_type == "unstructured"
    report = validate_recipe(recipe, yolov8n())
    assert len(report.pruning_targets()) > 30
    with pytest.raises(RecipeError, match=r"\[1, 1\] \(= unstructured\) or \[1, 4\]"):
        load(f"""
            pruning_modifiers:
              - !GMPruningModifier {{params: __ALL_PRUNABLE__, final_sparsity: 0.5,
                                     start_epoch: 0, end_epoch: 1, mask_type: [2, 2]}}
        """)


def test_cosine_warm_restarts_with_sparseml_kwarg_names():
    recipe = load("""
        training_modifiers:
          - !LearningRateModifier
            lr_class: CosineAnnealingWarmRestarts
            lr_kwargs: {lr_min: 0.001, cycle_epochs: 2}
            init_lr: 0.01
            start_epoch: 0
            end_epoch: 6
    """)
    validate_recipe(recipe, yolov8n())
    (mod,) = recipe.modifiers
    assert mod.lr_kwargs == {"eta_min": 0.001, "T_0": 2}
    assert schedule.lr_at(recipe, 0.0, 0, None) == pytest.approx(0.01)
    assert schedule.lr_at(recipe, 1.0, 0, None) == pytest.approx(0.001 + 0.009 / 2)  # mid-cycle
    assert schedule.lr_at(recipe, 2.0, 0, None) == pytest.approx(0.01)  # restart
    # the written-back recipe uses torch's names and loads to the same modifier
    assert load(recipe.to_yaml()).modifiers == recipe.modifiers
    with pytest.raises(RecipeError, match="both 'lr_min'"):
        load("""
            training_modifiers:
              - !LearningRateModifier {lr_class: CosineAnnealingWarmRestarts, init_lr: 0.01,
                                       lr_kwargs: {lr_min: 0.001, eta_min: 0.001, cycle_epochs: 2}}
        """)


def test_step_lr_and_multistep_lr_count_epochs():
    recipe = load("""
        training_modifiers:
          - !LearningRateModifier
            lr_class: StepLR
            lr_kwargs: {step_size: 0.5, gamma: 0.5}
            init_lr: 0.08
            start_epoch: 1
            end_epoch: 3
            param_groups: [0]
          - !LearningRateModifier
            lr_class: MultiStepLR
            lr_kwargs: {milestones: [1.5, 2.5], gamma: 0.1}
            init_lr: 0.1
            start_epoch: 1
            end_epoch: 3
            param_groups: [1]
    """)
    validate_recipe(recipe, yolov8n())
    # StepLR: step_size in epochs from start_epoch (SparseML multiplies by steps per epoch)
    assert [schedule.lr_at(recipe, e, 0, None) for e in (1.0, 1.25, 1.5, 2.0, 2.9)] == pytest.approx(
        [0.08, 0.08, 0.04, 0.02, 0.01])
    # MultiStepLR: milestones are absolute epochs
    assert [schedule.lr_at(recipe, e, 1, None) for e in (1.0, 1.49, 1.5, 2.5)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001])
    # SparseML refuses milestones outside (start, end); so does sparsepipe, saying why
    with pytest.raises(RecipeError, match="milestones .*after start_epoch"):
        load("""
            training_modifiers:
              - !LearningRateModifier {lr_class: MultiStepLR, lr_kwargs: {milestones: [1, 5]},
                                       init_lr: 0.1, start_epoch: 1, end_epoch: 4}
        """)


def test_legacy_gmp_fields_accepted_or_refused_with_what_to_write():
    recipe = load(f"""
        pruning_modifiers:
          - !GMPruningModifier
            params: ['{BACKBONE}']
            init_sparsity: 0.05
            final_sparsity: 0.5
            start_epoch: 0
            end_epoch: 1
            update_frequency: 0.5
            phased: false
            score_type: magnitude
            global_sparsity: false
            log_types: __ALL__
            leave_enabled: true
    """)
    validate_recipe(recipe, yolov8n())
    assert load(recipe.to_yaml()).modifiers == recipe.modifiers
    base = ("pruning_modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, "
            "final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, %s}\n")
    with pytest.raises(RecipeError, match="write '!ACDCPruningModifier'"):
        load_recipe_string(base % "phased: true")
    with pytest.raises(RecipeError, match="write '!MFACPruningModifier'"):
        load_recipe_string(base % "score_type: MFAC")
    with pytest.raises(RecipeError, match="movement pruning is not supported"):
        load_recipe_string(base % "score_type: movement")


NEW_STAGE_FORMAT = f"""
    num_epochs: 2
    sparsity_stage:
      run_type: train
      pruning_modifiers:
        GMPruningModifier:
          params: ['{BACKBONE}']
          init_sparsity: 0.05
          final_sparsity: 0.5
          start_epoch: 0
          end_epoch: 1
          update_frequency: 0.5
          mask_type: [1, 1]
          phased: false
          score_type: magnitude
      training_modifiers:
        LearningRateFunctionModifier:
          lr_func: linear
          init_lr: 0
          final_lr: 0.01
          start_epoch: 0
          end_epoch: eval(num_epochs)
          param_groups: [0]
        LearningRateModifier:
          lr_class: CosineAnnealingWarmRestarts
          lr_kwargs: {{lr_min: 0.0005, cycle_epochs: 1}}
          init_lr: 0.004
          start_epoch: 0
          end_epoch: eval(num_epochs)
          param_groups: [1]
    finetune_stage:
      training_modifiers:
        LearningRateModifier:
          lr_class: MultiStepLR
          lr_kwargs: {{milestones: [0.5]}}
          init_lr: 0.002
          start: 0
          end: 1
          param_groups: [2]
"""


def test_new_stage_format_maps_modifier_names_to_fields():
    recipe = load(NEW_STAGE_FORMAT)
    assert recipe.staged and [s.name for s in recipe.stages] == ["sparsity_stage", "finetune_stage"]
    tags = [m.tag for m in recipe.modifiers]
    assert tags == ["GMPruningModifier", "LearningRateFunctionModifier", "LearningRateModifier",
                    "LearningRateModifier"]
    last = recipe.modifiers[-1]  # `start`/`end` (sparseml.core names) read as start/end_epoch
    assert (last.start_epoch, last.end_epoch) == (2.0, 3.0)  # shifted by the first stage
    assert recipe.num_epochs == 3
    validate_recipe(recipe, yolov8n())
    # written back as the list format, and loads to the same recipe
    assert load(recipe.to_yaml()) == recipe
    with pytest.raises(RecipeSyntaxError, match="each key must name a modifier.*GMPrunningModifier"):
        load("""
            a_stage:
              pruning_modifiers:
                GMPrunningModifier: {params: __ALL_PRUNABLE__, final_sparsity: 0.5,
                                     start_epoch: 0, end_epoch: 1}
        """)


def test_modifier_list_without_dashes_says_what_is_wrong():
    text = textwrap.dedent("""
        training_modifiers:
            !EpochRangeModifier
                start_epoch: 0
                end_epoch: 2

            !GMPruningModifier
                params: __ALL_PRUNABLE__
                final_sparsity: 0.5
                start_epoch: 0
                end_epoch: 2
    """)
    with pytest.raises(RecipeSyntaxError) as info:
        load_recipe_string(text)
    message = str(info.value)
    assert "line 3" in message and "not a list item" in message and "'- !EpochRangeModifier'" in message
    assert "invalid YAML at" not in message
    # one modifier without its dash is valid YAML, but not a list: the same advice
    with pytest.raises(RecipeSyntaxError, match="Write '- ' before each modifier tag"):
        load_recipe_string("training_modifiers:\n  !EpochRangeModifier\n    end_epoch: 2\n")
    # the fix works
    fixed = text.replace("    !", "  - !")
    assert [m.tag for m in load_recipe_string(fixed).modifiers] == ["EpochRangeModifier",
                                                                   "GMPruningModifier"]


# ------------------------------------------------------------------------------------------------
# the features that change training, run for real
# ------------------------------------------------------------------------------------------------
def test_new_stage_format_recipe_trains(trained, tmp_path):
    """Mapping stages + init_lr 0 + lr_min/cycle_epochs + MultiStepLR + mask [1, 1] + legacy fields."""
    result, lrs = sparsify_run(trained, tmp_path, NEW_STAGE_FORMAT, "stages")
    recipe = load(NEW_STAGE_FORMAT)
    batches = len(lrs) // 3
    assert batches >= 2 and len(lrs) == 3 * batches
    for i, groups in enumerate(lrs):
        epoch = i / batches  # the LR was set at the start of batch i
        for g in (0, 1, 2):
            want = schedule.lr_at(recipe, epoch, g, None)
            if want is not None:
                assert groups[g] == pytest.approx(want, rel=1e-6), (i, g)
    assert lrs[0][0] == 0.0  # the warm-up starts from zero
    assert lrs[0][1] == pytest.approx(0.004) and lrs[batches // 2][1] < 0.004  # cosine falls...
    assert lrs[batches][1] == pytest.approx(0.004)  # ...and restarts after cycle_epochs
    assert lrs[2 * batches][2] == pytest.approx(0.002)  # MultiStepLR in the second stage
    assert lrs[-1][2] == pytest.approx(0.0002) or batches == 1
    assert_exact_sparsity(result, 0.5)


# ------------------------------------------------------------------------------------------------
# 3. ACDCPruningModifier
# ------------------------------------------------------------------------------------------------
ACDC = f"""
    training_modifiers:
      - !LearningRateFunctionModifier {{lr_func: linear, init_lr: 0.01, final_lr: 0.002,
                                        start_epoch: 0, end_epoch: eval(acdc_end)}}
    pruning_modifiers:
      - !ACDCPruningModifier
        compression_sparsity: 0.7
        start_epoch: 0
        end_epoch: eval(acdc_end)
        update_frequency: 1
        params: ['{BACKBONE}']
        global_sparsity: false
    acdc_end: 4
"""


def test_acdc_phases_alternate_and_validate():
    recipe = load(ACDC)
    (acdc,) = recipe.modifiers_of(ACDCPruningModifier)
    report = validate_recipe(recipe, yolov8n())
    assert set(report.pruning_targets().values()) == {0.7}
    # dense [0, 1), compressed [1, 2), dense [2, 3), compressed [3, 4), compressed from 4 on
    assert [acdc.sparsity_at(e) for e in (0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 9)] == [
        0, 0, 0.7, 0.7, 0, 0, 0.7, 0.7, 0.7, 0.7]
    updates = schedule.mask_update_epochs(acdc, steps_per_epoch=4, until=6)
    assert updates == [0.0, 1.0, 2.0, 3.0, 4.0]  # one mask per phase, and the final one
    assert load(recipe.to_yaml()).modifiers == recipe.modifiers
    for bad, match in ((ACDC.replace("update_frequency: 1", "update_frequency: 0.5"), "whole number"),
                       (ACDC.replace("global_sparsity: false", "final_sparsity: 0.8"),
                        "no final_sparsity.*compression_sparsity")):
        with pytest.raises(RecipeError, match=match):
            load(bad)


def test_acdc_masks_and_momentum_reset_in_a_session():
    """The real RecipeSession and MaskManager on yolov8n with a real SGD optimizer, 2 steps/epoch."""
    import types

    from ultralytics.nn.tasks import DetectionModel

    from sparsepipe.recipe_session import RecipeSession

    model = DetectionModel("yolov8n.yaml", verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = types.SimpleNamespace(model=model, optimizer=optimizer, train_loader=[0, 1], start_epoch=0, ema=None)
    session = RecipeSession(load(ACDC))
    session.on_train_start(trainer)
    name = "model.2.cv1.conv.weight"
    param = dict(model.named_parameters())[name]
    seen = []
    for step in range(10):
        session.on_train_batch_start(trainer)
        for p in model.parameters():  # a real SGD step with a gradient on every weight
            p.grad = torch.ones_like(p)
        optimizer.step()
        buffer = optimizer.state[param]["momentum_buffer"]
        seen.append((session.epoch, float((param == 0).float().mean()), float(buffer.abs().sum())))
        session.on_train_batch_end(trainer)
    sparsity = {epoch: s for epoch, s, _ in seen}
    assert sparsity[0.0] == 0 and sparsity[0.5] == 0  # dense phase
    assert sparsity[1.0] == pytest.approx(0.7, abs=1e-3) and sparsity[1.5] == pytest.approx(0.7, abs=1e-3)
    assert sparsity[2.0] == 0  # pruned weights train again (they got a gradient)
    assert sparsity[3.0] == pytest.approx(0.7, abs=1e-3) and sparsity[4.0] == pytest.approx(0.7, abs=1e-3)
    momentum = {epoch: m for epoch, _, m in seen}
    # entering the dense phase at epoch 2 zeroed the buffers: after that step each is one gradient
    assert momentum[2.0] == pytest.approx(param.numel(), rel=1e-4)
    assert momentum[1.5] > 1.5 * param.numel()  # accumulated momentum before the reset


def test_acdc_recipe_trains(trained, tmp_path):
    text = ACDC.replace("acdc_end: 4", "acdc_end: 2")  # dense epoch 0, compressed epoch 1, then final
    result, _ = sparsify_run(trained, tmp_path, text, "acdc")
    assert_exact_sparsity(result, 0.7)


# ------------------------------------------------------------------------------------------------
# 4. OBSPruningModifier / MFACPruningModifier (empirical-Fisher OBS)
# ------------------------------------------------------------------------------------------------
OBS = r"""
    pruning_modifiers:
      - !OBSPruningModifier
        params: ['re:^model\.[2-4]\..*\.conv\.weight$']
        init_sparsity: 0.1
        final_sparsity: 0.6
        start_epoch: 0.5
        end_epoch: 1.5
        update_frequency: 0.5
        inter_func: cubic
        global_sparsity: true
        mask_type: unstructured
        num_grads: 2
        damp: 1e-4
        fisher_block_size: 8
        grad_sampler_kwargs: {batch_size: 8}
    training_modifiers:
      - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
"""
MFAC = OBS.replace("OBSPruningModifier", "MFACPruningModifier").replace(
    "num_grads: 2", "num_grads: {0.0: 1, 0.3: 2}").replace("global_sparsity: true", "global_sparsity: false")


def test_second_order_recipes_load_validate_and_refuse_what_they_lack():
    from sparsepipe.modifiers import MFACPruningModifier, OBSPruningModifier

    obs, mfac = load(OBS), load(MFAC)
    assert isinstance(obs.modifiers[0], OBSPruningModifier) and obs.modifiers[0].joint_update
    assert isinstance(mfac.modifiers[0], MFACPruningModifier) and not mfac.modifiers[0].joint_update
    assert mfac.modifiers[0].grads_for(0.1) == 1 and mfac.modifiers[0].grads_for(0.5) == 2
    for recipe in (obs, mfac):
        assert set(validate_recipe(recipe, yolov8n()).pruning_targets().values()) == {0.6}
        assert load(recipe.to_yaml()).modifiers == recipe.modifiers
    with pytest.raises(RecipeError, match="num_recomputations > 1 is not implemented"):
        load(OBS.replace("num_grads: 2", "num_grads: 2\n        num_recomputations: 4"))
    with pytest.raises(RecipeError, match="block4 is not implemented"):
        load(MFAC.replace("mask_type: unstructured", "mask_type: block4"))


def test_block_fisher_inverse_and_joint_correction_are_exact():
    from sparsepipe.modifiers.second_order import BlockFisherInverse

    gen = torch.Generator().manual_seed(0)
    d, block, m, damp = 22, 8, 5, 1e-3
    grads = torch.randn(m, d, generator=gen)
    dense = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, d, block):
        g = grads[:, s:s + block].double()
        dense[s:s + block, s:s + block] = damp * torch.eye(g.shape[1], dtype=torch.float64) + g.T @ g / m
    inv = BlockFisherInverse(grads, d, block, damp)
    dense_inv = torch.linalg.inv(dense)
    assert torch.allclose(inv.diag(), dense_inv.diag())
    v = torch.randn(d, generator=gen)
    assert torch.allclose(inv.mul(v), dense_inv @ v.double())
    w = torch.randn(d, generator=gen).double()
    pruned = torch.zeros(d, dtype=torch.bool)
    pruned[[0, 3, 9, 10, 17, 21]] = True
    dw = inv.joint_correction(w, pruned)
    assert torch.allclose((w + dw)[pruned], torch.zeros(6, dtype=torch.float64))
    # optimality (KKT): the quadratic 0.5 dw' F dw has zero gradient on the free weights
    assert torch.allclose((dense @ dw)[~pruned], torch.zeros(d - 6, dtype=torch.float64), atol=1e-9)


def test_obs_loses_less_than_magnitude_on_a_tiny_regression():
    """Tiny data only: a least-squares layer with correlated inputs, pruned to 50% in one shot.

    The empirical Fisher of per-sample gradients at the optimum is proportional to the Hessian
    here, so OBS must beat magnitude pruning. (The converged YOLO comparison, OBS vs GMP at the
    same sparsity with an interval, is a benchmark run left to a later session.)
    """
    from sparsepipe.modifiers import MFACPruningModifier, OBSPruningModifier
    from sparsepipe.modifiers.pruning import magnitude_mask
    from sparsepipe.modifiers.second_order import second_order_prune

    gen = torch.Generator().manual_seed(1)
    n, d = 400, 32
    base = torch.randn(n, d // 2, generator=gen)
    x = torch.cat([base, base + 0.1 * torch.randn(n, d // 2, generator=gen)], 1)  # correlated pairs
    y = x @ torch.randn(d, generator=gen) + 0.5 * torch.randn(n, generator=gen)
    w_opt = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)

    def loss(w):
        return float(((x @ w - y) ** 2).mean())

    residual = x @ w_opt - y
    per_sample = 2 * residual.unsqueeze(1) * x  # gradients of each sample's loss at the optimum
    losses = {}
    for cls in (OBSPruningModifier, MFACPruningModifier):
        mod = cls(final_sparsity=0.5, start_epoch=0, end_epoch=1, update_frequency=1, params="w",
                  fisher_block_size=d, damp=1e-6, num_grads=n, global_sparsity=False)
        w = torch.nn.Parameter(w_opt.clone())
        keep = second_order_prune(mod, {"w": w}, {"w": per_sample}, {}, {"w": 0.5})["w"]
        assert int((~keep).sum()) == d // 2 and torch.all(w.detach()[~keep] == 0)
        losses[cls.tag] = loss(w.detach())
    magnitude = w_opt * magnitude_mask(w_opt, 0.5)
    losses["magnitude"] = loss(magnitude)
    losses["dense"] = loss(w_opt)
    assert losses["dense"] < losses["OBSPruningModifier"] < losses["magnitude"]
    assert losses["OBSPruningModifier"] <= losses["MFACPruningModifier"] + 1e-9
    assert losses["MFACPruningModifier"] < losses["magnitude"]


def test_obs_session_collects_gradients_and_corrects_weights():
    """The real RecipeSession with a real SGD step: the Fisher gets num_grads gradients."""
    import types

    from ultralytics.nn.tasks import DetectionModel

    from sparsepipe.recipe_session import RecipeSession

    model = DetectionModel("yolov8n.yaml", verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.0)  # lr 0: only pruning moves weights
    trainer = types.SimpleNamespace(model=model, optimizer=optimizer, train_loader=[0, 1], start_epoch=0, ema=None)
    session = RecipeSession(load(OBS))
    session.on_train_start(trainer)
    manager = session.masks
    gen = torch.Generator().manual_seed(0)
    targets = list(manager.targets)
    before = {n: dict(model.named_parameters())[n].detach().clone() for n in targets}
    seen = []
    for step in range(4):
        session.on_train_batch_start(trainer)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()  # the pre-step hook stores the gradient
        seen.append(sum(len(b) for b in manager.grads[0].values()) / len(targets))
        session.on_train_batch_end(trainer)
    # one step between updates (0.5, 1.0, 1.5): each update gets that step's gradient and empties
    # the buffer; after the last update nothing is collected
    assert seen == [1, 1, 1, 0]
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in targets)
    zeros = sum(int((params[n] == 0).sum()) for n in targets)
    assert zeros == round(0.6 * total)  # global: exact over all targets at end_epoch 1.5
    moved = sum(int(((params[n] != before[n]) & (params[n] != 0)).sum()) for n in targets)
    assert moved > 0  # OBS corrected surviving weights (lr is 0, so nothing else moved them)


def test_obs_recipe_trains(trained, tmp_path):
    result, _ = sparsify_run(trained, tmp_path, OBS, "obs")
    weights = saved_weights(result)
    targets = result.extra["targets"]
    assert targets and set(targets.values()) == {0.6}
    total = sum(weights[n].numel() for n in targets)
    zeros = sum(int((weights[n] == 0).sum()) for n in targets)
    assert abs(zeros - round(0.6 * total)) <= len(targets)
