"""The loaded-model cache of Load MIGM (plain Python, no ComfyUI import)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class LoadedModels:
    """The last ``size`` loaded models by key, newest last; the oldest goes *before* a new load.

    ComfyUI reuses a node's output only while the same prompt's inputs stay the same;
    this also serves another workflow, or a re-run after ComfyUI dropped its cache, that
    picks the same model. The key holds the file's modification time, so a replaced file
    is read again. Nothing per run is stored on a model: the sampler keeps its state in a
    per-run object.
    """

    def __init__(self, size: int = 1):
        self.size = size
        self._items: OrderedDict[tuple, object] = OrderedDict()

    def get(self, key: tuple, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.size:
            self._items.popitem(last=False)  # free memory before the next model arrives
        value = load()
        self._items[key] = value
        return value

    def clear(self) -> None:
        self._items.clear()
