"""The package's import structure: no cycles, no private helpers taken across packages, a fast
``import probes`` with its lazy top-level API, and ``python -m probes``."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "probes"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path):
    """``(target module, imported name or None)`` for every import that runs when the file is
    imported (module level, class bodies), except those under ``if TYPE_CHECKING:``."""
    def walk(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, None
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    yield node.module, alias.name
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # Runs when called, after every module has loaded: no part of an import cycle
                # (the model-family registry and its builders reach each other this way on purpose).
                continue
            yield from walk(ast.iter_child_nodes(node))

    yield from walk(ast.parse(path.read_text()).body)


def import_graph() -> nx.DiGraph:
    """Module -> module edges within probes (``from a import b`` points at ``a.b`` when that is a
    module, else at ``a``)."""
    graph = nx.DiGraph()
    known = set(MODULES)
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        graph.add_node(source)
        for module, name in _imports(path):
            target = f"{module}.{name}" if name and f"{module}.{name}" in known else module
            if target in known and target != source:
                graph.add_edge(source, target)
    return graph


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert graph.has_edge("probes.run", "probes.components")          # module level
    assert not graph.has_edge("probes.cli", "probes.run")             # inside a function: runs later
    assert graph.has_edge("probes.models.digits", "probes.resources")
    assert not graph.has_edge("probes", "probes.run")                 # TYPE_CHECKING only


def test_no_import_cycles():
    cycles = [c for c in nx.simple_cycles(import_graph()) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_no_private_names_taken_from_another_package():
    """A module may use ``_helper`` of a sibling in its own package, never of another package's."""
    offences = []
    for path in PACKAGE.rglob("*.py"):
        source = _module_name(path)
        home = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for module, name in _imports(path):
            if not module.startswith("probes") or not name or not name.startswith("_") or name.startswith("__"):
                continue
            owner = module if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists() \
                else module.rpartition(".")[0]
            if owner != home:
                offences.append(f"{source} imports {module}.{name}")
    assert not offences, offences


def _fresh(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_import_probes_is_light_and_the_top_level_api_resolves_lazily():
    out = _fresh("import sys, probes\n"
                 "print('torch' in sys.modules, 'probes.run' in sys.modules)\n"
                 "print(probes.load_taxonomy('digits-shape').name, probes.load_recipe('digits').name)\n"
                 "import probes.run as module\n"
                 "print(module is probes.run, callable(probes.run), sorted(probes.__all__))")
    first, second, third = out.splitlines()
    assert first == "False False"  # nothing heavy until a name is used
    assert second == "digits-shape digits"
    assert third == ("True True ['ProbeResult', 'ProbesError', '__version__', 'guidance_window', 'load', "
                     "'load_recipe', 'load_taxonomy', 'merge_results', 'probe', 'run']")


def test_every_module_imports_in_a_fresh_interpreter():
    """Every module, in the reverse of the sorted order (submodules before their packages), so a
    module that only works after its package has set things up fails here."""
    modules = [m for m in reversed(MODULES) if not m.endswith(".__main__")]  # those run their command
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
