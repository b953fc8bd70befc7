"""Tasks are plugins; the packages import in one direction (neurons <- zoo <- tasks <- benchmarks)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import plugin, registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("zoo", "neurons", "tasks", "benchmarks")


def _modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _imports(name: str, path: Path, top_level_only: bool):
    """Project modules imported by ``path`` (module level only, or anywhere in the file)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_neurons_is_standalone():
    for name, path in _modules():
        if name.startswith("neurons"):
            bad = {m for m in _imports(name, path, top_level_only=False) if not m.startswith("neurons")}
            assert not bad, f"{name} imports {bad}"
    out = subprocess.run([sys.executable, "-c", "import sys, neurons; print(sorted(m for m in sys.modules "
                          "if m.split('.')[0] in ('zoo', 'tasks', 'benchmarks')))"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_zoo_names_no_task():
    """Shared code finds tasks and bench suites by name; it never imports them (nor asks `task == ...`)."""
    for name, path in _modules():
        if name.startswith("zoo"):
            bad = {m for m in _imports(name, path, top_level_only=False) if m.startswith(("tasks.", "benchmarks."))}
            assert not bad, f"{name} imports {bad}"
            assert not re.search(r"task\s*[!=]=\s*['\"]", path.read_text()), f"{name} branches on a task name"


def test_no_import_cycles():
    modules = dict(_modules())
    graph = {n: {m for m in _imports(n, p, top_level_only=True) if m in modules and m != n} for n, p in modules.items()}
    # importing a submodule imports its packages first
    for n in list(graph):
        graph[n] |= {".".join(m.split(".")[:i]) for m in set(graph[n]) for i in range(1, m.count(".") + 1)} - {n}
        graph[n] &= set(modules)
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == "open":
                if not (n.startswith(m + ".")):  # a package's submodule importing its own package is no cycle
                    raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n)


def test_every_task_declares_itself():
    tasks = plugin.tasks()
    assert {"detection", "language"} <= set(tasks)
    for name, task in tasks.items():
        assert task.name == name and (task.verbs() or task.profiling()), name
        for verb in task.verbs().values():
            assert callable(verb.add_arguments) and callable(verb.run)
    assert plugin.task("detection").bench() is not None and plugin.task("language").bench() is not None
    with pytest.raises(Exception, match="unknown task"):
        plugin.task("nosuch")


@pytest.mark.parametrize("name", [n for n in registry.list_models() if n != "tinysnn-test"])
def test_card_params_match_the_built_model(name):
    card = registry.info(name)
    if card.builds_weights:  # converted from a base that is not installed here: the card states the base's count
        pytest.skip("params are the base model's")
    assert card.params == registry.built_params(name)


def test_user_file_named_like_a_zoo_package_does_not_break_import(tmp_path):
    (tmp_path / "tasks.py").write_text("raise SystemExit('the user file was imported')\n")
    (tmp_path / "neurons.py").write_text("X = 1\n")
    probe = "import zoo; print(len(zoo.list_models()) > 0, zoo.load.__module__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "zoo.api"]
    assert "has the name of the zoo's package 'tasks'" in out.stderr
    # imported before the zoo: a one-line error, not a traceback deep inside
    out = subprocess.run([sys.executable, "-c", "import neurons, zoo"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "was imported before the zoo and hides the zoo's package neurons" in out.stderr
