"""Issue 23's rules of the package's shape, read from the exported source: signatures, private names, layering.

Static (the AST of every module under pyacemaker/): they keep holding as the code grows, and each names the offender."""
import ast
from pathlib import Path

import pytest

import pyacemaker

PACKAGE = Path(pyacemaker.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[str, str]]:
    "(module, name) of every `from X import name` in a module, X made absolute."
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [(mod, a.name) for a in node.names]
    return out


def parameters(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    if names and names[0] in ("self", "cls"): names = names[1:]
    return len(names) + bool(a.vararg) + bool(a.kwarg)


def test_the_package_is_read():
    assert len(MODULES) > 25 and any(module_name(p) == "pyacemaker.refine" for p in MODULES)


def test_no_function_takes_more_than_eight_parameters():
    over = [f"{module_name(p)}.{n.name}: {parameters(n)}" for p in MODULES for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameters(n) > 8]
    assert over == []


def test_no_module_imports_a_private_name_of_another():
    private = [f"{module_name(p)} imports {mod}.{name}" for p in MODULES for mod, name in imported(p)
               if mod.startswith("pyacemaker") and name.startswith("_") and not name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("lower,upper", [
    ("pyacemaker.kit", ("pyacemaker.report", "pyacemaker.refine", "pyacemaker.delta", "pyacemaker.orchestrator",
                        "pyacemaker.trainer", "pyacemaker.cli")),      # the kit sits below every stage
    ("pyacemaker.report", ("pyacemaker.trainer", "pyacemaker.refine", "pyacemaker.delta", "pyacemaker.orchestrator")),
    ("pyacemaker.refine", ("pyacemaker.report.md", "pyacemaker.report.parity", "pyacemaker.report.speed")),
])
def test_layering(lower, upper):
    "A module never imports from the ones it must not know: the kit from the stages, report from the trainer, refine from the report's MD."
    wrong = [f"{module_name(p)} imports {mod}" for p in MODULES if module_name(p).startswith(lower)
             for mod, _ in imported(p) if mod.startswith(upper)]
    assert wrong == []
