"""The package's import graph, from the source alone: edges, import circles and the layer rules.

    python tools/import_graph.py            # circles and rule breaks (exit 1 if any)
    python tools/import_graph.py --edges    # also every module -> module edge
    python tools/import_graph.py --layers   # also the folder -> folder edges
    python tools/import_graph.py --at REV   # the tree of a git revision instead (e.g. before a refactor)

An edge is any `import rewardbooth.x` / `from rewardbooth.x import y` in a module, at any depth (function-level
imports count: they still tie the modules together; `if TYPE_CHECKING:` ones do not). Rules checked: each
folder is a layer (LAYERS, lowest first) and a module imports only from its own layer or lower ones, so no
library module imports the CLI and the toy world never imports models, rewards or training; and the
DreamBench sweep never imports the toy world (both sit in experiments/).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "rewardbooth"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE
# Folders, lowest first; the top-level modules (cli, __main__) are the top layer.
LAYERS = ("core", "maths", "data", "toyworld", "models", "rewards", "methods", "evaluation", "training", "inference",
          "experiments", "cli")
TOP_LEVEL = {"cli", "__main__"}
DREAMBENCH_SWEEP = {"experiments.sweep", "experiments.sweep_report"}


def layer_rank(folder: str) -> int:
    return LAYERS.index(folder) if folder in LAYERS else len(LAYERS)


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    return LAYERS.index("cli" if head in TOP_LEVEL else head)


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, modules: set[str]) -> set[str]:
    """The package modules a source file imports (a `from package.pkg import name` of a submodule counts as it)."""
    found, tree = set(), ast.parse(source)
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
        block.body = []  # imports for type annotations only: not a runtime dependency
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == PACKAGE or not name.startswith(PACKAGE + "."):
                continue
            short = name.removeprefix(PACKAGE + ".")
            if short in modules:
                found.add(short)
    return found


def graph(revision: str | None = None) -> dict[str, set[str]]:
    """module -> the package modules it imports, for the working tree or a git revision of it."""
    sources = read_sources(revision)
    modules = set(sources) - {""}
    return {name: imports_of(text, modules) - {name} for name, text in sources.items() if name}


def read_sources(revision: str | None) -> dict[str, str]:
    if revision is None:
        return {module_name(path): path.read_text() for path in SOURCE.rglob("*.py")}
    root, folder = SOURCE.parents[1], SOURCE.relative_to(SOURCE.parents[1])
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", revision, str(folder)], cwd=root,
                             capture_output=True, text=True, check=True).stdout.split()
    return {module_name(root / name): subprocess.run(["git", "show", f"{revision}:{name}"], cwd=root,
                                                      capture_output=True, text=True, check=True).stdout
            for name in listing if name.endswith(".py")}


def folder_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder (a top-level module counts as its own) -> the other folders its modules import."""
    folders: dict[str, set[str]] = {}
    for module, targets in edges.items():
        head = module.split(".")[0]
        folders.setdefault(head, set()).update(t.split(".")[0] for t in targets)
    return {head: targets - {head} for head, targets in folders.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def rule_breaks(edges: dict[str, set[str]]) -> list[str]:
    breaks = []
    unplaced = sorted({m for m in edges if m.split(".")[0] not in set(LAYERS) | TOP_LEVEL})
    if unplaced:  # a new folder or top-level module must be given its layer before anything is checked
        return [f"{module} is in no layer: add its folder to LAYERS in tools/import_graph.py" for module in unplaced]
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                breaks.append(f"{module} ({LAYERS[layer_of(module)]}) imports {target}, a higher layer "
                              f"({LAYERS[layer_of(target)]})")
        if module in DREAMBENCH_SWEEP and any("toyworld" in target.split(".") for target in targets):
            breaks.append(f"the DreamBench {module} imports the toy world")
    return breaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", action="store_true", help="print every edge too")
    parser.add_argument("--layers", action="store_true", help="print the folder -> folder edges too")
    parser.add_argument("--at", metavar="REV", default=None, help="read the source of this git revision")
    args = parser.parse_args()
    edges = graph(args.at)
    if args.edges:
        for module, targets in sorted(edges.items()):
            print(f"{module} -> {', '.join(sorted(targets)) or '-'}")
    if args.layers:
        for folder, targets in sorted(folder_edges(edges).items(), key=lambda item: layer_rank(item[0])):
            print(f"{folder} -> {', '.join(sorted(targets, key=layer_rank)) or '-'}")
    found, breaks = circles(edges), rule_breaks(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} edges, {len(found)} import circles, "
          f"{len(breaks)} rule breaks")
    for component in found:
        print("circle: " + " <-> ".join(component))
    for line in breaks:
        print("rule: " + line)
    return 1 if found or breaks else 0


if __name__ == "__main__":
    sys.exit(main())
