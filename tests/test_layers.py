"""The import graph of o1_jax/ (every module's `ast`, imports inside functions included) has no
cycle, and no module imports one of a higher layer. Data flows one way, downward."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "o1_jax"

# Bottom to top; a module belongs to the longest prefix that names it. A module may import its own
# layer or lower ones.
LAYERS = (
    ("foundations", ("o1_jax.files", "o1_jax.cli", "o1_jax.losses", "o1_jax.sharding", "o1_jax.models",
                     "o1_jax.metrics", "o1_jax.flops", "o1_jax.defaults")),
    ("formats", ("o1_jax.data", "o1_jax.checkpoint", "o1_jax.hf", "o1_jax.forward")),
    ("retrieval", ("o1_jax.model_specs", "o1_jax.retrieval")),
    ("training", ("o1_jax.training",)),
    ("inference", ("o1_jax.inference",)),
    ("synthesis", ("o1_jax.synthesis",)),
    ("commands", ("o1_jax.train", "o1_jax.training_job", "o1_jax.evaluate", "o1_jax.index", "o1_jax.export",
                  "o1_jax.plan", "o1_jax.synthesize", "o1_jax.serve", "o1_jax.data.prepare")),
)


def module_names() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts != ("o1_jax", "__init__"):  # the top package's __init__ is empty: above nothing, below nothing
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: pathlib.Path, modules: dict) -> set[str]:
    """The o1_jax modules `path` imports anywhere in its body; `from a import b` is a.b when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    if layer is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py's LAYERS; add it where it belongs")
    return layer


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_higher_layer(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if layer_of(d) > layer_of(m) and not m.startswith(d + ".")]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    colour, parent = {m: 0 for m in graph}, {}
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                cycle = [child]
                for n, _ in reversed(stack):
                    cycle.append(n)
                    if n == child:
                        return cycle[::-1]
            elif colour[child] == 0:
                colour[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_no_import_cycle(graph):
    # A package imports its own submodules from __init__, which is not a cycle of control.
    edges = {m: {d for d in deps if not d.startswith(m + ".") and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    """The cycle finder finds a planted cycle, and the layer table ranks commands above the library."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("o1_jax.data.prepare") > layer_of("o1_jax.retrieval.bm25") > layer_of("o1_jax.data.records")
    assert layer_of("o1_jax.training.loop") > layer_of("o1_jax.checkpoint")
