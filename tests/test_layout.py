"""The package's folders are its map: layers import only downward and no module imports one that
imports it back (an AST scan of every ``dynrcnn`` import, function-level ones included)."""

import ast
from pathlib import Path

import dynrcnn

PACKAGE = Path(dynrcnn.__file__).parent
#: the layers, bottom first: a module may import its own layer and those below it, never above
LAYERS = (
    ("errors", "io", "config", "reference", "presets"),
    ("data",),  # datasets: COCO files, the generated miniature
    ("modeling",),  # the detector
    ("rundir",),  # what a run directory holds and the rules that guard it
    ("checkpoint",),  # saving and loading state into run directories
    ("evaluation",),  # COCO metrics, intervals, predict
    ("engine",),  # training (it evaluates periodically)
    ("report",),
    ("cli", "__main__", "__init__"),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The ``dynrcnn`` modules ``path`` imports (``from dynrcnn.x import y`` counts ``dynrcnn.x.y``
    when that is a module, else ``dynrcnn.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dynrcnn":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dynrcnn")
    return {m for m in found if m in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF[key]


def test_every_module_has_a_layer():
    keys = {(m.split(".")[1] if "." in m else "__init__") for m in MODULES if m != "dynrcnn"}
    assert not keys - set(LAYER_OF), keys - set(LAYER_OF)  # a new folder or root module needs its layer


def test_no_module_imports_a_layer_above_its_own():
    upward = [(m, i) for m, p in MODULES.items() if m != "dynrcnn"
              for i in imports_of(p) if i != "dynrcnn" and layer(i) > layer(m)]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    graph = {m: imports_of(p) - {m} for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                cycle.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle[0]


def test_the_root_holds_few_modules():
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root
