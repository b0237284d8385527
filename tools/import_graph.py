"""The package's import graph, from the source alone: edges, import circles and the layer rules.

    python tools/import_graph.py            # circles and rule breaks (exit 1 if any)
    python tools/import_graph.py --edges    # also every module -> module edge

An edge is any `import rewardbooth.x` / `from rewardbooth.x import y` in a module, at any depth (function-level
imports count: they still tie the modules together; `if TYPE_CHECKING:` ones do not). Rules checked: no library module imports the CLI, the
toy world's own modules never import training, the DreamBench sweep never imports the toy world.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "rewardbooth"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE
WORLD = {"toyworld", "toyworld.world", "toyworld.subjects", "toyworld.backgrounds", "toyworld.tokenizer",
         "toyworld.judge", "toyworld.assets", "toyworld.scoring"}  # the world itself, below the trainer
TRAINING = {"train", "setup", "training_data", "checkpoints", "selection"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (a `from package.pkg import name` of a submodule counts as it)."""
    found, tree = set(), ast.parse(path.read_text())
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


def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    modules = set(files) - {""}
    return {name: imports_of(path, modules) - {name} for name, path in files.items() if name}


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
    for module, targets in sorted(edges.items()):
        if "cli" in targets and module not in {"__main__"}:
            breaks.append(f"{module} imports the CLI")
        if module in WORLD and targets & TRAINING:
            breaks.append(f"toy-world module {module} imports training: {', '.join(sorted(targets & TRAINING))}")
        if module in {"sweep", "sweep_report"} and any(t.startswith("toyworld") for t in targets):
            breaks.append(f"the DreamBench {module} imports the toy world")
    return breaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", action="store_true", help="print every edge too")
    args = parser.parse_args()
    edges = graph()
    if args.edges:
        for module, targets in sorted(edges.items()):
            print(f"{module} -> {', '.join(sorted(targets)) or '-'}")
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
