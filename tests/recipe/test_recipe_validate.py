"""Validation of recipes against ultralytics models built from their YAML configs."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from recipe_helpers import DATA, RECIPES, build_model, model_for_recipe
from sparsepipe.errors import RecipeError
from sparsepipe.modifiers import ConstantPruningModifier, QuantizationModifier
from sparsepipe.recipe import (
    RecipeWarning,
    index_model,
    iter_recipe_files,
    load_recipe,
    load_recipe_string,
    match_selector,
    validate_recipe,
)

RECIPE_FILES = list(iter_recipe_files(RECIPES))


def test_recipes_folder_is_covered():
    names = {p.name for p in RECIPE_FILES}
    for required in ("yolov8n-quick-test.yaml", "yolov8n-pruned50.yaml", "yolov8n-pruned75.yaml",
                     "yolov8n-pruned75-quant.yaml", "yolov8n-sparse-transfer-quant.yaml",
                     "yolov8n-distill.yaml", "yolov5su-pruned75-quant.md"):
        assert required in names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    model = build_model(model_for_recipe(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)  # param-group order notes
        report = validate_recipe(recipe, model)
    assert recipe.num_epochs > 0
    assert len(report.modifiers) == len(recipe.modifiers)
    # unmatched (non-strict) quantization keys would show up as warnings: there must be none
    assert not [w for w in report.warnings if "matches no module" in w]


def test_quick_test_fits_two_epochs_and_prunes_and_quantizes():
    r = load_recipe(RECIPES / "yolov8n-quick-test.yaml")
    assert r.num_epochs <= 2
    kinds = {m.tag for m in r.modifiers}
    assert {"GMPruningModifier", "QuantizationModifier"} <= kinds


def test_sparse_transfer_recipe_shape(yolov8n):
    r = load_recipe(RECIPES / "yolov8n-sparse-transfer-quant.yaml")
    (const,) = r.modifiers_of(ConstantPruningModifier)
    assert const.params == ["re:^((?!dfl).)*$"]
    (quant,) = r.modifiers_of(QuantizationModifier)
    assert quant.ignore == ["Upsample", "Concat", "model.22.dfl.conv"]
    keys = list(quant.scheme_overrides)
    assert len(keys) >= 30
    assert any(k.endswith(".cv1.act") for k in keys)
    assert any(k.endswith(".conv") for k in keys)
    assert any(k.endswith(".add_input_0") for k in keys)
    report = validate_recipe(r, yolov8n)
    touched = report.modifiers[r.modifiers.index(const)].targets
    assert touched and not any("dfl" in n for n in touched)
    assert len(touched) == len([n for n, _ in yolov8n.named_parameters() if "dfl" not in n])
    strict = load_recipe_string(r.to_yaml().replace("strict: false", "") .replace(
        "    ignore:", "    strict: true\n    ignore:", 1))
    validate_recipe(strict, yolov8n)  # every override names a real (or QAT-prepared) module


def test_qat_prepared_names_rule(yolov8n):
    """`.act` resolves through shared activations; `add_input_N` only on shortcut Bottlenecks."""
    text = textwrap.dedent("""
        quantization_modifiers:
          - !QuantizationModifier
            strict: true
            scheme_overrides:
              model.1.act: {output_activations: {num_bits: 8, symmetric: false}}
              model.2.cv1.act: {output_activations: {num_bits: 8, symmetric: false}}
              model.2.m.0.add_input_0: {input_activations: null}
              model.2.m.0.add_input_1: {input_activations: null}
              model.12.m.0.add_input_0: {input_activations: null}
              model.2.cv1.actt: {input_activations: null}
    """)
    with pytest.raises(RecipeError) as info:
        validate_recipe(load_recipe_string(text), yolov8n)
    message = str(info.value)
    assert "'model.12.m.0.add_input_0'" in message  # neck Bottleneck has no shortcut
    assert "'model.2.cv1.actt'" in message and "model.2.cv1.act" in message  # close match
    assert "'model.1.act'" not in message and "'model.2.m.0.add_input_0'" not in message
    assert "2 problems" in message
    lenient = load_recipe_string(text.replace("strict: true", "strict: false"))
    with pytest.warns(RecipeWarning) as caught:
        report = validate_recipe(lenient, yolov8n)
    assert len(caught) == 2
    assert any("without a residual add" in str(w.message) for w in caught)
    assert sum("matches no module" in w for w in report.warnings) == 2


def test_yolov5_original_repo_recipe_on_ultralytics_yolov5s(yolov5s):
    recipe = load_recipe(DATA / "yolov5s-original-repo-pruned.yaml")
    with pytest.raises(RecipeError) as info:
        validate_recipe(recipe, yolov5s)
    message = str(info.value)
    for name in ("model.24.m.0.weight", "model.24.m.1.weight", "model.24.m.2.weight"):
        assert name in message
    assert "anchor-based" in message and "anchor-free" in message
    assert "model.24.cv2.0.0.conv.weight" in message  # what the model has instead
    assert "model.2.cv1.conv.weight" not in message.split("problem")[1]  # valid names not listed


def test_all_unmatched_names_reported_at_once(yolov8n):
    r = load_recipe_string(textwrap.dedent("""
        pruning_modifiers:
          - !GMPruningModifier {params: [model.2.cv1.conv.weigth, 're:^backbone\\.'],
                                final_sparsity: 0.5, start_epoch: 0, end_epoch: 1}
        distillation_modifiers:
          - !PerLayerDistillationModifier {student_layer_names: [model.4, model.40]}
    """))
    with pytest.raises(RecipeError) as info:
        validate_recipe(r, yolov8n)
    message = str(info.value)
    assert "3 problems" in message
    assert "did you mean model.2.cv1.conv.weight" in message
    assert "'re:^backbone\\.'" in message and "'model.40'" in message


def test_selectors(yolov8n):
    index = index_model(yolov8n)
    conv_weights = [n for n, m in yolov8n.named_modules() if type(m).__name__ == "Conv2d"]
    assert len(match_selector("__ALL_PRUNABLE__", index)) == len(conv_weights)
    assert len(match_selector("__ALL__", index)) == len(list(yolov8n.parameters()))
    assert match_selector("model.0.conv.weight", index) == ["model.0.conv.weight"]
    # re.match semantics: anchored at the start only
    assert "model.2.cv1.conv.weight" in match_selector("re:model\\.2\\.", index)
    assert match_selector("re:cv1", index) == []
    assert "model.22.dfl.conv.weight" not in match_selector("re:^((?!dfl).)*$", index)


def test_tier_overlap_is_an_error(yolov8n):
    r = load_recipe_string(textwrap.dedent("""
        pruning_modifiers:
          - !GMPruningModifier
            final_sparsity: {0.5: ['re:^model\\.2\\.'], 0.9: [model.2.cv1.conv.weight]}
            start_epoch: 0
            end_epoch: 1
    """))
    with pytest.raises(RecipeError, match="one tier only"):
        validate_recipe(r, yolov8n)


def test_block_mask_on_1d_tensors_refused(yolov8n):
    r = load_recipe_string(
        "p_modifiers: [!GMPruningModifier {params: __ALL__, mask_type: block4, final_sparsity: 0.5,"
        " start_epoch: 0, end_epoch: 1}]")
    with pytest.raises(RecipeError, match="1-D tensors"):
        validate_recipe(r, yolov8n)
