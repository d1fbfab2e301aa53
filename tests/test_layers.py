"""The package's floors: utils < data < (modeling | evaluation) < deploy < engine. An import (at module level
or inside a function) never reaches up a floor or sideways between modeling and evaluation, and
the module-level imports have no cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "panfpn"
FLOOR = {"utils": 0, "data": 1, "modeling": 2, "evaluation": 2, "deploy": 2.5, "engine": 3}
SIDEWAYS = {("modeling", "evaluation"), ("evaluation", "modeling")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported panfpn module, at module level?) for every import statement of the file; imports under
    ``if TYPE_CHECKING:`` count as module level (a cycle for the type checker is still a cycle)."""
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("panfpn."):
                found.append((name, id(node) not in in_function))
    return found


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOOR else None


def sources():
    return [p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts]


def test_no_import_reaches_up_a_floor_or_sideways():
    wrong = []
    for path in sources():
        src = floor_of(module_name(path))
        if src is None:
            continue
        for target, _ in imports(path):
            dst = floor_of(target)
            if dst and (FLOOR[dst] > FLOOR[src] or (src, dst) in SIDEWAYS):
                wrong.append(f"{module_name(path)} -> {target}")
    assert not wrong, "imports against the floors:\n" + "\n".join(sorted(set(wrong)))


def test_module_level_imports_have_no_cycle():
    modules = {module_name(p): p for p in sources()}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, at_top in imports(path):
            while target and target not in modules:  # 'panfpn.x.y.Name' -> the module 'panfpn.x.y'
                target = target.rpartition(".")[0]
            if at_top and target and target != name and not (name.startswith(target + ".")):
                deps.add(target)
        graph[name] = deps
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
