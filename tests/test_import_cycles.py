"""No import loops in the product code, counting imports made at call time or only for types.

A loop "dodged" by importing inside a function is still a loop: the two modules cannot be
understood, tested or moved apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).parent.parent
PORTIONS = ("daemon", "slurm", "cli", "protocol", "agent")


def import_loops() -> set[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    for portion in PORTIONS:
        path = str(ROOT / portion)
        if path not in sys.path:
            sys.path.insert(0, path)
    graph = grimp.build_graph("rxslurm", cache_dir=None)
    edges = {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m in graph.modules}
        for module in graph.modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: set[frozenset[str]] = set()

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = {stack.pop()}
            while module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                loops.add(frozenset(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return loops


def test_no_import_loops() -> None:
    assert sorted(sorted(loop) for loop in import_loops()) == []
