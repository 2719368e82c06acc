"""Reading fields of events AWS delivers, without trusting their shape.

Events come from AWS, but an event source can change, a trigger can be misconfigured and a
test event can be hand-written: a field of the wrong type must make a parser answer "not
mine", never crash it.
"""

from __future__ import annotations

from typing import Any


def get(node: Any, *path: str) -> Any:
    """``node[path[0]][path[1]]...``, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def text(node: Any, *path: str) -> str:
    """The string at ``path``, or "" when it is missing or not a string."""
    value = get(node, *path)
    return value if isinstance(value, str) else ""


def items(node: Any, *path: str) -> list[Any]:
    """The list at ``path``, or [] when it is missing or not a list."""
    value = get(node, *path)
    return value if isinstance(value, list) else []
