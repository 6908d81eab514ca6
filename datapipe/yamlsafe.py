"""Guards for YAML written by others (taxonomy leaves from contributors, pipeline files).

The safe loader builds no Python objects from tags, but anchors and aliases still let a few
lines stand for billions of values (the "billion laughs" alias bomb) or for a list that
contains itself. Anything that walks the loaded data would then hang or recurse for ever.
:func:`alias_problem` measures the size a node tree has once aliases are expanded, without
expanding it (each node is counted once, memoised), and finds self-references.
"""

from __future__ import annotations

from yaml.nodes import MappingNode, Node, SequenceNode

MAX_EXPANDED_VALUES = 100_000


def alias_problem(root: Node, limit: int = MAX_EXPANDED_VALUES) -> tuple[Node, str] | None:
    """``(node, message)`` when aliases make ``root`` refer to itself or expand past ``limit`` values; else None."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > limit:
                return node, (
                    f"anchors and aliases (&name, *name) expand this to more than {limit} values "
                    "(a YAML alias bomb); write the values out instead"
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            return node, "an alias refers to the list or mapping that contains it; YAML here must be a tree"
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return child, "an alias refers to the list or mapping that contains it; YAML here must be a tree"
            if id(child) not in sizes:
                stack.append((child, False))
    return None
