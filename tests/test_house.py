"""The code's house rules, measured: no module over 400 lines, no function over 70 (a leading docstring not
counted), no import circle between the package's modules (imports inside functions included), and every
run-file name written once (runfiles.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cfa_anomaly import runfiles

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cfa_anomaly"
MODULE_LINES, FUNCTION_LINES = 400, 70


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def function_lengths(tree: ast.AST) -> dict[str, int]:
    """Every function's lines (nested ones too), less a leading docstring."""
    lengths = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                length -= first.end_lineno - first.lineno + 1
            lengths[f"{node.name} (line {node.lineno})"] = length
    return lengths


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that a module imports, anywhere in it (a package's own __init__ excluded when
    the module lives inside that package: importing a sibling runs it, but it is no dependency)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [name if name in known else base for name in names]
        else:
            continue
        found.update(target for target in targets if target in known)
    return {target for target in found if target != name and not name.startswith(target + ".")}


def test_no_module_is_over_400_lines():
    lines = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {name: n for name, n in lines.items() if n > MODULE_LINES}
    assert not long, long


def test_no_function_is_over_70_lines():
    long = {f"{name}.{function}": n for name, path in modules().items()
            for function, n in function_lengths(ast.parse(path.read_text())).items() if n > FUNCTION_LINES}
    assert not long, long


def circles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles a depth-first walk of the graph meets, each as a closed trail."""
    circles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in trail:
                circles.append(trail[trail.index(target):] + [target])
            elif target not in done:
                visit(target, trail + [target])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return circles


def test_the_circle_check_finds_a_circle():
    assert circles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles_in({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_modules():
    found = modules()
    graph = {name: imported_modules(name, path, set(found)) for name, path in found.items()}
    assert sum(map(len, graph.values())) > 100  # the imports were found
    assert not circles_in(graph)


RUN_FILES = sorted({value for key, value in vars(runfiles).items()
                    if key.isupper() and isinstance(value, str) and "." in value})


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_run_file_name_is_written_once(name):
    elsewhere = [str(path.relative_to(PACKAGE)) for module, path in modules().items()
                 if module != "cfa_anomaly.runfiles"
                 and any(isinstance(node, ast.Constant) and node.value == name
                         for node in ast.walk(ast.parse(path.read_text())))]
    assert not elsewhere, f"{name!r} is written out in {elsewhere}: use cfa_anomaly.runfiles"
