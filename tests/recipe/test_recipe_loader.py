"""Loading recipes: files, cards, variables, stages, recipe_args, dialects, safety, round trip."""

from __future__ import annotations

import os
import textwrap

import pytest

from recipe_helpers import RECIPES
from sparsepipe.errors import RecipeError
from sparsepipe.modifiers import (
    DistillationModifier,
    GMPruningModifier,
    LegacyQuantizationModifier,
    QuantizationModifier,
)
from sparsepipe.recipe import MAX_RECIPE_BYTES, iter_recipe_files, load_recipe, load_recipe_string

GMP = ("!GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.05, final_sparsity: 0.8, "
       "start_epoch: 0, end_epoch: 10}")


def recipe(text: str, **kw):
    return load_recipe_string(textwrap.dedent(text), **kw)


def test_variables_in_any_order_and_unary_minus():
    r = recipe("""
        end: eval(start + length)
        length: eval(n * 2)
        n: 5
        start: eval(-1 + 3)
        training_modifiers:
          - !EpochRangeModifier {start_epoch: eval(start), end_epoch: eval(end)}
          - !SetLearningRateModifier {learning_rate: 0.1, start_epoch: eval(-1)}
    """)
    assert r.variables == {"end": 12, "length": 10, "n": 5, "start": 2}
    assert r.modifiers[0].start_epoch == 2 and r.modifiers[0].end_epoch == 12
    assert r.modifiers[1].start_epoch == -1
    assert r.num_epochs == 12


def test_non_numeric_variables_bare_only():
    r = recipe(f"""
        mask: '2:4'
        targets: [model.2.cv1.conv.weight]
        pruning_modifiers:
          - !GMPruningModifier {{params: eval(targets), mask_type: eval(mask), final_sparsity: 0.5,
                                 start_epoch: 0, end_epoch: 2}}
    """)
    mod = r.modifiers[0]
    assert mod.mask_type == "2:4" and mod.params == ["model.2.cv1.conv.weight"]
    with pytest.raises(RecipeError, match="only be referenced bare"):
        recipe("""
            mask: block4
            m: eval(mask * 2)
            training_modifiers: [!EpochRangeModifier {end_epoch: 1}]
        """)


def test_recursive_and_undefined_variables():
    with pytest.raises(RecipeError, match=r"cycle: a -> b -> c -> a"):
        recipe("""
            a: eval(b + 1)
            b: eval(c + 1)
            c: eval(a + 1)
            training_modifiers: [!EpochRangeModifier {end_epoch: eval(a)}]
        """)
    with pytest.raises(RecipeError, match="cycle: x -> x"):
        recipe("""
            x: eval(x)
            training_modifiers: [!EpochRangeModifier {end_epoch: 1}]
        """)
    with pytest.raises(RecipeError, match="'nope'"):
        recipe("training_modifiers: [!EpochRangeModifier {end_epoch: eval(nope)}]")


def test_long_variable_chain_is_refused_cleanly():
    lines = ["v0: 1"] + [f"v{i}: eval(v{i - 1} + 1)" for i in range(1, 4000)]
    lines.append("training_modifiers: [!EpochRangeModifier {end_epoch: eval(v3999)}]")
    try:
        r = load_recipe_string("\n".join(lines))
    except RecipeError:
        return
    assert r.num_epochs == 4000


@pytest.mark.parametrize(
    "args",
    [{"num_epochs": 3}, '{"num_epochs": 3}', "num_epochs=3", " num_epochs = 3 , lr=0.5 "],
)
def test_recipe_args_forms(args):
    r = recipe("""
        num_epochs: 10
        lr: 0.1
        half: eval(num_epochs / 2)
        training_modifiers:
          - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
          - !LearningRateFunctionModifier {init_lr: eval(lr), final_lr: 0.0, end_epoch: eval(half)}
    """, recipe_args=args)
    assert r.num_epochs == 3
    assert r.variables["half"] == 1.5  # overrides flow into every eval()
    assert r.modifiers[1].end_epoch == 1.5


def test_recipe_args_unknown_variable_named():
    with pytest.raises(RecipeError) as info:
        recipe("""
            num_epochs: 10
            training_modifiers: [!EpochRangeModifier {end_epoch: eval(num_epochs)}]
        """, recipe_args="num_epoch=3")
    assert "'num_epoch'" in str(info.value) and "num_epochs" in str(info.value)
    for bad in ("{not json", "novalue", '["list"]'):
        with pytest.raises(RecipeError):
            recipe("training_modifiers: [!EpochRangeModifier {end_epoch: 1}]", recipe_args=bad)


def test_staged_recipe_shadowing_and_shifting():
    r = recipe("""
        lr: 0.1
        length: 4
        stage_one:
          pruning_modifiers:
            - !GMPruningModifier {params: __ALL__, final_sparsity: 0.5, start_epoch: 1,
                                  end_epoch: eval(length)}
        stage_two:
          length: 2          # shadows the global inside this stage
          lr: 0.01
          training_modifiers:
            - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(length)}
            - !SetLearningRateModifier {learning_rate: eval(lr), start_epoch: -1}
          quantization_modifiers:
            - !QuantizationModifier {start_epoch: 1, freeze_bn_stats_epoch: 1.5}
    """, recipe_args="stage_two.length=3")
    assert r.staged and [s.name for s in r.stages] == ["stage_one", "stage_two"]
    gmp, epochs, setlr, quant = r.modifiers
    assert (gmp.start_epoch, gmp.end_epoch) == (1, 4)
    assert (epochs.start_epoch, epochs.end_epoch) == (4, 7)  # shifted by stage one's end
    assert setlr.start_epoch == 4 and setlr.learning_rate == 0.01  # -1 = start of its stage
    assert quant.start_epoch == 5 and quant.freeze_bn_stats_epoch == 5.5
    assert r.num_epochs == 7
    assert r.variables["lr"] == 0.1


def test_both_quantization_dialects():
    r = recipe("""
        quantization_modifiers:
          - !QuantizationModifier
            start_epoch: 3
            ignore: [Upsample, model.22.dfl.conv]
            scheme: {weights: {num_bits: 4, symmetric: true, strategy: channel}}
            scheme_overrides:
              model.2: {input_activations: null}
              Concat: {output_activations: {num_bits: 8, symmetric: false}}
          - !QuantizationModifier
            start_epoch: 3
            submodules: [model]
            custom_quantizable_module_types: [SiLU]
            exclude_module_types: [Upsample]
            quantize_conv_activations: true
            activation_bits: 8
            weight_bits: 8
            tensorrt: false
    """)
    cur, leg = r.modifiers
    assert isinstance(cur, QuantizationModifier) and cur.dialect == "current"
    assert isinstance(leg, LegacyQuantizationModifier) and leg.dialect == "legacy"
    assert cur.scheme.weights.num_bits == 4
    assert cur.scheme_for("model.22.dfl.conv", "Conv2d") is None
    assert cur.scheme_for("model.5.up", "Upsample") is None
    over = cur.scheme_for("model.2.cv1.conv", "Conv2d")
    assert over.input_activations is None and over.weights.num_bits == 8  # not merged with scheme
    assert cur.scheme_for("model.22.cv2.0.0.conv", "Conv2d") == cur.scheme  # model.2 != model.22
    assert cur.scheme_for("model.10", "Concat").output_activations.num_bits == 8
    assert "!QuantizationModifier" in r.to_yaml() and "Legacy" not in r.to_yaml()
    with pytest.raises(RecipeError, match="mixes the current dialect"):
        recipe("q_modifiers: [!QuantizationModifier {ignore: [a], submodules: [b]}]")


def test_markdown_card_with_licence_comment(tmp_path):
    card = tmp_path / "card.md"
    card.write_text(textwrap.dedent("""\
        <!--
        Licensed under the Apache License, Version 2.0
        ---
        -->

        ---
        num_epochs: 4
        training_modifiers:
          - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
        ---

        # A recipe card
        ```yaml
        not: [part of the recipe
        ```
        """))
    assert load_recipe(card).num_epochs == 4
    (tmp_path / "nofront.md").write_text("# just markdown\n")
    with pytest.raises(RecipeError, match="front matter"):
        load_recipe(tmp_path / "nofront.md")


def test_layout_errors():
    with pytest.raises(RecipeError, match="only keys containing 'modifiers'"):
        recipe(f"training: [{GMP}]")
    with pytest.raises(RecipeError, match="unknown modifier tag '!GMPrunningModifier'"):
        recipe("m_modifiers: [!GMPrunningModifier {}]")
    with pytest.raises(RecipeError) as info:
        recipe("m_modifiers: [!EpochRangeModifier {end_epoch: 1, end_epch: 2}]")
    assert "end_epch" in str(info.value) and "start_epoch" in str(info.value)
    with pytest.raises(RecipeError, match="no modifiers"):
        recipe("a: 1")
    with pytest.raises(RecipeError, match="twice"):
        recipe("a: 1\na: 2\nm_modifiers: [!EpochRangeModifier {end_epoch: 1}]")
    with pytest.raises(RecipeError, match="invalid YAML"):
        recipe("a: [1\nm_modifiers: x")
    with pytest.raises(RecipeError, match="final_sparsity"):
        recipe("m_modifiers: [!GMPruningModifier {params: __ALL__, final_sparsity: 1.5, "
               "start_epoch: 0, end_epoch: 1}]")
    with pytest.raises(RecipeError, match="outside"):
        recipe("a: {b: !EpochRangeModifier {end_epoch: 1}}\nm_modifiers: []")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("missing-recipe.yaml")


def test_distillation_alias_and_misspelled_list_key():
    r = recipe("""
        knowledge_disitillation_modifiers:
          - !KnowledgeDistillationModifier {hardness: 0.7, temperature: 3.0, start_epoch: 0, end_epoch: 5}
    """)
    assert isinstance(r.modifiers[0], DistillationModifier)
    assert r.modifiers[0].loss_weights() == pytest.approx((0.3, 6.3))


# -- hostile input -------------------------------------------------------------------------------
HOSTILE = {
    "import": "m_modifiers: [!EpochRangeModifier {end_epoch: \"eval(__import__('os').system('id'))\"}]",
    "attribute": "x: eval(n.__class__)\nn: 1\nm_modifiers: [!EpochRangeModifier {end_epoch: 1}]",
    "huge_exponent": "x: eval(10**10**10)\nm_modifiers: [!EpochRangeModifier {end_epoch: eval(x)}]",
    "python_object": "x: !!python/object/apply:os.system ['id']\nm_modifiers: []",
    "python_name": "x: !!python/name:os.system\nm_modifiers: []",
    "unknown_local_tag": "x: !Evil {}\nm_modifiers: []",
    "recursive_alias": "x: &a [*a]\nm_modifiers: [!EpochRangeModifier {end_epoch: 1}]",
    "billion_laughs": "\n".join(
        ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
        + ["m_modifiers: [!EpochRangeModifier {end_epoch: 1}]"]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_recipes_refused(name, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(RecipeError) as info:
        load_recipe_string(HOSTILE[name])
    assert calls == []
    assert str(info.value)
    if "tag" in name or "python" in name:
        assert "known tags" in str(info.value).lower() and "!GMPruningModifier" in str(info.value)


def test_huge_file_refused_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:  # 50 MB, sparse on disk
        handle.truncate(50 * 1024 * 1024)
    with pytest.raises(RecipeError, match="limited to"):
        load_recipe(big)
    with pytest.raises(RecipeError, match="limited to"):
        load_recipe_string("a: 1\n" * (MAX_RECIPE_BYTES // 5 + 1))


# -- round trip ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(iter_recipe_files(RECIPES)), ids=lambda p: p.name)
def test_load_dump_load_round_trip(path):
    first = load_recipe(path)
    text = first.to_yaml()
    second = load_recipe_string(text)
    assert second == first
    assert second.to_yaml() == text
    assert second.num_epochs == first.num_epochs
    assert [m.shifted(0) for m in second.modifiers] == first.modifiers


def test_round_trip_keeps_overrides(tmp_path):
    r = load_recipe(RECIPES / "yolov8n-pruned50.yaml", recipe_args={"num_epochs": 7,
                                                                   "pruning_end_epoch": 5})
    path = r.save(tmp_path / "applied.yaml")
    again = load_recipe(path)
    assert again == r and again.num_epochs == 7
    assert isinstance(again.modifiers[2], GMPruningModifier) and again.modifiers[2].end_epoch == 5


def test_scientific_notation_without_dot_is_a_number():
    r = recipe("""
        lr: 1e-4
        training_modifiers:
          - !SetLearningRateModifier {learning_rate: eval(lr * 2), start_epoch: 0}
    """)
    assert r.variables["lr"] == 1e-4 and r.modifiers[0].learning_rate == 2e-4


def test_scheme_presets_and_bad_scheme():
    r = recipe("q_modifiers: [!QuantizationModifier {scheme: tensorrt, start_epoch: 1}]")
    assert r.modifiers[0].scheme.input_activations.symmetric is True
    with pytest.raises(RecipeError, match="preset"):
        recipe("q_modifiers: [!QuantizationModifier {scheme: fastest}]")
    with pytest.raises(RecipeError, match="num_bit"):
        recipe("q_modifiers: [!QuantizationModifier {scheme: {weights: {num_bit: 8}}}]")
