"""The recipe expression language: ``eval(<expr>)`` strings over recipe variables.

    python -c "from sparsepipe.recipe.expr import evaluate; print(evaluate('-1 + n * 2', {'n': 3}))"

This is *not* Python's ``eval``. An expression is parsed with :mod:`ast` and walked by a small
interpreter that accepts only:

* int and float literals (no strings, bytes, bools written as literals, or containers),
* variable names,
* the binary operators ``+ - * / // ** %`` and unary ``-``/``+``, parentheses,
* calls of ``abs float int min max round`` with positional arguments only.

Anything else (attribute access, subscripts, lambdas, comprehensions, keyword arguments,
``__import__``) is refused before anything is evaluated. Sizes are capped so that a recipe cannot
allocate unbounded memory or burn CPU: expression text <= 2,000 characters, integer results
<= 2**256 in magnitude, exponents <= 1,024 in magnitude (``10**10**10`` is refused).

A variable whose value is not a number (a string, list, bool or mapping) can only be referenced
bare, as the whole expression: ``eval(mask_type)``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from sparsepipe.recipe.errors import RecipeExpressionError

MAX_EXPRESSION_CHARS = 2_000
MAX_INT_BITS = 256
MAX_EXPONENT = 1_024
MAX_FLOAT = 1e300

EVAL_RE = re.compile(r"^\s*eval\((?P<expr>.*)\)\s*$", re.DOTALL)

Number = int | float

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOL = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
    ast.Mod: "%", ast.Pow: "**",
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "float": float,
    "int": int,
    "min": min,
    "max": max,
    "round": round,
}
ALLOWED = (
    "numbers, variable names, + - * / // ** %, unary minus, parentheses and the functions "
    + ", ".join(sorted(FUNCTIONS))
)


def is_eval_string(value: Any) -> bool:
    """True when ``value`` is a string of the exact form ``eval(...)``."""
    return isinstance(value, str) and EVAL_RE.match(value) is not None


def eval_body(value: str) -> str:
    """The expression inside ``eval(...)`` (call only when :func:`is_eval_string` is true)."""
    match = EVAL_RE.match(value)
    assert match is not None  # internal contract, not user input
    return match.group("expr")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(expr: str, where: str, why: str) -> RecipeExpressionError:
    return RecipeExpressionError(
        f"{where}: cannot evaluate 'eval({expr})': {why}. Recipe expressions may only use "
        f"{ALLOWED}; non-numeric variables can only be used bare, e.g. 'eval(mask_type)'."
    )


def _check_size(value: Any, expr: str, where: str) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise _fail(expr, where, f"an intermediate result exceeds 2**{MAX_INT_BITS}")
        return value
    if isinstance(value, float):
        if math.isnan(value) or abs(value) > MAX_FLOAT:
            raise _fail(expr, where, "the result is not a finite number of sensible size")
        return value
    raise _fail(expr, where, f"a value of type {type(value).__name__} appeared")


def parse_expression(expr: str, where: str = "recipe") -> ast.Expression:
    """Parse and whitelist-check ``expr``; raise :class:`RecipeExpressionError` if not allowed."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise _fail(expr[:60] + "...", where, f"it is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for '1if'
            tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _fail(expr, where, f"it is not a valid expression ({type(exc).__name__})") from None
    try:
        for node in ast.walk(tree):
            _check_node(node, expr, where)
    except RecursionError:
        raise _fail(expr, where, "it is nested too deeply") from None
    return tree


def _check_node(node: ast.AST, expr: str, where: str) -> None:
    if isinstance(node, (ast.Expression, ast.Load)) or type(node) in _BINOPS or type(node) in _UNARY:
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise _fail(expr, where, f"operator {type(node.op).__name__} is not allowed")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise _fail(expr, where, f"operator {type(node.op).__name__} is not allowed")
        return
    if isinstance(node, ast.Constant):
        if not _is_number(node.value):
            raise _fail(expr, where, f"the literal {node.value!r} is not a number")
        return
    if isinstance(node, ast.Name):
        if node.id.startswith("_"):
            raise _fail(expr, where, f"the name '{node.id}' is not allowed")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.dump(node.func)[:40]
            raise _fail(expr, where, f"calling '{name}' is not allowed")
        if node.keywords:
            raise _fail(expr, where, "keyword arguments are not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise _fail(expr, where, "*arguments are not allowed")
        return
    if isinstance(node, ast.Attribute):
        raise _fail(expr, where, f"attribute access ('.{node.attr}') is not allowed")
    if isinstance(node, ast.Subscript):
        raise _fail(expr, where, "subscripts ('x[...]') are not allowed")
    raise _fail(expr, where, f"'{type(node).__name__}' syntax is not allowed")


def evaluate(
    expr: str,
    lookup: Mapping[str, Any] | Callable[[str], Any],
    where: str = "recipe",
) -> Any:
    """Evaluate the body of an ``eval(...)`` string.

    ``lookup`` maps a variable name to its (already resolved) value; it may be a mapping or a
    callable that raises :class:`RecipeExpressionError` (e.g. for undefined or cyclic names).
    Returns an int or float, or the value of a bare non-numeric variable.
    """
    tree = parse_expression(expr, where)
    get: Callable[[str], Any]
    if callable(lookup) and not isinstance(lookup, Mapping):
        get = lookup
    else:
        table = lookup

        def get(name: str) -> Any:
            if name not in table:
                known = ", ".join(sorted(table)) or "none"
                raise RecipeExpressionError(
                    f"{where}: 'eval({expr})' uses the undefined variable '{name}' "
                    f"(defined variables: {known}). Define it at the top of the recipe or "
                    f"in the stage, or pass it with --recipe-args."
                )
            return table[name]

    body = tree.body
    if isinstance(body, ast.Name):  # bare reference: any value type is fine
        return get(body.id)
    try:
        return _eval(body, get, expr, where)
    except RecipeExpressionError:
        raise
    except RecursionError:
        raise _fail(expr, where, "it is nested too deeply") from None
    except ZeroDivisionError:
        raise _fail(expr, where, "it divides by zero") from None
    except (OverflowError, MemoryError):
        raise _fail(expr, where, "the result is too large") from None
    except (TypeError, ValueError) as exc:
        raise _fail(expr, where, str(exc)) from None


def _eval(node: ast.AST, get: Callable[[str], Any], expr: str, where: str) -> Number:
    if isinstance(node, ast.Constant):
        return _check_size(node.value, expr, where)
    if isinstance(node, ast.Name):
        value = get(node.id)
        if not _is_number(value):
            raise _fail(
                expr, where,
                f"the variable '{node.id}' is {type(value).__name__} {value!r}, not a number, "
                f"so it can only be referenced bare as 'eval({node.id})'",
            )
        return value
    if isinstance(node, ast.UnaryOp):
        return _check_size(_UNARY[type(node.op)](_eval(node.operand, get, expr, where)), expr, where)
    if isinstance(node, ast.BinOp):
        left = _eval(node.left, get, expr, where)
        right = _eval(node.right, get, expr, where)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise _fail(expr, where, f"the exponent {right!r} exceeds {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                bits = max(left.bit_length(), 1) * right
                if bits > MAX_INT_BITS + 64:
                    raise _fail(expr, where, f"{left}**{right} is too large")
        result = _BINOPS[type(node.op)](left, right)
        if isinstance(result, complex):
            raise _fail(expr, where, f"{left}{_SYMBOL[type(node.op)]}{right} is not a real number")
        return _check_size(result, expr, where)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        args = [_eval(a, get, expr, where) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and abs(args[1]) > 100:
            raise _fail(expr, where, "round() may keep at most 100 digits")
        return _check_size(FUNCTIONS[node.func.id](*args), expr, where)
    raise _fail(expr, where, f"'{type(node).__name__}' syntax is not allowed")  # pragma: no cover
