"""The package's shape: a folder per concern, imports only downward, no import cycle, no private name
imported from another module. Every import counts, those inside functions too (they are how heavy
libraries load late, not a way around the rule)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adamllm"
# Highest first; a module may import from its own folder and from any folder below it.
# stage1 and stage2 share a rank and never import each other.
LAYERS = [["cli"], ["results"], ["stage1", "stage2"], ["executors"], ["engines"], ["testing"], ["models"], ["core"]]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every adamllm import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "adamllm"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adamllm":
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def resolve(module: str, names: list[str], known: dict) -> list[str]:
    """The package modules an import reaches: `from adamllm.core import files` reaches adamllm.core.files."""
    reached = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return reached or [module]


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else ""


def test_the_package_is_a_folder_per_concern():
    loose = sorted(m for m in modules() if not folder(m) and m not in ("adamllm", "adamllm.__main__"))
    assert loose == [], "modules outside the concern folders: " + ", ".join(loose)
    assert set(RANK) == {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_imports_run_downward_only():
    known = modules()
    upward = []
    for name, path in known.items():
        if not folder(name):
            continue
        for module, names, line in imports(path):
            for target in resolve(module, names, known):
                if not folder(target) or folder(target) == folder(name):
                    continue
                if RANK[folder(target)] <= RANK[folder(name)]:
                    upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == [], "imports that do not run downward:\n" + "\n".join(upward)


def test_no_import_cycle():
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for module, names, _ in imports(path):
            graph[name].update(t for t in resolve(module, names, known) if t in known and t != name)
    # A package's __init__ reaching its own modules is how Python loads them, not a cycle of ours.
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue  # a module importing its own package's __init__
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_crosses_a_module():
    crossing = []
    for path in [
        *PACKAGE.rglob("*.py"),
        *(PACKAGE.parent / "tests").rglob("*.py"),
        *(PACKAGE.parent / "bench").rglob("*.py"),
    ]:
        for module, names, line in imports(path):
            crossing += [
                f"{path.relative_to(PACKAGE.parent)}:{line} takes {module}.{n}" for n in names if n.startswith("_")
            ]
    assert crossing == [], "\n".join(crossing)
