"""The package's import structure: every module imports first, in any order, and no import cycle exists
but the one named in ``ALLOWED`` (module-level imports form a DAG; imports inside functions hide none)."""
import ast
import functools
import os
import random
import subprocess
import sys

import fastconv

PACKAGE = os.path.dirname(os.path.abspath(fastconv.__file__))
ROOT = os.path.dirname(PACKAGE)
# The one cycle allowed, as the set of its modules: CudaArray's operators call the functions of the GPU
# namespace, which is built on CudaArray (array.py imports xp at its end, after the class exists).
ALLOWED = [{"fastconv.gpu.array", "fastconv.gpu.xp"}]


def _modules(package=PACKAGE):
    """``{module name: path}`` of every Python source file of the package in folder ``package``."""
    found = {}
    for folder, _, files in os.walk(package):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, os.path.dirname(package))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(tree, inside_functions):
    """The import statements of a module: those run at import, or also those inside functions."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not inside_functions:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


@functools.lru_cache(maxsize=None)
def import_graph(inside_functions=False, package=PACKAGE):
    """``{module: modules it imports}`` within the package in folder ``package``. ``from . import name``
    points at the submodule ``name`` where there is one, else at the package (whose ``__init__`` must
    then have run)."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in _imports(tree, inside_functions):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph):
    """Every cycle a depth-first search meets (each as a list of modules, first == last)."""
    found, state, path = [], {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_graph_sees_every_kind_of_import(tmp_path):
    sources = {"__init__.py": "from . import a\nfrom .b import B\nVERSION = 1\n",
               "a.py": "import os\nimport pkg.b\ntry:\n    from .sub import c\nexcept ImportError:\n    pass\n"
                       "def f():\n    from .sub import d\n",
               "b.py": "B = 2\n",
               "sub/__init__.py": "",
               "sub/c.py": "from .. import a, VERSION\nfrom ..b import B\nclass C:\n    from . import d\n",
               "sub/d.py": ""}
    for name, text in sources.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    package = str(tmp_path / "pkg")
    assert import_graph(package=package) == {
        "pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b", "pkg.sub.c"}, "pkg.b": set(), "pkg.sub": set(),
        "pkg.sub.c": {"pkg", "pkg.a", "pkg.b", "pkg.sub.d"}, "pkg.sub.d": set()}
    assert import_graph(inside_functions=True, package=package)["pkg.a"] == {"pkg.b", "pkg.sub.c", "pkg.sub.d"}
    assert cycles(import_graph(package=package)) == [["pkg", "pkg.a", "pkg.sub.c", "pkg"],
                                                     ["pkg.a", "pkg.sub.c", "pkg.a"]]


def _unexpected(found):
    return [cycle for cycle in found if set(cycle) not in ALLOWED]


def test_module_level_imports_have_no_cycle():
    assert _unexpected(cycles(import_graph())) == []


def test_imports_inside_functions_hide_no_cycle():
    assert _unexpected(cycles(import_graph(inside_functions=True))) == []


def test_runtime_imports_nothing_from_fastconv():
    assert import_graph(inside_functions=True)["fastconv.runtime"] <= {"fastconv._cy"}


def test_every_module_imports_in_any_order(tmp_path):
    """Fresh interpreters import every module, each in another shuffled order (run side by side)."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    orders = [random.sample(sorted(_modules()), len(_modules())) for _ in range(3)]
    # outside the repository root, whose package would shadow a non-editable install
    runs = [subprocess.Popen([sys.executable, "-c", code, *names], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
            for names in orders]
    for names, run in zip(orders, runs):
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"importing in the order {names} failed:\n{err[-3000:]}"
