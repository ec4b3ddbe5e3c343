"""The package's structure, read from its source: imports point one way (no circle among
vit_hub's modules, imports inside functions and `if TYPE_CHECKING:` counted), and no
product code outside tests/ changes `sys.path` (it imports the installed project)."""

import ast
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vit_hub"


def module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: {vit_hub module it imports, anywhere in its code}}."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name):  # `from vit_hub.x import f`: the module x, or the package
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` folders up
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {resolve(t) for t in targets if t.split(".")[0] == "vit_hub"} - {name, ""}
    return graph


def circles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 30 and "vit_hub.model" in graph["vit_hub.weights"]  # (it reads)
    assert circles(graph) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_nothing_outside_tests_changes_sys_path():
    offenders = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in (
            "tests", "build", "out", "node_modules") and not d.endswith(".egg-info")]
        for file in (f for f in files if f.endswith(".py")):
            path = pathlib.Path(folder, file)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Attribute) and node.attr == "path"
                        and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_private_keras_names_are_imported_only_where_the_readme_says():
    """`keras.src` only in compiled.py, for the names the README's "Private Keras names"
    lists: a new private import is a decision to write down, not to slip in."""
    said = {"in_stateless_scope", "OpenVINOKerasTensor", "OPENVINO_DTYPES", "get_device"}
    readme = (REPO / "README.md").read_text()
    found = {}
    for path in list(PACKAGE.rglob("*.py")) + list((REPO / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
                for alias in node.names:
                    found.setdefault(alias.name, set()).add(path.relative_to(REPO).as_posix())
            elif isinstance(node, ast.Import) and any(
                    a.name.startswith("keras.src") for a in node.names):
                found.setdefault("(module)", set()).add(path.relative_to(REPO).as_posix())
    assert set(found) <= said, found
    assert all(files == {"vit_hub/compiled.py"} for files in found.values()), found
    assert all(f"`{name}`" in readme for name in found)
