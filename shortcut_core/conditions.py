"""One parser for class conditions, shared by the API, the CLIs and the nodes.

A class spec is ``all``, ``none`` (the null class: unconditional sampling), an index, a
range ``2-5``, a class name, or a comma list of those (``0,7``, ``none, 3-4, sandal``).
Ranges are bounded before they are expanded, so ``0-99999999`` fails at once.
"""
from __future__ import annotations

from typing import Sequence

NONE = "none"  # the null class: no condition, so guidance has nothing to compare against
ALL = "all"


def parse_class_spec(text: str, num_classes: int, *, name: str = "classes") -> list[int | str]:
    """``'0-2, none, sandal'`` -> ``[0, 1, 2, 'none', 'sandal']``; ``'all'`` -> every index.

    Indices and ranges are checked against ``num_classes``; names (and ``none``) stay strings
    for the model to resolve. ``name`` is the input the message names.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a string such as '0,7', '2-5', 'all' or 'none', got {type(text).__name__}")
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == ALL:
            out.extend(range(num_classes))
            continue
        if part.lower() == NONE:
            out.append(NONE)
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"{name}: class range {part!r} runs backwards; write it as {b}-{a}")
            if b >= num_classes:
                raise ValueError(f"{name}: class range {part!r} goes past the last class {num_classes - 1}")
            out.extend(range(a, b + 1))
        elif part.lstrip("-").isdigit():
            out.append(_check_index(int(part), num_classes, name))
        else:
            out.append(part)
    if not out:
        raise ValueError(f"{name}: no class given; write a class index or name, a list such as '0,7', a range "
                         f"'2-5', 'all', or 'none' for unconditional sampling")
    return out


def _check_index(c: int, num_classes: int, name: str) -> int:
    if not 0 <= c < num_classes:
        raise ValueError(f"{name}: class {c} is outside 0..{num_classes - 1}; use 'none' for unconditional sampling")
    return c


def resolve_class_list(classes, num_classes: int, null_class: int, class_names: Sequence[str] | None,
                       *, model_name: str = "the model", batch: int | None = None, name: str = "classes") -> list[int]:
    """Class spec string, index, name or list of them -> class indices (``none`` -> ``null_class``).

    A spec that names one class repeats it ``batch`` times.
    """
    if isinstance(classes, bool):
        raise TypeError(f"{name}: expected class indices or names, got a boolean")
    if isinstance(classes, str):
        items = parse_class_spec(classes, num_classes, name=name)
    elif isinstance(classes, int):
        items = [classes]
    else:
        items = list(classes)
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: must be a whole number of at least 1, got {batch!r}")
        if len(items) == 1:
            items = items * batch
    out = []
    for c in items:
        if isinstance(c, bool) or not isinstance(c, (int, str)):
            raise TypeError(f"{name}: {c!r} is neither a class index nor a class name")
        if isinstance(c, int):  # the null class's own index (as recordings store it) means 'none'
            out.append(c if c == null_class else _check_index(c, num_classes, name))
            continue
        text = c.strip()
        if text.lower() == NONE:
            out.append(null_class)
        elif text.lstrip("-").isdigit():
            out.append(_check_index(int(text), num_classes, name))
        else:
            names = list(class_names or [])
            matches = [i for i, known in enumerate(names) if known.lower() == text.lower()]
            if not matches:
                known = ", ".join(names[:20]) if names else "none (this model has no class names; use indices)"
                raise ValueError(f"{name}: unknown class name {c!r} for {model_name}; known: {known}; "
                                 f"or 'none' for unconditional sampling")
            out.append(matches[0])
    if not out:
        raise ValueError(f"{name}: no class given; pass at least one class index or name, or 'none'")
    return out
