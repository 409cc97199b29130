"""The package's import structure, read from its source: imports inside functions count like any
other, none forms a cycle, modules import only from their own layer or the layers below (the order
docs/architecture.md draws), no module outside a family's own file knows a family's name, the
top-level API is small and lazy, and ``python -m probes`` is the command."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "probes"

#: The layers, bottom first (docs/architecture.md). A module may import from its own layer or below.
LAYERS = [
    ("foundations", ["probes.errors", "probes.version", "probes.schema", "probes.fileio", "probes.yamlio",
                     "probes.hub", "probes._compat", "probes.resources", "probes.noise", "probes.progress"]),
    ("taxonomy", ["probes.taxonomy"]),
    ("entropy", ["probes.entropy"]),
    ("models", ["probes.denoisers", "probes.conditioning", "probes.classifiers", "probes.sampling", "probes.models",
                "probes.quality"]),
    ("estimators", ["probes.estimators"]),
    ("families", ["probes.families", "probes.schedulers", "probes.diffusers_guidance"]),
    ("recipe and plan", ["probes.recipe", "probes.plan", "probes.build"]),
    ("results", ["probes.store", "probes.kept_samples", "probes.report", "probes.comparison", "probes.result",
                 "probes.merge", "probes.interval"]),
    ("runs and probes", ["probes.runner", "probes.probing", "probes.distributed"]),
    ("entry points", ["probes.api", "probes.cli", "probes.__main__", "probes"]),
]
#: At most this many imports of the package's own modules may sit inside functions, each with a
#: comment saying why on its line or the line above (``# local import: ...``).
MAX_LOCAL_IMPORTS = 15


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _under_type_checking(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _inside_function(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def imports(path: Path):
    """``(target module, line, inside a function)`` for every import of a ``probes`` module in a
    file of the package, wherever it sits, except under ``if TYPE_CHECKING:`` (never executed)."""
    return imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def imports_of(text: str, source: str, is_package: bool = False):
    """:func:`imports` of a module's source text."""
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = source if is_package else source.rpartition(".")[0]
    known = set(MODULES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # ``from a import b`` reaches the module a.b when there is one, else a itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        if _under_type_checking(node, parents):
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != source:
                yield name, node.lineno, _inside_function(node, parents)


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        graph.add_node(source)
        for target, _, _ in imports(path):
            graph.add_edge(source, target)
    return graph


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} belongs to no layer of docs/architecture.md"
    return found


def test_the_graph_reads_imports_inside_functions_too():
    graph = import_graph()
    assert graph.has_edge("probes.runner", "probes.build")  # module level
    assert graph.has_edge("probes.models.digits", "probes.resources")
    text = "import typing\nif typing.TYPE_CHECKING:\n    import probes.result\n" \
           "def f():\n    from probes.errors import ProbesError\n    from . import noise\n"
    assert list(imports_of(text, "probes.x")) == [("probes.errors", 5, True), ("probes.noise", 6, True)]
    assert list(imports_of("from probes.report import files\n", "probes.x")) == [("probes.report.files", 1, False)]


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_flow_one_way_down_the_layers():
    wrong = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
             for a, b in import_graph().edges if layer_of(b) > layer_of(a)]
    assert not wrong, wrong


def test_few_imports_of_the_package_hide_inside_functions_and_each_says_why():
    local = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for target, line, inside in imports(path):
            if inside:
                why = "# local import:" in lines[line - 1] or (line > 1 and "# local import:" in lines[line - 2])
                local.append((f"{_module_name(path)}:{line} -> {target}", why))
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    assert all(why for _, why in local), [where for where, why in local if not why]


def _string_constants(tree):
    """String constants of a module that are not docstrings."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_outside_a_family_s_file_knows_a_family_s_name():
    """Branching on a family lives in its file alone. The registry finds the file from the recipe's
    ``model.kind``; the model implementations a family wraps (``probes/models``) may name their own
    data, but nothing compares against a kind name there either."""
    from probes.families import FAMILIES, recipe_kinds

    kinds = set(recipe_kinds()) | set(FAMILIES)
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("probes.families.") and module != "probes.families.base":
            continue
        tree = ast.parse(path.read_text())
        compared = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                    for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
        compared |= {id(e) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                     for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts}
        for node in _string_constants(tree):
            if node.value in kinds and (id(node) in compared or not module.startswith("probes.models.")):
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert not found, found


def _fresh(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_import_probes_is_light_and_exports_only_its_api():
    out = _fresh("import sys, probes\n"
                 "print('torch' in sys.modules, 'probes.runner' in sys.modules)\n"
                 "print(dir(probes))\n"
                 "print(probes.load_taxonomy('digits-shape').name, probes.load_recipe('digits').name)\n"
                 "import probes.runner, probes.comparison, probes.probing\n"
                 "import inspect\n"
                 "print(inspect.isfunction(probes.run), inspect.isfunction(probes.compare), "
                 "inspect.isfunction(probes.probe))")
    first, second, third, fourth = out.splitlines()
    assert first == "False False"  # nothing heavy until a name is used
    assert second == ("['Comparison', 'ProbeResult', 'ProbesError', '__version__', 'compare', 'guidance_window', "
                      "'load', 'load_recipe', 'load_taxonomy', 'merge_results', 'probe', 'run']")
    assert third == "digits-shape digits"
    assert fourth == "True True True"  # no submodule import replaces a function of the API


def test_every_api_name_is_defined_where_the_package_says():
    import probes
    import probes.api

    assert sorted(probes.api.__all__) == sorted(n for n in probes.__all__ if n != "__version__")


@pytest.mark.parametrize("order", ["reversed", "sorted"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    """Every module on its own, in both orders, so a module that only works after another has set
    things up fails here."""
    modules = [m for m in MODULES if not m.endswith(".__main__")]  # those run their command
    modules = modules[::-1] if order == "reversed" else modules
    assert _fresh(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')") == "ok\n"


def test_python_dash_m_probes_is_the_probes_command():
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    done = subprocess.run([sys.executable, "-m", "probes", "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.startswith("probes ")
    done = subprocess.run([sys.executable, "-m", "probes", "taxonomy", "show", "nope-not-shipped"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "shipped: animals-vehicles, digits-shape" in done.stderr


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").is_file()
