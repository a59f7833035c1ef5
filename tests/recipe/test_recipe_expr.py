"""The eval() expression language: what it computes and what it refuses."""

from __future__ import annotations

import pytest

from sparsepipe.errors import RecipeError
from sparsepipe.recipe.expr import evaluate, is_eval_string

VARS = {"n": 10, "lr": 0.01, "mask": "block4", "names": ["a", "b"], "flag": True}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("-1", -1),  # SparseML crashed on unary minus
        ("-n + 3", -7),
        ("+n", 10),
        ("n / 4", 2.5),
        ("n // 4", 2),
        ("n % 3", 1),
        ("2 ** 10", 1024),
        ("(n - 2) * lr", 0.08),
        ("abs(-3)", 3),
        ("float(n)", 10.0),
        ("int(2.7)", 2),
        ("min(n, 3, 4)", 3),
        ("max(1, n)", 10),
        ("round(2.567, 2)", 2.57),
        ("2 ** -1", 0.5),
        ("mask", "block4"),  # non-numeric variables may be used bare
        ("names", ["a", "b"]),
    ],
)
def test_expressions(expr, expected):
    assert evaluate(expr, VARS) == pytest.approx(expected) if isinstance(expected, float) else (
        evaluate(expr, VARS) == expected)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("__import__('os').system('id')", "not allowed"),
        ("().__class__.__bases__", "not allowed"),
        ("n.real", "attribute access"),
        ("names[0]", "subscripts"),
        ("'a' * 3", "not a number"),
        ("lambda: 1", "not allowed"),
        ("[x for x in (1, 2)]", "not allowed"),
        ("open('/etc/passwd')", "calling 'open'"),
        ("max(n, key=abs)", "keyword"),
        ("10 ** 10 ** 10", "exponent"),
        ("9 ** 999", "too large"),
        ("2.0 ** 1000 * 1e300", "finite"),
        ("round(5, -10 ** 3)", "round"),
        ("1 / 0", "divides by zero"),
        ("mask + 1", "only be referenced bare"),
        ("undefined_var + 1", "undefined variable 'undefined_var'"),
        ("1 if n else 2", "not allowed"),
        ("n < 3", "not allowed"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not a valid expression"),
        ("(" * 300 + "1" + ")" * 300, "eval("),
        ("1" + "+1" * 1500, "longer than"),
    ],
)
def test_refused(expr, fragment):
    with pytest.raises(RecipeError) as info:
        evaluate(expr, VARS, where="test.yaml")
    assert fragment in str(info.value)
    assert "test.yaml" in str(info.value) or "longer" in str(info.value)


def test_is_eval_string():
    assert is_eval_string("eval(1 + 2)")
    assert is_eval_string("  eval(n)  ")
    assert not is_eval_string("evaluate(n)")
    assert not is_eval_string("re:^model")
    assert not is_eval_string(3)
