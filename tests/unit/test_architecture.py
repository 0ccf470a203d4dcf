"""The import graph of the package: every internal import resolves; no cycle between package modules; the core
never imports the tooling or the command line; no module outside a task's package imports that task, and none
names a task (``grep tiny`` outside ``tasks/`` finds docstrings only).

The graph is every import statement of every module, those inside functions included (imports inside functions
keep ``import aot_handbook`` light, and they are where a cycle or a moved name can hide: neither the linter nor an
import of the module sees them). Its edges are import statements: a package's ``__init__`` is a node, and a
submodule is not an edge to its parent package (Python imports the parent first, but that is no dependency of
ours). The task registry loads its built-in tasks by name (``tasks.BUILTIN``), which is how the core reaches a task
without importing it.
"""

import ast
import functools
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

from tests.helpers import REPO

SRC = REPO / "src"
PACKAGE = "aot_handbook"
TOOLING = f"{PACKAGE}.tooling"
CLI = f"{PACKAGE}.cli"
TASKS = f"{PACKAGE}.tasks"


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_module(name: str) -> bool:
    return (SRC / Path(*name.split("."))).with_suffix(".py").is_file() or (SRC / Path(*name.split("."))).is_dir()


def _walk_imports():
    """(file, line, module, names) of every ``from ... import`` of the package's modules (absolute or relative),
    in the package, the tests, the benchmarks and the experiments; and of every ``import aot_handbook.x``."""
    files = [*SRC.rglob("*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("benchmarks/*.py"),
             *REPO.glob("experiments/*.py")]
    for path in files:
        package = None
        if path.is_relative_to(SRC):
            name, is_package = _module_name(path)
            package = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        yield path.relative_to(REPO), node.lineno, alias.name, []
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level and package is None:  # tests' own relative imports
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == PACKAGE:
                module = node.module
            else:
                continue
            yield path.relative_to(REPO), node.lineno, module, [a.name for a in node.names if a.name != "*"]


@functools.cache
def _imports() -> tuple:
    """The walk, once per session (each test reads it)."""
    return tuple(_walk_imports())


@functools.cache
def _graph() -> dict[str, set[str]]:
    """Package module -> the package modules its import statements name (a name that is a submodule counts as
    that submodule)."""
    graph: dict[str, set[str]] = {_module_name(p)[0]: set() for p in SRC.rglob("*.py")}
    for path, _, module, names in _imports():
        if not path.is_relative_to("src"):
            continue
        source = _module_name(REPO / path)[0]
        targets = {f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")}
        if not targets or any(not _is_module(f"{module}.{n}") for n in names):
            targets.add(module)
        graph[source] |= targets - {source}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_internal_import_resolves():
    missing = []
    for path, line, module, names in _imports():
        mod = importlib.import_module(module)
        for name in names:
            if not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{path}:{line}: {module} has no {name!r}")
    assert not missing, "\n".join(missing)


def test_the_walk_sees_function_level_imports():
    """The walk is not vacuous: it finds the function-level imports of the command line and of the recipe
    parser, and the edges the import graph is made of."""
    found = {(str(p), m) for p, _, m, _ in _imports()}
    assert ("src/aot_handbook/cli.py", "aot_handbook.plan") in found  # inside run_train
    assert ("src/aot_handbook/recipe.py", "aot_handbook.configs") in found  # inside parse_recipe
    assert len(found) > 150
    graph = _graph()
    assert {"aot_handbook.training", "aot_handbook.pairs"} <= graph["aot_handbook.plan"]
    assert "aot_handbook.tasks.tiny.report" in graph["aot_handbook.tasks.tiny.arithmetic"]  # `from . import report`


def test_no_cycle_between_package_modules():
    assert _cycles(_graph()) == []


def test_a_cycle_would_be_found():
    """The cycle finder on the graph the issue started from (run <-> pairs -> validate -> reproduce -> run)."""
    old = {"run": {"pairs", "data"}, "pairs": {"run", "validate"}, "validate": {"reproduce", "sweep"},
           "reproduce": {"run", "sweep"}, "sweep": {"run"}, "data": {"multi_reward"}, "multi_reward": {"data"}}
    assert sorted(_cycles(old)) == [["data", "multi_reward"], ["pairs", "reproduce", "run", "sweep", "validate"]]


def test_the_core_never_imports_the_tooling_or_the_command_line():
    graph = _graph()
    core = [m for m in graph if not m.startswith(TOOLING) and m != CLI]
    wrong = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t.startswith(TOOLING) or t == CLI)
    assert not wrong, wrong
    assert any(t.startswith(TOOLING) for t in graph[CLI])  # the graph sees those edges where they are


def test_a_task_is_imported_by_its_own_package_only():
    graph = _graph()
    packages = sorted({".".join(m.split(".")[:3]) for m in graph if m.startswith(TASKS + ".")})
    assert f"{TASKS}.tiny" in packages
    wrong = sorted(f"{m} -> {t}" for p in packages for m in graph for t in graph[m]
                   if (t == p or t.startswith(p + ".")) and not (m == p or m.startswith(p + ".")))
    assert not wrong, wrong


def _code_mentions(path: Path, word: str) -> list[str]:
    """Where ``word`` appears in a module's code: names, strings that are not docstrings, comments (a word
    followed by a capital letter, such as tinyBenchmarks, an lm-eval suite, is another word)."""
    src = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docstrings |= set(range(first.lineno, first.end_lineno + 1))
    pattern = re.compile(word + r"(?![A-Z])")
    return [f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string[:60]!r}"
            for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if pattern.search(tok.string) and not (tok.type == tokenize.STRING and tok.start[0] in docstrings)]


@pytest.mark.parametrize("task", ["tiny"])
def test_no_module_outside_tasks_names_a_task(task):
    outside = [p for p in (SRC / PACKAGE).rglob("*.py") if "tasks" not in p.relative_to(SRC / PACKAGE).parts]
    found = [hit for p in outside for hit in _code_mentions(p, task)]
    assert not found, "\n".join(found)
    inside = [hit for p in (SRC / PACKAGE / "tasks").rglob("*.py") for hit in _code_mentions(p, task)]
    assert inside  # the check sees the word where it is
