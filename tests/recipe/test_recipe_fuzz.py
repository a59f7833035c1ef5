"""Property-based fuzzing: every generated recipe/expression loads or raises RecipeError."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsepipe.errors import RecipeError
from sparsepipe.recipe import evaluate, known_tags, load_recipe_string, parse_recipe_args

SETTINGS = settings(max_examples=1000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

VARS = {"a": 3, "b": 0.5, "c": -2, "s": "text", "l": [1, 2]}
TOKENS = ["a", "b", "c", "s", "l", "x", "1", "0", "2.5", "1e308", "10", "+", "-", "*", "/",
          "//", "%", "**", "(", ")", ",", "abs(", "min(", "max(", "round(", "int(", "float(",
          "__import__(", "'os'", ".", "[", "]", "lambda", ":", " ", "not", "<", "if", "else",
          "9**9**9", "open(", "__class__", "{", "}"]


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=25))
def test_fuzz_expressions(tokens):
    expr = "".join(tokens)
    try:
        value = evaluate(expr, VARS)
    except RecipeError:
        return
    assert isinstance(value, (int, float, str, list))


@SETTINGS
@given(st.text(max_size=200))
def test_fuzz_raw_text(text):
    try:
        load_recipe_string(text)
    except RecipeError:
        pass


FIELDS = ["start_epoch", "end_epoch", "init_sparsity", "final_sparsity", "params", "lr_func",
          "init_lr", "final_lr", "learning_rate", "update_frequency", "mask_type", "inter_func",
          "scheme", "scheme_overrides", "ignore", "submodules", "weight_bits", "param_groups",
          "student_layer_names", "hardness", "cycle_epochs", "lr_class", "lr_kwargs", "strict",
          "gain", "leave_enabled", "bogus"]
scalars = st.one_of(
    st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.sampled_from(["eval(a)", "eval(-1)", "eval(a * 2)", "eval(missing)", "eval(s)", "eval(l)",
                     "eval(10**10**10)", "cosine", "linear", "cubic", "block4", "2:4", "[1, 4]",
                     "__ALL_PRUNABLE__", "re:^model", "re:(", "model.2.cv1.conv.weight", "tensor",
                     "StepLR", "eval(__import__('os'))", "eval(a.b)", "eval(", "text"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["num_bits", "weights", "a", "0.5",
                                                                  "input_activations"]),
                                                 inner, max_size=3)), max_leaves=8)


class _Tagged:
    def __init__(self, tag, fields):
        self.tag, self.fields = tag, fields


def _represent(dumper, data):
    return dumper.represent_mapping("!" + data.tag, data.fields)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Tagged, _represent)

modifiers = st.builds(
    _Tagged,
    st.sampled_from(known_tags() + ["Bogus", "python/object"]),
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6),
)
recipes = st.fixed_dictionaries(
    {},
    optional={
        "a": values, "b": values, "c": st.sampled_from(["eval(a)", "eval(c)", "eval(b + 1)", 2]),
        "training_modifiers": st.lists(modifiers, max_size=3),
        "pruning_modifiers": st.lists(modifiers, max_size=3),
        "stage": st.fixed_dictionaries({"x_modifiers": st.lists(modifiers, max_size=2)},
                                       optional={"a": values}),
        "wrong": st.lists(modifiers, max_size=1),
    },
)


@SETTINGS
@given(recipes, st.sampled_from([None, "a=1", '{"b": 2}', "zzz=1", "a=eval(b)", "{", "a"]))
def test_fuzz_structured_recipes(data, args):
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False)
    try:
        r = load_recipe_string(text, recipe_args=args)
    except RecipeError:
        return
    # whatever loads must dump and load back to the same recipe
    assert load_recipe_string(r.to_yaml()) == r


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=5), scalars, max_size=3)))
def test_fuzz_recipe_args(args):
    try:
        parse_recipe_args(args)
    except RecipeError:
        pass


fractions = st.floats(0, 1, allow_nan=False)
epochs = st.one_of(st.integers(-1, 50), st.floats(0, 50, allow_nan=False),
                   st.sampled_from(["eval(n)", "eval(n / 2)", "eval(-1)", "eval(max(1, n - 3))"]))


@st.composite
def plausible_recipes(draw):
    mods = [_Tagged("EpochRangeModifier", {"start_epoch": 0, "end_epoch": draw(epochs)})]
    lo, hi = sorted([draw(fractions), draw(fractions)])
    s, e = sorted([draw(st.floats(0, 20, allow_nan=False)), draw(st.floats(0, 40, allow_nan=False))])
    mods.append(_Tagged(draw(st.sampled_from(["GMPruningModifier", "MagnitudePruningModifier",
                                              "GlobalMagnitudePruningModifier"])),
                        {"params": "__ALL_PRUNABLE__", "init_sparsity": lo, "final_sparsity": hi,
                         "start_epoch": s, "end_epoch": e,
                         "inter_func": draw(st.sampled_from(["linear", "cubic", "inverse_cubic"])),
                         "update_frequency": draw(st.sampled_from([-1, 0.5, 1, 3]))}))
    mods.append(_Tagged("LearningRateFunctionModifier",
                        {"lr_func": draw(st.sampled_from(["linear", "cosine", "cyclic_linear"])),
                         "init_lr": draw(st.floats(1e-5, 1)), "final_lr": draw(st.floats(0, 1)),
                         "start_epoch": s, "end_epoch": e + 1}))
    mods.append(_Tagged("QuantizationModifier",
                        {"start_epoch": draw(epochs), "freeze_bn_stats_epoch": draw(epochs)}))
    data = {"n": draw(st.integers(-3, 30)), "training_modifiers": mods}
    if draw(st.booleans()):
        data = {"n": data["n"], "one": {"m_modifiers": mods[:2]}, "two": {"m_modifiers": mods[2:]}}
    return data


@settings(max_examples=400, deadline=None)
@given(plausible_recipes(), st.floats(-1, 60, allow_nan=False))
def test_fuzz_plausible_recipes_schedule(data, epoch):
    from sparsepipe.recipe import schedule

    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False)
    try:
        r = load_recipe_string(text)
    except RecipeError:
        return
    assert load_recipe_string(r.to_yaml()) == r
    for mod in r.modifiers:
        if hasattr(mod, "sparsity_at"):
            assert -1e-12 <= mod.sparsity_at(epoch) <= 1 + 1e-12
    lr = schedule.lr_at(r, epoch, 1, base_lr=0.01)
    assert lr is not None and lr >= 0
    schedule.qat_state(r, epoch)
