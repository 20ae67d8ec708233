"""The package's data flow goes one way: no import cycle between hf_distill's top-level packages and modules.

Every ``import hf_distill.<x>...`` / ``from hf_distill.<x>... import`` in the package counts, also the ones
inside functions (a lazy import is still a dependency, only a hidden one).
"""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_distill"


def top_level(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hf_distill" else None


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]``: places (file:line) where top-level package ``a`` imports from ``b``."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        source = top_level(".".join(relative.parts))
        if source in (None, "__init__"):
            continue  # hf_distill/__init__.py imports everything to register it; it is not a package
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                target = top_level(module)
                if target is not None and target != source:
                    graph[source][target].append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as a list of package names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for successor in graph.get(node, {}):
            if state.get(successor) == 1:
                return stack[stack.index(successor) :] + [successor]
            if successor not in state:
                found = visit(successor)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in list(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_cycle_between_top_level_packages():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        places = {f"{a} -> {b}": graph[a][b][:3] for a, b in zip(cycle, cycle[1:])}
        raise AssertionError(f"import cycle {' -> '.join(cycle)}: {places}")
    # The graph is not trivially empty: the method packages depend on the shared ones.
    assert {"losses", "models", "registry"} <= set(graph["trainers"])
    assert "layers" in graph["models"]


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "hf_distill"
    (package / "a").mkdir(parents=True)
    (package / "b").mkdir()
    (package / "a" / "x.py").write_text("from hf_distill.b.y import f\n")
    (package / "b" / "y.py").write_text("def f():\n    import hf_distill.a.x\n")
    assert find_cycle(import_graph(package)) == ["a", "b", "a"]
