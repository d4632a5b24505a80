"""The layering docs/architecture.md describes, checked on the source: every import of every module of
encnet_core and encnet_cli, read with ``ast`` (top-level, inside functions, and in ``try``/``if`` blocks;
only ``if TYPE_CHECKING:`` imports, which never run, are left out).

* models/ is pure architecture: of encnet_core it imports only models/, errors and constants;
* weights/ never reaches the training loop (engine.train, engine.train_state), directly or through others,
  and takes only engine.device from engine/;
* data/ and fetch/ import no model code (models/, weights/, engine/);
* no import cycles among the modules (an import inside a function counts: it must not be there to
  dodge a cycle), the ones a package's ``__init__`` runs on its own left aside (Python runs a parent
  package before a submodule; that is not an edge of the graph);
* no ``from module import _private`` across modules (a package's own ``_module`` files are modules, not names);
* no module outside the task registry (encnet_core/tasks.py) and the task modules (engine/tasks.py,
  engine/segmentation.py, engine/classification.py) compares a value with a task name
  (``x == "classification"``, ``task in ("segmentation", ...)``): callers ask the task or its facts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encnet_core", "encnet_cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    _module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (all but those under ``if TYPE_CHECKING:``)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(module: str) -> list[tuple[str, str | None]]:
    """(imported project module, the name taken from it or None) for each project import of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    edges: list[tuple[str, str | None]] = []
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            edges += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] in PACKAGES]
            continue
        source = _resolve(module, node)
        if source.split(".")[0] not in PACKAGES:
            continue
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            edges.append((submodule, None) if submodule in MODULES else (source, alias.name))
    return edges


GRAPH: dict[str, set[str]] = {module: {target for target, _ in _edges(module)} for module in MODULES}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_every_import_names_a_project_module() -> None:
    """The checks below see every module: an import of a module that is not there would slip past them."""
    unknown = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets if target not in MODULES)
    assert unknown == []


def test_models_are_pure_architecture() -> None:
    allowed = ("encnet_core.models", "encnet_core.errors", "encnet_core.constants")
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, "encnet_core.models")
        for target in targets
        if not any(_within(target, package) for package in allowed)
    )
    assert wrong == []


def _reachable(start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, each with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        for target in GRAPH.get(module, ()):
            if target not in seen and target != start:
                seen[target] = module
                todo.append(target)
    return seen


@pytest.mark.parametrize("module", [m for m in MODULES if _within(m, "encnet_core.weights")])
def test_weights_never_reach_the_training_loop(module: str) -> None:
    reached = _reachable(module)
    for loop in ("encnet_core.engine.train", "encnet_core.engine.train_state"):
        assert loop not in reached, f"{module} reaches {loop} (imported by {reached.get(loop)})"


def test_weights_take_only_the_device_decisions_from_the_engine() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, "encnet_core.weights")
        for target in targets
        if _within(target, "encnet_core.engine") and target != "encnet_core.engine.device"
    )
    assert wrong == []


def test_data_and_fetch_import_no_model_code() -> None:
    model_code = ("encnet_core.models", "encnet_core.weights", "encnet_core.engine")
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _within(module, "encnet_core.data") or _within(module, "encnet_core.fetch")
        for target in targets
        if any(_within(target, package) for package in model_code)
    )
    assert wrong == []


def _cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(module: str) -> None:  # Tarjan's algorithm (the graph is small: recursion is fine)
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == module:
                    break
            if len(component) > 1 or module in GRAPH.get(module, ()):
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_no_private_names_imported_across_modules() -> None:
    wrong = sorted(
        f"{module} imports {name} from {source}"
        for module in MODULES
        for source, name in _edges(module)
        if name is not None and name.startswith("_") and not name.startswith("__") and source != module
    )
    assert wrong == []


def test_the_checks_see_what_they_look_for() -> None:
    """The graph holds function-level imports and the checks find a cycle and a private import."""
    tree = ast.parse("def f():\n    from encnet_core.models import _x\n")
    assert [node.module for node in _imports(tree)] == ["encnet_core.models"]
    assert "encnet_core.weights.zoo" in GRAPH["encnet_core.segmenter"]
    assert GRAPH["encnet_core.models.registry"] >= {"encnet_core.models.encnet", "encnet_core.errors"}
    saved = set(GRAPH["encnet_core.errors"])
    GRAPH["encnet_core.errors"].add("encnet_core.models.registry")
    try:
        assert any("encnet_core.errors" in cycle for cycle in _cycles())
    finally:
        GRAPH["encnet_core.errors"] = saved


TASK_NAMES = {"segmentation", "classification"}
TASK_MODULES = {
    "encnet_core.tasks",  # the registry: names and plain facts
    "encnet_core.engine.tasks",  # Task, task_for, check_task
    "encnet_core.engine.segmentation",
    "encnet_core.engine.classification",
}
NOT_TASKS = {
    "encnet_core.weights.zoo": "zoo entry kinds: 'segmentation' (a published EncNet) or 'backbone' (ImageNet weights)",
}


def _task_comparisons(tree: ast.AST) -> list[int]:
    """Lines of the Compare nodes with a task name among their operands (alone, or in a tuple, list or set)."""

    def names_a_task(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in TASK_NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_task(item) for item in node.elts)
        return False

    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(names_a_task(operand) for operand in [node.left, *node.comparators])
    )


def test_only_the_task_modules_compare_task_names() -> None:
    wrong = sorted(
        f"{MODULES[module].relative_to(ROOT)}:{line}"
        for module in MODULES
        if module not in TASK_MODULES and module not in NOT_TASKS
        for line in _task_comparisons(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    )
    assert wrong == []


def test_the_task_comparison_check_finds_them() -> None:
    found = _task_comparisons(ast.parse(
        'if task == "classification":\n    pass\nok = "segmentation" != t\nx = t in ("segmentation", "other")\n'
        'fine = task == other\nlabel = "classification"\n'
    ))  # fmt: skip
    assert found == [1, 3, 4]
    assert set(TASK_MODULES) | set(NOT_TASKS) <= set(MODULES)


def test_benchmarks_use_public_names_only() -> None:
    """The benchmark scripts import the library's public names (a private one can change under them)."""
    wrong = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                wrong += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert wrong == []
