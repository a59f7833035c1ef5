"""An AST check of import direction: cycles, upward imports and imports hidden in functions.

    python tests/layer_check.py            # print every problem of src/sparsepipe + components/

Used by tests/test_layers.py (the table of layers lives there). Every ``import`` and
``from ... import`` of a scanned module counts, at module level and inside functions; an
``import a.b.c`` also counts as an import of the package ``a.b`` (Python runs ``a/b/__init__.py``
first), except the importer's own enclosing packages. Imports under ``if TYPE_CHECKING:`` count
too (a type is a dependency), and so does ``importlib.import_module("sparsepipe.x")`` with a
literal name. Nothing is imported: the files are only parsed.

Rules (each problem names file:line, from-module -> to-module and their layers):

* no cycle between modules;
* no import of a module in a higher layer than the importer;
* in an ``independent`` layer (the steps) a module imports another of the same layer only when
  the pair is listed in ``allowed`` (a documented call of one step by another);
* a shim (a module left at an old import path that only re-exports or aliases the new one, see
  :func:`shim_target`) belongs to no layer; code under ``src`` imports the new path, never a shim
  (front ends outside ``src``, such as the Kubeflow components, may keep the old path);
* an import inside a function carries a comment on its line or the line above saying why it is
  not at module level: ``# heavy: torch``, ``# optional: deepsparse`` or ``# lazy: <reason>``;
  a standard-library module is never a reason (move it to the top of the file). Roots listed in
  ``function_imports_ok`` (Kubeflow components: KFP ships the function's source alone) are exempt.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import io
import re
import sys
import tokenize
from pathlib import Path

JUSTIFIED = re.compile(r"#\s*(heavy|optional|lazy):\s*\S")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the table: a name, module patterns (fnmatch) and whether its modules are independent."""

    name: str
    modules: tuple[str, ...]
    independent: bool = False


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's edge from ``source`` to ``target`` (a scanned module or a third-party name)."""

    source: str
    target: str
    path: Path
    line: int
    in_function: bool
    justified: bool
    implicit: bool = False  # the enclosing package of an imported module


@dataclasses.dataclass
class Graph:
    modules: dict[str, Path]
    imports: list[Import]
    packages: set[str]
    shims: dict[str, str] = dataclasses.field(default_factory=dict)  # old path -> the module it stands for


def shim_target(tree: ast.Module, imports: list[str]) -> str | None:
    """The module a shim stands for, or None when ``tree`` is not a shim.

    A shim holds only a docstring starting with "Moved to", imports of one scanned module,
    optionally ``sys.modules[__name__] = <that module>`` and an ``if __name__ == "__main__":`` guard.
    """
    doc = ast.get_docstring(tree) or ""
    if not doc.startswith("Moved to"):
        return None
    body = list(tree.body)[1:]
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and "sys.modules" in ast.unparse(node.targets[0]):
            continue
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            continue
        return None
    targets = set(imports)
    return targets.pop() if len(targets) == 1 else None


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted name: file}`` of every ``.py`` under ``root/package`` (``__init__`` is the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _comments(text: str) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - ast.parse already accepted the file
        pass
    return found


def _dynamic_import(node: ast.AST) -> ast.Import | None:
    """``importlib.import_module("name")`` (or ``import_module("name")``) as an ``import name`` node."""
    if not isinstance(node, ast.Call) or len(node.args) != 1 or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "import_module" or not isinstance(node.args[0].value, str) or node.args[0].value.startswith("."):
        return None
    return ast.Import(names=[ast.alias(name=node.args[0].value)], lineno=node.lineno, end_lineno=node.end_lineno)


def _in_functions(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _targets(source: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    """Dotted names ``node`` imports: the longest scanned module for sparsepipe names, else the top-level name."""
    wanted: list[str] = []
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = source.split(".") if is_package else source.split(".")[:-1]
            pkg = pkg[: len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        wanted = [f"{base}.{alias.name}" for alias in node.names] or [base]
        wanted = [w if w in known else base for w in wanted]
    out = []
    for name in wanted:
        probe = name
        while probe and probe not in known:
            probe = probe.rpartition(".")[0]
        out.append(probe or name.split(".")[0])
    return list(dict.fromkeys(out))


def scan(roots: list[tuple[Path, str]]) -> Graph:
    """Parse every module of ``(folder, package)`` pairs and list their imports."""
    modules: dict[str, Path] = {}
    for folder, package in roots:
        modules.update(module_names(folder, package))
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    imports: list[Import] = []
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        comments = _comments(text)
        inside = _in_functions(tree)
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for found in ast.walk(tree):
            node = _dynamic_import(found) or found
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            lines = range(node.lineno - 1, (node.end_lineno or node.lineno) + 1)
            justified = any(JUSTIFIED.search(comments.get(i, "")) for i in lines)
            for target in _targets(name, name in packages, node, modules):
                if target == name:
                    continue
                edge = dict(source=name, path=path, line=node.lineno, in_function=id(found) in inside, justified=justified)
                imports.append(Import(target=target, **edge))
                parts = target.split(".")
                for i in range(2, len(parts)):  # enclosing packages below the root package
                    parent = ".".join(parts[:i])
                    if parent in packages and parent not in ancestors and parent != name:
                        imports.append(Import(target=parent, implicit=True, **edge))
    shims = {}
    for name, path in modules.items():
        own = [i.target for i in imports if i.source == name and not i.implicit and i.target in modules
               and i.target != "sparsepipe" and not i.target.startswith(name + ".")]
        target = shim_target(ast.parse(path.read_text(encoding="utf-8")), own) if own else None
        if target is not None and not name.startswith(tuple(f"{r}." for r in ("components",))):
            shims[name] = target
    return Graph(modules, imports, packages, shims)


def layer_of(module: str, layers: list[Layer]) -> int | None:
    """Index of the first layer whose patterns match ``module`` (0 = top), or None."""
    for index, layer in enumerate(layers):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in layer.modules):
            return index
    return None


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges: dict[str, set[str]] = {m: set() for m in graph.modules}
    for imp in graph.imports:
        if imp.target in graph.modules:
            edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _where(imp: Import, root: Path | None) -> str:
    path = imp.path
    if root is not None:
        try:
            path = path.relative_to(root)
        except ValueError:
            pass
    return f"{path}:{imp.line}"


def check(graph: Graph, layers: list[Layer], allowed: dict[tuple[str, str], str] | None = None,
          function_imports_ok: tuple[str, ...] = (), root: Path | None = None,
          function_rule: bool = True) -> list[str]:
    """Every problem as one line; an empty list means the imports follow the table.

    ``function_rule=False`` leaves out the rule on imports inside functions (direction only)."""
    allowed = allowed or {}
    problems: list[str] = []
    names = [layer.name for layer in layers]
    for module in sorted(graph.modules):
        if layer_of(module, layers) is None and module not in graph.shims:
            problems.append(f"{graph.modules[module]}: {module} is in no layer: add it to the layer table")

    def label(module: str) -> str:
        index = layer_of(module, layers)
        return f"{module} ({names[index] if index is not None else '?'})"

    for component in cycles(graph):
        members = set(component)
        problems.append(f"cycle of {len(component)} modules: {', '.join(component)}")
        for imp in graph.imports:
            if imp.source in members and imp.target in members:
                how = "implicit package import" if imp.implicit else "in a function" if imp.in_function else "module level"
                problems.append(f"  {_where(imp, root)}: {label(imp.source)} -> {label(imp.target)} [{how}]")
    used_allowances: set[tuple[str, str]] = set()
    for imp in graph.imports:
        if imp.target not in graph.modules or imp.source in graph.shims:
            continue
        if imp.target in graph.shims and not imp.implicit:
            if imp.source.split(".")[0] not in function_imports_ok:
                problems.append(f"{_where(imp, root)}: {label(imp.source)} imports {imp.target}, a shim left at an "
                                f"old path: import {graph.shims[imp.target]} instead")
            continue
        src, dst = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if src is None or dst is None:
            continue
        what = f"{_where(imp, root)}: {label(imp.source)} -> {label(imp.target)}"
        if dst < src:
            problems.append(f"{what}: upward import (a layer imports only the layers below it)")
        elif dst == src and layers[src].independent:
            pair = (imp.source, imp.target)
            if pair in allowed:
                used_allowances.add(pair)
            else:
                problems.append(f"{what}: {names[src]} are independent; list the call in the allowed table "
                                f"with its reason, or move what both need to a lower layer")
    for pair in sorted(set(allowed) - used_allowances):
        problems.append(f"allowed call {pair[0]} -> {pair[1]} is no longer made: remove it from the table")
    stdlib = set(sys.stdlib_module_names)
    for imp in graph.imports if function_rule else []:
        if not imp.in_function or imp.implicit or imp.source.split(".")[0] in function_imports_ok:
            continue
        what = f"{_where(imp, root)}: {label(imp.source)} imports {imp.target} inside a function"
        if imp.target.split(".")[0] in stdlib:
            problems.append(f"{what}: a standard-library module is never heavy; import it at module level")
        elif not imp.justified:
            problems.append(f"{what} without a reason: import it at module level, or say why on the import "
                            f"line ('# heavy: torch', '# optional: deepsparse', '# lazy: <reason>')")
    return problems


if __name__ == "__main__":  # pragma: no cover - a convenience for reading the problems by hand
    sys.path.insert(0, str(Path(__file__).parent))
    from test_layers import ALLOWED_CALLS, FUNCTION_IMPORTS_OK, LAYERS, REPO, ROOTS

    found = check(scan(ROOTS), LAYERS, ALLOWED_CALLS, FUNCTION_IMPORTS_OK, REPO)
    print("\n".join(found) or "no problems")
    sys.exit(1 if found else 0)
