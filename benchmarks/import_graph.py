"""The import graph of ``src/maskflow``: cycles (exit 1 if any) and the layers.

    python benchmarks/import_graph.py [--dot graph.dot]

Counts every ``maskflow`` import, at module level or inside a function. Layers: a module
sits one above the highest module it imports, so the drawing reads bottom-up (geometry
and IO first, stages and entry points last).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "maskflow"


def module_name(path: Path) -> str:
    parts = ("maskflow",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskflow"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dot", type=Path, default=None)
    args = parser.parse_args()
    files = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
    graph = {m: imports(p, set(files)) - {m} for m, p in files.items()}
    # Importing maskflow.detection.x runs maskflow.detection first: the package is a dependency.
    for m in list(graph):
        parents = {".".join(m.split(".")[:i]) for i in range(2, len(m.split(".")))}
        graph[m] |= {p for p in parents if p in files and p != m}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    level: dict[str, int] = {}

    def depth(m: str, seen: tuple = ()) -> int:
        if m not in level:
            level[m] = 1 + max((depth(d, seen + (m,)) for d in graph[m] if d not in seen), default=-1)
        return level[m]

    for m in graph:
        depth(m)
    for lvl in range(max(level.values()) + 1):
        print(f"layer {lvl}: " + ", ".join(sorted(m.removeprefix("maskflow.") for m, v in level.items() if v == lvl)))
    print(f"cycles: {len(cycles)}")
    for c in cycles:
        print("  " + " -> ".join(c))
    if args.dot:
        edges = "\n".join(f'  "{a}" -> "{b}";' for a in sorted(graph) for b in sorted(graph[a]))
        args.dot.write_text(f"digraph maskflow {{\n  rankdir=BT;\n{edges}\n}}\n", encoding="utf-8")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
